"""Helpers the tests share: running the CLI, writing apps, reading what containers print."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap
import threading
import time
import uuid

RUNNER = [sys.executable, "-m", "runner"]


def run_cli(args, cwd, env=None, timeout=180, input=None):
    full_env = dict(os.environ)
    full_env.setdefault("RUNNER_PROVIDER", "embedded")
    full_env.update(env or {})
    return subprocess.run(RUNNER + list(args), cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout,
                          input=input, stdin=None if input is not None else subprocess.DEVNULL)


def http_to(url: str, host: str, method: str = "GET", path: str = "/", body: bytes | None = None,
            timeout: float = 120) -> tuple[int, str]:
    """(status, text) of one request to the server at `url` (http://127.0.0.1:PORT) with `host` in
    the Host header, as a front door routing by host sees it: nothing resolves that name."""
    import http.client
    import urllib.parse

    address = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(address.hostname, address.port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers={"Host": host, "Connection": "close"})
        answer = conn.getresponse()
        return answer.status, answer.read().decode()
    finally:
        conn.close()


def write(tmp_path, name, source):
    path = tmp_path / name
    path.write_text(textwrap.dedent(source))
    return path


def assert_one_line_error(proc, *fragments, code=1):
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    errors = [i for i, line in enumerate(lines) if line.startswith("Error:")]
    assert len(errors) == 1, proc.stderr
    for fragment in fragments:
        assert fragment in lines[errors[0]], (fragment, lines[errors[0]])
    return lines[errors[0]:]


def tag() -> str:
    """A fresh token that starts every line a test has its containers print."""
    return uuid.uuid4().hex[:16]


class ContainerOutput:
    """Lines containers print: their output reaches the client's sys.stdout on every provider.

    Recorded as it is written, passing it on: polling capfd.readouterr() while runner's threads
    forward output loses lines (it truncates what it read, and a write in between goes with it)."""

    def __init__(self, stream):
        self._stream, self._lock, self._text = stream, threading.Lock(), []

    def write(self, text: str) -> int:
        with self._lock:
            self._text.append(text)
        return self._stream.write(text)

    def __getattr__(self, name):
        return getattr(self._stream, name)

    def lines(self, prefix: str) -> list[str]:
        with self._lock:
            text = "".join(self._text)
        return [line for line in text.splitlines() if line.startswith(prefix)]

    def wait_for(self, prefix: str, seconds: float = 15.0, why: str = "") -> list[str]:
        deadline = time.monotonic() + seconds
        while not (found := self.lines(prefix)):
            assert time.monotonic() < deadline, why or f"no line starting {prefix!r} was printed within {seconds}s"
            time.sleep(0.02)
        return found


@contextlib.contextmanager
def printed_lines():
    """Record what is written to sys.stdout inside the block. Installed in the test itself, not in a
    fixture: pytest puts its own sys.stdout back when the test's call phase starts."""
    recorder = ContainerOutput(sys.stdout)
    sys.stdout = recorder
    try:
        yield recorder
    finally:
        sys.stdout = recorder._stream


def untag(match) -> None:
    """Remove every tag on this Docker daemon for which `match(tag)` is true."""
    import docker

    c = docker.from_env()
    try:
        for img in c.images.list():
            for tag in img.tags:
                if match(tag):
                    c.images.remove(tag, force=True)
    finally:
        c.close()


def stop_process(proc: subprocess.Popen, timeout: float = 10) -> None:
    """Terminate a server a test started, and kill it if it has not exited within `timeout`."""
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


REGISTRY_BIN = "/usr/bin/docker-registry"


@contextlib.contextmanager
def serve_registry(root, extra_config: str = "", ready_status: int = 200):
    """Debian's registry server on 127.0.0.1:<free port>, storing under `root`; yields its address.
    Skips when the binary is missing, except in CI (.ci/run installs it), where that fails."""
    import socket

    import pytest
    import requests

    if not os.path.exists(REGISTRY_BIN):
        if os.environ.get("CI"):
            pytest.fail(f"{REGISTRY_BIN} is missing; .ci/run installs Debian's docker-registry package")
        pytest.skip(f"{REGISTRY_BIN} is missing (apt-get install docker-registry)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"127.0.0.1:{port}"
    config = root / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: warn\n"
        f"storage:\n  filesystem:\n    rootdirectory: {root / 'data'}\n"
        f"http:\n  addr: {address}\n" + extra_config
    )
    with open(root / "registry.log", "wb") as log:  # the child holds its own copy
        proc = subprocess.Popen([REGISTRY_BIN, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    http = requests.Session()
    http.trust_env = False  # loopback only: never through a proxy
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if http.get(f"http://{address}/v2/", timeout=2).status_code == ready_status:
                    break
            except requests.ConnectionError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                log_text = (root / "registry.log").read_text()[-2000:]
                pytest.fail(f"docker-registry did not come up on {address}:\n{log_text}")
            time.sleep(0.2)
        yield address
    finally:
        stop_process(proc)
        http.close()
        untag(lambda tag: tag.startswith(address + "/"))  # tags naming a registry that is gone now


@contextlib.contextmanager
def own_runner_home(prefix: str):
    """A RUNNER_HOME of the caller's own, with its managed store server stopped and the directory
    removed afterwards. Short, under /tmp: the store's socket path must fit in about 100 bytes."""
    import pathlib
    import shutil
    import tempfile

    import pytest

    from runner._store import stop_managed_server

    home = pathlib.Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RUNNER_HOME", str(home))
        mp.delenv("RUNNER_STORE_URL", raising=False)
        try:
            yield home
        finally:
            stop_managed_server()
            shutil.rmtree(home, ignore_errors=True)


@contextlib.contextmanager
def redis_on_socket(prefix: str, password: str | None = None, perm: str = "777"):
    """A private redis-server on a unix socket only (no TCP port), in a short directory of its own
    under /tmp (a socket path must fit in about 100 bytes); yields (socket path, directory). Skips
    when redis-server is missing, except in CI (.ci/run installs it), where that fails."""
    import pathlib
    import shutil
    import tempfile

    import pytest

    if not shutil.which("redis-server"):
        if os.environ.get("CI"):
            pytest.fail("redis-server is not installed, and the Redis tests are mandatory in CI")
        pytest.skip("redis-server is not installed")
    d = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
    os.chmod(d, 0o777)
    sock = os.path.join(d, "redis.sock")
    args = ["redis-server", "--port", "0", "--unixsocket", sock, "--unixsocketperm", perm, "--save", "",
            "--appendonly", "no", "--dir", d]
    if password:
        args += ["--requirepass", password]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not os.path.exists(sock):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.02)
        yield sock, pathlib.Path(d)
    finally:
        stop_process(proc)
        shutil.rmtree(d, ignore_errors=True)
