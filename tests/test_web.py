"""Web functions while an app runs, end to end: real HTTP on 127.0.0.1 through the front door to
containers on each provider, scale from zero and back, limits, and start-up failures."""

from __future__ import annotations

import concurrent.futures
import json
import time
import urllib.error
import urllib.request

import pytest

import runner
from helpers import run_cli, write

IMAGE = runner.Image.debian_slim().pip_install("fastapi[standard]")


def get(url: str, data: dict | None = None, timeout: float = 120) -> tuple[int, str]:
    body = json.dumps(data).encode() if data is not None else None
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"} if body else {})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never a proxy
    try:
        with opener.open(req, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def containers_of(app: runner.App, name: str) -> int:
    session = app._session
    return len([c for c in session.pools[("web", app._functions[name]._target().key)].containers if not c.stopping])


def eventually(check, seconds: float = 30, why: str = ""):
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, why
        time.sleep(0.05)


def make_app() -> runner.App:
    app = runner.App("web-test", image=IMAGE)

    @app.function(serialized=True, scaledown_window=1)
    @runner.fastapi_endpoint(method="POST")
    def echo(item: dict) -> dict:
        return {"echo": item}

    @app.function(serialized=True)
    @runner.fastapi_endpoint(label="sum-it")
    def add(a: int, b: int = 1) -> dict:
        return {"sum": a + b}

    @app.function(serialized=True, max_containers=2, scaledown_window=30)
    @runner.asgi_app()
    def slow():
        import asyncio

        from fastapi import FastAPI

        web = FastAPI()

        @web.get("/wait")
        async def wait(s: float = 0.5):
            await asyncio.sleep(s)
            return {"pid": __import__("os").getpid(), "host": __import__("socket").gethostname()}

        return web

    @app.function(serialized=True)
    @runner.wsgi_app()
    def classic():
        def wsgi(environ, start_response):
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [f"wsgi {environ['PATH_INFO']}".encode()]

        return wsgi

    return app


def test_endpoints_answer_through_the_front_door(provider):
    app = make_app()
    with app.run():
        url = app._functions["echo"].get_web_url()
        assert url.startswith("http://127.0.0.1:") and url.endswith("/echo")
        assert get(url, {"x": 1}) == (200, '{"echo":{"x":1}}')
        assert get(app._functions["add"].get_web_url() + "?a=2&b=5") == (200, '{"sum":7}')
        code, body = get(app._functions["add"].get_web_url() + "?a=notanumber")
        assert code == 422 and "int" in body  # FastAPI's own validation
        assert get(app._functions["classic"].get_web_url() + "/some/path") == (200, "wsgi /some/path")
        base = url.rsplit("/", 1)[0]
        code, body = get(base + "/nothing-here")
        assert code == 404 and "echo" in body
    assert app._functions["echo"].get_web_url() is None  # the run is over


def test_scale_from_zero_to_max_and_back_to_zero(provider):
    app = make_app()
    with app.run():
        slow = app._functions["slow"]
        assert containers_of(app, "slow") == 0
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda _: get(slow.get_web_url() + "/wait?s=1"), range(4)))
        assert all(code == 200 for code, _ in answers)
        hosts = {json.loads(body)["host"] + str(json.loads(body)["pid"]) for _, body in answers}
        assert len(hosts) == 2  # four requests at once, one slot per container, max_containers=2
        assert containers_of(app, "slow") == 2
        echo = app._functions["echo"]
        assert get(echo.get_web_url(), {"n": 1})[0] == 200
        eventually(lambda: containers_of(app, "echo") == 0, 30, "echo did not scale to zero after scaledown_window=1")
        assert get(echo.get_web_url(), {"n": 2}) == (200, '{"echo":{"n":2}}')  # woken by the request
        assert containers_of(app, "echo") == 1


def test_a_web_server_that_never_listens_is_a_clear_error(tmp_path, provider):
    write(tmp_path, "app.py", """
        import urllib.request, urllib.error
        import modal

        app = modal.App("never-binds")

        @app.function()
        @modal.web_server(8765, startup_timeout=1)
        def deaf():
            pass  # starts nothing

        @app.local_entrypoint()
        def main():
            opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
            try:
                opener.open(deaf.get_web_url(), timeout=60)
            except urllib.error.HTTPError as err:
                print("status:", err.code, err.read().decode().strip().splitlines()[0])
    """)
    proc = run_cli(["run", "app.py"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "status: 503" in proc.stdout and "8765" in proc.stdout, proc.stdout


def test_web_url_inside_a_container(tmp_path, provider):
    write(tmp_path, "app.py", """
        import modal

        app = modal.App("web-url-inside", image=modal.Image.debian_slim().pip_install("fastapi[standard]"))

        @app.function()
        @modal.fastapi_endpoint()
        def hello() -> str:
            return "hi"

        @app.function()
        def where() -> str:
            return hello.get_web_url()

        @app.local_entrypoint()
        def main():
            print("same url:", where.remote() == hello.get_web_url(), hello.get_web_url() is not None)
    """)
    proc = run_cli(["run", "app.py"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "same url: True True" in proc.stdout


def test_bad_web_declarations(tmp_path):
    app = runner.App()
    with pytest.raises(runner.exception.InvalidError, match="label"):
        runner.fastapi_endpoint(label="Not Valid")
    app.function(serialized=True)(runner.fastapi_endpoint(label="same")(lambda: 1))
    with pytest.raises(runner.exception.InvalidError, match="both have the label 'same'"):
        def other():
            return 2
        app.function(serialized=True)(runner.fastapi_endpoint(label="same")(other))
    with pytest.raises(runner.exception.InvalidError):
        runner.web_server(0)


def test_web_endpoints_on_class_methods(tmp_path, provider):
    """A web endpoint on a method: the instance is made once per container (its @enter runs first),
    fastapi_endpoint and asgi_app both work, and a plain method of the same class still answers."""
    write(tmp_path, "clsweb.py", """
        import json
        import urllib.request

        import modal

        app = modal.App("clsweb", image=modal.Image.debian_slim().pip_install("fastapi[standard]"))

        @app.cls()
        class Model:
            @modal.enter()
            def load(self):
                self.weights = 42

            @modal.fastapi_endpoint(method="POST")
            def predict(self, x: int):
                return {"y": x * self.weights}

            @modal.asgi_app(label="model-api")
            def api(self):
                from fastapi import FastAPI

                web = FastAPI()

                @web.get("/weights")
                def weights():
                    return {"weights": self.weights}

                return web

            @modal.method()
            def plain(self):
                return self.weights

        @app.local_entrypoint()
        def main():
            opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
            url = Model().predict.get_web_url()
            print("url", url.rsplit("/", 1)[1], Model().api.get_web_url().rsplit("/", 1)[1])
            req = urllib.request.Request(url + "?x=2", method="POST")
            print("predict", json.loads(opener.open(req, timeout=120).read()))
            print("api", json.loads(opener.open(Model().api.get_web_url() + "/weights", timeout=120).read()))
            print("plain", Model().plain.remote())
    """)
    proc = run_cli(["run", "clsweb.py"], cwd=tmp_path, env={"RUNNER_PROVIDER": provider}, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "url model-predict model-api" in proc.stdout
    assert "predict {'y': 84}" in proc.stdout
    assert "api {'weights': 42}" in proc.stdout
    assert "plain 42" in proc.stdout


def test_a_class_web_label_taken_by_a_function_is_refused():
    app = runner.App("dup-labels")

    @app.function(serialized=True)
    @runner.fastapi_endpoint()
    def model_predict():
        return {}

    with pytest.raises(runner.exception.InvalidError, match="both have the label 'model-predict'"):
        @app.cls(serialized=True)
        class Model:
            @runner.fastapi_endpoint()
            def predict(self):
                return {}

    other = runner.App("dup-labels-2")

    @other.cls(serialized=True)
    class Model2:
        @runner.fastapi_endpoint(label="taken")
        def predict(self):
            return {}

    with pytest.raises(runner.exception.InvalidError, match="web endpoints Model2.predict and f both have the label"):
        @other.function(serialized=True)
        @runner.fastapi_endpoint(label="taken")
        def f():
            return {}
