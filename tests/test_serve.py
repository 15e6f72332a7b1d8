"""`runner serve`: web functions live on local URLs, reloaded on a source change at the same URL,
a broken edit keeps the old version serving, and Ctrl-C stops everything."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request

from helpers import RUNNER, write

APP = """
    import modal

    app = modal.App("served", image=modal.Image.debian_slim().pip_install("fastapi[standard]"))

    @app.function()
    @modal.fastapi_endpoint()
    def hello() -> str:
        return "VERSION"
"""


def get(url: str) -> str:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=120) as resp:
        return resp.read().decode()


class Lines:
    """What the serving process prints (stderr), read in a thread, waited for by prefix."""

    def __init__(self, stream):
        self.q: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=lambda: [self.q.put(line) for line in stream], daemon=True).start()

    def wait_for(self, fragment: str, seconds: float = 120) -> str:
        deadline = time.monotonic() + seconds
        while True:
            try:
                line = self.q.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no line with {fragment!r} within {seconds}s; seen: {self.seen[-10:]}") from None
            self.seen.append(line)
            if fragment in line:
                return line


def test_serve_reloads_at_the_same_url_and_stops_on_ctrl_c(tmp_path, provider):
    app_file = write(tmp_path, "app.py", APP.replace("VERSION", "one"))
    env = {**os.environ, "RUNNER_PROVIDER": provider}
    proc = subprocess.Popen([*RUNNER, "serve", "app.py"], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    try:
        lines = Lines(proc.stderr)
        url = lines.wait_for("hello => ").split("=> ")[1].strip()
        lines.wait_for("Serving")
        assert get(url) == '"one"'
        time.sleep(1.1)  # a new modification time even on coarse filesystems
        app_file.write_text(app_file.read_text().replace("def hello(", "def hello(:"))
        lines.wait_for("does not load")
        assert get(url) == '"one"'  # the broken edit left the old version serving
        app_file.write_text(APP.replace("VERSION", "two").replace("\n    ", "\n"))
        lines.wait_for("reloading")
        assert lines.wait_for("hello => ").split("=> ")[1].strip() == url  # the same URL
        lines.wait_for("Serving")
        assert get(url) == '"two"'
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 130
    finally:
        proc.kill()
        proc.wait()
    try:
        get(url)
        raise AssertionError("the URL still answers after Ctrl-C")
    except (urllib.error.URLError, ConnectionError):
        pass
    if provider == "docker":
        import docker

        client = docker.from_env()
        left = client.containers.list(all=True, filters={"label": "org.runner.function=hello"})
        client.close()
        assert not left


def test_serve_bad_inputs(tmp_path):
    from helpers import assert_one_line_error, run_cli

    assert_one_line_error(run_cli(["serve", "missing.py"], tmp_path), "no such file: missing.py")
    write(tmp_path, "two.py", """
        import modal
        a = modal.App("a")
        b = modal.App("b")
    """)
    assert_one_line_error(run_cli(["serve", "two.py"], tmp_path), "defines 2 Apps", "two.py::NAME")
    assert_one_line_error(run_cli(["serve", "two.py::c"], tmp_path), "has no App named 'c'")
