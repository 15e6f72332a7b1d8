"""Web functions served from inside a container: the decorators' checks, `_web_serve.start` in this
process (real HTTP on 127.0.0.1, free ports), and the agent reporting the port in READY.

End to end through `app.run()` and the front door is tested with the session's web pools."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading

import httpx
import pytest
from fastapi import FastAPI, Request, WebSocket
from pydantic import BaseModel

import runner
from runner import _protocol as P
from runner import _web_serve
from runner._web import asgi_app, default_label, fastapi_endpoint, web_endpoint, web_server, wsgi_app
from runner.exception import ExecutionError, InvalidError

REPO = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture
def serve():
    """`serve(kind, fn, **options)` -> base URL; everything started is stopped after the test."""
    started = []

    def start(kind, fn, *, root_path="", **options):
        spec = getattr(fn, "__runner_web__", None)
        if spec is not None:
            options = {"method": spec.method, "docs": spec.docs, **options}
        serving = _web_serve.start(kind, fn, host="127.0.0.1", port=options.pop("port", 0), root_path=root_path,
                                   **options)
        started.append(serving)
        return f"http://127.0.0.1:{serving.port}"

    yield start
    for serving in started:
        serving.stop()


@pytest.fixture
def http():
    with httpx.Client(trust_env=False, timeout=30) as client:  # loopback only: never through a proxy
        yield client


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Annotations are strings here (PEP 563); FastAPI resolves them in this module's globals, so the
# types endpoints use are imported or defined at module level.
class Item(BaseModel):
    name: str
    price: float


# ---- decorators --------------------------------------------------------------------------------
def test_decorators_attach_a_spec_and_return_the_function():
    def f(x: int = 1):
        return x

    assert fastapi_endpoint(method="post", label="my-api", docs=True)(f) is f
    spec = f.__runner_web__
    assert (spec.kind, spec.method, spec.label, spec.docs) == ("fastapi_endpoint", "POST", "my-api", True)

    def g():
        pass

    web_server(8000, startup_timeout=2)(g)
    assert (g.__runner_web__.kind, g.__runner_web__.port, g.__runner_web__.startup_timeout) == ("web_server", 8000, 2.0)

    def h():
        pass

    assert web_endpoint()(h).__runner_web__.kind == "fastapi_endpoint"


def test_default_label_follows_the_function_name():
    assert default_label("Hello_World") == "hello-world"
    assert default_label("f2.x") == "f2x"
    assert default_label("__init__") == "--init--"
    with pytest.raises(InvalidError, match="label="):
        default_label("π")  # nothing usable is left


@pytest.mark.parametrize(
    "make, fragment",
    [
        (lambda: fastapi_endpoint(method="FETCH"), "use one of GET, POST"),
        (lambda: fastapi_endpoint(label="My_API"), "lowercase letters, digits or '-'"),
        (lambda: asgi_app(label="x" * 64), "1 to 63"),
        (lambda: wsgi_app(custom_domains=["api.example.com"]), "custom_domains"),
        (lambda: asgi_app(requires_proxy_auth=True), "requires_proxy_auth"),
        (lambda: web_server(0), "from 1 to 65535"),
        (lambda: web_server("8000"), "from 1 to 65535"),
        (lambda: web_server(8000, startup_timeout=0), "above 0"),
    ],
)
def test_bad_decorator_arguments_are_invalid(make, fragment):
    with pytest.raises(InvalidError, match=fragment):
        make()


def test_misplaced_web_decorators_are_invalid():
    app = runner.App("web-deco")

    @app.function(serialized=True)
    def f():
        pass

    with pytest.raises(InvalidError, match="below @app.function"):
        fastapi_endpoint()(f)

    async def make_app():
        pass

    with pytest.raises(InvalidError, match="not async"):
        asgi_app()(make_app)

    def twice():
        pass

    with pytest.raises(InvalidError, match="use only one"):
        asgi_app()(fastapi_endpoint()(twice))


# ---- fastapi_endpoint ------------------------------------------------------------------------
def test_fastapi_endpoint_get_takes_query_parameters(serve, http):
    @fastapi_endpoint()
    def hello(name: str = "world", times: int = 1):
        return {"greeting": " ".join([f"hello {name}"] * times)}

    url = serve("fastapi_endpoint", hello)
    assert http.get(url + "/", params={"name": "ann", "times": 2}).json() == {"greeting": "hello ann hello ann"}
    assert http.get(url + "/", params={"times": "x"}).status_code == 422  # FastAPI's validation
    assert http.post(url + "/").status_code == 405  # only the declared method
    assert http.get(url + "/docs").status_code == 404  # docs are off unless asked for
    assert http.options(url + "/", headers={"Origin": "http://a.test", "Access-Control-Request-Method": "GET"}
                        ).headers["access-control-allow-origin"] == "http://a.test"  # CORS open, as on Modal


def test_fastapi_endpoint_post_takes_a_json_body_or_a_model(serve, http):
    @fastapi_endpoint(method="POST")
    def total(data: dict):
        return {"sum": sum(data["values"])}

    @fastapi_endpoint(method="POST")
    def describe(item: Item):
        return f"{item.name} costs {item.price:.2f}"

    assert http.post(serve("fastapi_endpoint", total) + "/", json={"values": [1, 2, 3]}).json() == {"sum": 6}
    url = serve("fastapi_endpoint", describe)
    assert http.post(url + "/", json={"name": "tea", "price": 2.5}).json() == "tea costs 2.50"
    assert http.post(url + "/", json={"name": "tea"}).status_code == 422


def test_fastapi_endpoint_docs_use_the_label_prefix(serve, http):
    @fastapi_endpoint(docs=True)
    def documented():
        return "ok"

    url = serve("fastapi_endpoint", documented, root_path="/documented")
    page = http.get(url + "/docs")
    assert page.status_code == 200 and "/documented/openapi.json" in page.text
    assert "/" in http.get(url + "/openapi.json").json()["paths"]


# ---- asgi_app, wsgi_app -----------------------------------------------------------------------
def test_asgi_app_is_built_once_and_served_with_its_routes(serve, http):
    built = []

    @asgi_app()
    def make():
        web = FastAPI()
        built.append(web)

        @web.get("/items/{n}")
        def item(n: int, request: Request):
            return {"n": n, "root": request.scope["root_path"], "url": str(request.url_for("item", n=n))}

        return web

    url = serve("asgi_app", make, root_path="/shop")
    assert http.get(url + "/items/3").json() == {"n": 3, "root": "/shop", "url": f"{url}/shop/items/3"}
    assert http.get(url + "/items/4").json()["n"] == 4
    assert http.get(url + "/nothing").status_code == 404
    assert len(built) == 1


def test_wsgi_app_sees_the_label_as_its_script_name(serve, http):
    def application(environ, start_response):
        body = f"{environ['REQUEST_METHOD']} {environ['SCRIPT_NAME']} {environ['PATH_INFO']} "
        body += environ["wsgi.input"].read().decode()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [body.encode()]

    @wsgi_app()
    def make():
        return application

    url = serve("wsgi_app", make, root_path="/legacy")
    assert http.post(url + "/a/b", content=b"payload").text == "POST /legacy /a/b payload"


def test_app_factories_must_take_no_arguments_and_return_an_app(serve):
    def needs(x):
        return None

    with pytest.raises(InvalidError, match="must take no arguments"):
        serve("asgi_app", needs)
    with pytest.raises(InvalidError, match="must return a WSGI app"):
        serve("wsgi_app", lambda: None)


def test_a_failing_lifespan_startup_is_reported(serve):
    @contextlib.asynccontextmanager
    async def lifespan(_app):
        raise RuntimeError("model weights missing")
        yield

    with pytest.raises(ExecutionError, match="lifespan startup failed"):
        serve("asgi_app", lambda: FastAPI(lifespan=lifespan))


# ---- streaming, server-sent events, WebSockets ------------------------------------------------
def test_streamed_events_arrive_before_the_response_ends(serve, http):
    from fastapi.responses import StreamingResponse

    released = threading.Event()

    @fastapi_endpoint()
    def events():
        async def gen():
            yield "data: first\n\n"
            # The second event waits until the client has seen the first: a buffered response
            # would reach the client only after this wait gave up.
            ok = await asyncio.to_thread(released.wait, 20)
            yield f"data: {'released' if ok else 'buffered'}\n\n"

        return StreamingResponse(gen(), media_type="text/event-stream")

    url = serve("fastapi_endpoint", events)
    with http.stream("GET", url + "/") as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        chunks = response.iter_text()
        first = next(chunks)
        assert first == "data: first\n\n"
        released.set()
        assert "".join(chunks) == "data: released\n\n"


def test_websocket_echo(serve):
    from websockets.sync.client import connect

    @asgi_app()
    def make():
        web = FastAPI()

        @web.websocket("/ws")
        async def echo(ws: WebSocket):
            await ws.accept()
            async for text in ws.iter_text():
                await ws.send_text(text.upper())

        return web

    url = serve("asgi_app", make, root_path="/chat")
    with connect(url.replace("http://", "ws://") + "/ws", proxy=None, open_timeout=10) as ws:
        for word in ("hello", "again"):
            ws.send(word)
            assert ws.recv(timeout=10) == word.upper()


# ---- web_server -------------------------------------------------------------------------------
def test_web_server_waits_for_the_users_server(serve, http, tmp_path):
    (tmp_path / "page.txt").write_text("served by http.server")
    port = free_port()
    procs = []

    @web_server(port, startup_timeout=30)
    def files():
        procs.append(subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                                       "-d", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    try:
        url = serve("web_server", files, port=port, startup_timeout=30)
        assert url == f"http://127.0.0.1:{port}"
        assert http.get(url + "/page.txt").text == "served by http.server"
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)


def test_web_server_that_never_listens_names_the_port(serve):
    port = free_port()
    with pytest.raises(ExecutionError, match=rf"web_server did not listen on port {port} within 0.3s"):
        serve("web_server", lambda: None, port=port, startup_timeout=0.3)


# ---- the agent --------------------------------------------------------------------------------
@pytest.fixture
def agent_with():
    """Run the real agent in a subprocess for a module of web functions; yields its first answer."""
    work = pathlib.Path(tempfile.mkdtemp(prefix="rw-", dir="/tmp"))  # short: a unix socket path
    procs, conns = [], []

    def run(source: str, qualname: str, web: dict) -> tuple[dict, list]:
        (work / "webmod.py").write_text(textwrap.dedent(source))
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock_path = str(work / f"a{len(procs)}.sock")
        listener.bind(sock_path)
        listener.listen(1)
        env = {**os.environ, "RUNNER_AGENT_ADDR": f"unix:{sock_path}", "PYTHONPATH": str(REPO)}
        procs.append(subprocess.Popen([sys.executable, "-m", "runner._agent"], env=env, stdin=subprocess.DEVNULL))
        listener.settimeout(60)
        sock, _ = listener.accept()
        listener.close()
        sock.settimeout(60)
        conn = P.Connection(sock)
        conns.append(conn)
        assert conn.recv()[0]["op"] == P.HELLO
        spec = {"name": qualname, "by_value": False, "module": "webmod", "qualname": qualname,
                "sys_path": [str(work)], "is_class": False, "alias_modal": False,
                "web": {"host": "127.0.0.1", "root_path": f"/{default_label(qualname)}", **web}}
        conn.send({"op": P.INIT, "spec": spec}, [])
        return conn.recv()

    yield run
    for conn in conns:
        conn.close()  # the agent exits when its client is gone
    for proc in procs:
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    shutil.rmtree(work, ignore_errors=True)


def test_agent_serves_a_web_function_and_reports_its_port(agent_with, http):
    header, _ = agent_with(
        """
        from runner._web import fastapi_endpoint

        @fastapi_endpoint()
        def greet(name: str = "world"):
            return f"hello {name}"
        """,
        "greet",
        {"kind": "fastapi_endpoint", "method": "GET", "docs": False, "port": None, "startup_timeout": None},
    )
    assert header["op"] == P.READY, header
    assert http.get(f"http://127.0.0.1:{header['web_port']}/", params={"name": "agent"}).json() == "hello agent"


def test_agent_reports_a_web_server_that_does_not_start(agent_with):
    port = free_port()
    header, _ = agent_with(
        "def quiet():\n    pass\n",
        "quiet",
        {"kind": "web_server", "method": None, "docs": False, "port": port, "startup_timeout": 0.3},
    )
    assert header["op"] == P.INIT_FAILED
    assert f"web_server did not listen on port {port} within 0.3s" in header["tb"]
