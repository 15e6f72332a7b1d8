"""Nothing outlives the client: Ctrl-C, SIGTERM, an exception, or SIGKILL of the client process
all end with no container (docker) or worker process (embedded) left running."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import textwrap
import time

import pytest

RUNNER = [sys.executable, "-m", "runner"]

APP = """
import os, socket, sys, time
import modal

app = modal.App("lifecycle")

@app.function(max_containers=2)
def where(i: int) -> str:
    return f"{os.getpid()}@{socket.gethostname()}"

@app.function(max_containers=2)
def nap(i: int) -> int:
    time.sleep(60)
    return i

@app.local_entrypoint()
def main(fail: bool = False):
    ids = sorted(set(where.map(range(8))))
    print("CONTAINERS", " ".join(ids), flush=True)
    if fail:
        raise RuntimeError("entrypoint failed on purpose")
    list(nap.map(range(4)))
"""


def _alive(provider: str, ident: str) -> bool:
    pid, _, host = ident.partition("@")
    if provider == "embedded":
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return False
        try:  # a zombie is gone for our purposes
            with open(f"/proc/{pid}/stat") as f:
                return f.read().split(")")[-1].split()[0] != "Z"
        except FileNotFoundError:
            return False
    import docker

    client = docker.from_env()
    try:
        running = [c for c in client.api.containers() if c["Id"].startswith(host)]
        return bool(running)
    finally:
        client.close()


def _start(tmp_path, provider, *extra):
    (tmp_path / "app.py").write_text(textwrap.dedent(APP))
    env = dict(os.environ, RUNNER_PROVIDER=provider)
    proc = subprocess.Popen(RUNNER + ["run", "app.py", *extra], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    for line in proc.stdout:
        if line.startswith("CONTAINERS"):
            ids = line.split()[1:]
            assert ids
            return proc, ids
        if time.monotonic() > deadline:
            break
    proc.kill()
    pytest.fail(f"the app never reported its containers: {proc.stderr.read()}")


def _wait_gone(provider, ids, within):
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        left = [i for i in ids if _alive(provider, i)]
        if not left:
            return
        time.sleep(0.5)
    pytest.fail(f"still running {within}s later: {left}")


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_stops_every_container(provider, tmp_path, sig, code):
    proc, ids = _start(tmp_path, provider)
    time.sleep(1)  # the naps are running now
    proc.send_signal(sig)
    assert proc.wait(timeout=60) == code
    _wait_gone(provider, ids, within=5)


def test_exception_in_entrypoint_stops_every_container(provider, tmp_path):
    proc, ids = _start(tmp_path, provider, "--fail")
    assert proc.wait(timeout=60) == 1
    assert "entrypoint failed on purpose" in proc.stderr.read()
    _wait_gone(provider, ids, within=5)


def test_sigkill_of_the_client_leaves_nothing_running(provider, tmp_path):
    proc, ids = _start(tmp_path, provider)
    time.sleep(1)
    proc.kill()
    proc.wait(timeout=10)
    _wait_gone(provider, ids, within=60)
    # Its socket directory could not be removed by a dead client; the next app run removes it.
    left = pathlib.Path(tempfile.gettempdir()) / f"runner-{proc.pid}-"
    assert [p for p in left.parent.glob(left.name + "*")], "the killed client's session directory"
    import runner

    with runner.App("sweeper").run(provider="embedded"):
        pass
    assert not [p for p in left.parent.glob(left.name + "*")]
