"""The store itself: which one is used, and the redis-server runner manages (start, crash, stop).

Every test has its own RUNNER_HOME, so its own managed server, stopped when the test ends.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import pytest

import runner as modal
from helpers import assert_one_line_error, own_runner_home, run_cli, write
from runner.exception import InvalidError


def require_redis_server() -> None:
    if shutil.which("redis-server"):
        return
    if os.environ.get("CI"):
        pytest.fail("redis-server is missing; CI installs it")
    pytest.skip("redis-server is not on PATH")


@pytest.fixture
def home():
    """A RUNNER_HOME of the test's own."""
    with own_runner_home("rs-") as path:
        yield path


def servers_for(home: pathlib.Path) -> list[int]:
    """Pids of the redis-servers listening on this home's socket."""
    sock = str(home / "store" / "sock" / "redis.sock").encode()
    pids = []
    for proc in pathlib.Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if b"redis-server" in cmdline and sock in cmdline:
            pids.append(int(proc.name))
    return pids


def status(**env) -> str:
    proc = run_cli(["store", "status"], cwd=".", env=env)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_concurrent_clients_start_one_server(home):
    require_redis_server()
    script = "import os, runner as modal; modal.Dict.from_name('shared', create_if_missing=True)[os.getpid()] = 1"
    procs = [subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE, text=True) for _ in range(4)]
    for proc in procs:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    assert modal.Dict.from_name("shared").len() == 4
    assert len(servers_for(home)) == 1
    assert "state: running" in status()


def test_stopped_server_starts_again_with_its_data(home):
    require_redis_server()
    modal.Queue.from_name("kept", create_if_missing=True).put_many(["a", "b"])
    stop = run_cli(["store", "stop"], cwd=".")
    assert stop.returncode == 0 and "stopped" in stop.stdout, stop.stderr
    assert servers_for(home) == []
    assert "state: stopped" in status()
    assert modal.Queue.from_name("kept").get() == "a"  # this client starts it again
    assert len(servers_for(home)) == 1
    assert "stopped the store's redis-server" in run_cli(["store", "stop"], cwd=".").stdout
    assert "not running" in run_cli(["store", "stop"], cwd=".").stdout


def test_crashed_server_is_replaced_and_keeps_its_data(home):
    require_redis_server()
    d = modal.Dict.from_name("survivor", create_if_missing=True)
    d["k"] = "v"
    (pid,) = servers_for(home)
    os.kill(pid, signal.SIGKILL)  # leaves its socket and pidfile behind
    deadline = time.monotonic() + 10
    while pid in servers_for(home) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (home / "store" / "sock" / "redis.sock").exists()
    assert d["k"] == "v"  # a new server, with the data written before the crash
    out = subprocess.run([sys.executable, "-c", "import runner as modal; print(modal.Dict.from_name('survivor')['k'])"],
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "v", out.stderr
    assert len(servers_for(home)) == 1 and pid not in servers_for(home)


def test_without_redis_server_the_store_is_sqlite_in_runner_home(home):
    env = {"PATH": os.path.dirname(sys.executable)}  # no redis-server there
    assert not shutil.which("redis-server", path=env["PATH"])
    script = "import runner as modal; d = modal.Dict.from_name('lite', create_if_missing=True); d['n'] = d.get('n', 0) + 1; print(d['n'])"
    for expected in ("1", "2"):
        out = subprocess.run([sys.executable, "-c", script], env={**os.environ, **env}, capture_output=True, text=True,
                             timeout=60)
        assert out.stdout.strip() == expected, out.stderr
    text = status(**env)
    assert "store: sqlite" in text and str(home / "store" / "store.sqlite3") in text
    assert servers_for(home) == []


def test_store_url_chooses_the_store(home, tmp_path, monkeypatch):
    monkeypatch.setenv("RUNNER_STORE_URL", f"sqlite://{tmp_path}/mine/s.sqlite3")
    modal.Dict.from_name("chosen", create_if_missing=True)["k"] = 1
    assert (tmp_path / "mine" / "s.sqlite3").exists()
    assert servers_for(home) == []
    monkeypatch.setenv("RUNNER_STORE_URL", "memcached://somewhere")
    d = modal.Dict.from_name("anything")  # lazy: a bad URL shows on first use
    with pytest.raises(InvalidError, match="not a store URL.*redis://host:port/db"):
        d.get("k")
    monkeypatch.setenv("RUNNER_STORE_URL", "sqlite://relative/path")
    with pytest.raises(InvalidError, match="absolute path"):
        d.get("k")


def test_a_runner_home_too_long_for_a_socket_is_an_error(tmp_path, monkeypatch):
    require_redis_server()
    monkeypatch.setenv("RUNNER_HOME", str(tmp_path / ("x" * 100)))
    monkeypatch.delenv("RUNNER_STORE_URL", raising=False)
    with pytest.raises(InvalidError, match="too long.*RUNNER_HOME"):
        modal.Dict.from_name("d", create_if_missing=True).len()


def test_docker_containers_cannot_reach_a_loopback_store(home, tmp_path, docker_provider):
    write(tmp_path, "plain.py", """
        import runner as modal

        app = modal.App("plain")


        @app.function()
        def one():
            return 1
    """)
    proc = run_cli(["run", "plain.py"], cwd=tmp_path, env={"RUNNER_STORE_URL": "redis://127.0.0.1:6399/0"})
    assert_one_line_error(proc, "loopback", "unix socket URL")
