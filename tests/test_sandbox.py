"""Sandboxes, through the public API: real Docker for everything (the `docker_provider` fixture,
mandatory in CI), and the embedded provider for what a host process can do (the `provider` fixture
runs a test on both)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import time
import urllib.request
import uuid

import pytest

import runner
from runner.exception import (
    ClientClosed,
    ConflictError,
    InvalidError,
    NotFoundError,
    SandboxTerminatedError,
    SandboxTimeoutError,
)

Sandbox = runner.Sandbox


def control_dirs() -> set[str]:
    """The sandbox control directories under this run's RUNNER_HOME (see conftest.py)."""
    root = os.path.join(os.environ["RUNNER_HOME"], "sb")
    return set(os.listdir(root)) if os.path.isdir(root) else set()


def docker_ps(sandbox_id: str) -> list[str]:
    out = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=org.runner.sandbox={sandbox_id}"],
                         capture_output=True, text=True, check=True).stdout
    return out.split()


def eventually(check, seconds=30.0, why=""):
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, why
        time.sleep(0.05)


# ---- the acceptance flow, on both providers ------------------------------------------------------
def test_exec_streams_stdin_and_return_codes(provider, make):
    sb = make()
    p = sb.exec("sh", "-c", "echo first; read x; echo got $x")
    lines = iter(p.stdout)
    assert next(lines) == "first\n"  # read while the command still waits for its stdin
    assert p.poll() is None
    p.stdin.write(b"5\n")
    p.stdin.write_eof()
    p.stdin.drain()
    assert list(lines) == ["got 5\n"]
    assert p.wait() == 0 and p.returncode == 0

    p = sb.exec("python3", "-c", "import sys; print(sum(int(line) for line in sys.stdin))")
    p.stdin.write("1\n2\n3\n")
    p.stdin.write_eof()
    p.stdin.drain()
    p.wait()
    assert p.stdout.read().strip() == "6"

    bad = sb.exec("sh", "-c", "echo oops >&2; exit 3")
    assert bad.wait() == 3
    assert bad.stderr.read() == "oops\n" and bad.stdout.read() == ""
    raw = sb.exec("printf", "\\001\\002", text=False)
    assert raw.stdout.read() == b"\x01\x02"


def stdin_then_exit_7(make):
    """A sandbox whose main command streams a line, reads one from stdin and exits 7; checked up to
    its end (also used by tests/test_sandbox_kube.py)."""
    sb = make("sh", "-c", "echo ready; read x; echo $x; echo err >&2; exit 7")
    assert next(iter(sb.stdout)) == "ready\n"  # before the command has its stdin
    assert sb.poll() is None
    sb.stdin.write(b"go\n")
    sb.stdin.write_eof()
    sb.stdin.drain()
    sb.wait()
    assert sb.returncode == 7
    assert sb.stdout.read() == "go\n" and sb.stderr.read() == "err\n"
    return sb


def test_main_command_streams_and_ends_the_sandbox(provider, make):
    sb = stdin_then_exit_7(make)
    again = Sandbox.from_id(sb.object_id)  # the end and the output outlive the supervisor
    assert again.returncode == 7 and again.stdout.read() == "ready\ngo\n"
    with pytest.raises(ConflictError, match="has finished.*return code 7"):
        sb.exec("true")


def test_files(provider, make, tmp_path):
    workdir = "/tmp/sbfiles" if provider == "docker" else str(tmp_path)
    sb = make(workdir=workdir)
    with sb.open("notes.txt", "w") as f:  # relative to the workdir
        f.write("hello\nworld\n")
    assert sb.exec("cat", f"{workdir}/notes.txt").stdout.read() == "hello\nworld\n"
    with sb.open(f"{workdir}/notes.txt", "a") as f:
        f.write("more\n")
    with sb.open("notes.txt") as f:
        assert f.readline() == "hello\n"
        assert f.tell() == 6
        f.seek(-5, 2)
        assert f.read() == "more\n"
        f.seek(0)
        assert f.read(5) == "hello"
    with sb.open("data.bin", "wb") as f:
        f.write(bytes(range(256)))
    with sb.open("data.bin", "r+b") as f:
        f.seek(10)
        f.write(b"\xff")
        f.seek(0)
        assert f.read() == bytes(range(10)) + b"\xff" + bytes(range(11, 256))
    sb.mkdir("a/b/c", parents=True)
    sb.mkdir("a/b/c", parents=True)  # like mkdir -p
    with pytest.raises(FileExistsError):
        sb.mkdir("a")
    with sb.open("a/b/c/x.txt", "w") as f:
        f.write("x")
    assert sb.ls("a/b/c") == ["x.txt"]
    assert sorted(sb.ls(workdir)) == ["a", "data.bin", "notes.txt"]
    with pytest.raises(OSError):
        sb.rm("a")  # not empty
    sb.rm("a", recursive=True)
    sb.rm("data.bin")
    assert sb.ls(".") == ["notes.txt"]
    with pytest.raises(FileNotFoundError):
        sb.open("missing.txt")
    with pytest.raises(FileNotFoundError):
        sb.ls("nowhere")
    with pytest.raises(IsADirectoryError):
        sb.open(".", "r")
    with sb.open("notes.txt") as f:
        with pytest.raises(InvalidError, match="does not allow writing"):
            f.write("no")
        with pytest.raises(InvalidError, match="write str"):
            sb.open("other.txt", "w").write(b"bytes")
    f.close()
    with pytest.raises(InvalidError, match="is closed"):
        f.read()


def test_exec_env_workdir_and_secrets(provider, make):
    sb = make(env={"SB_A": "sandbox", "SB_B": "sandbox"}, secrets=[runner.Secret.from_dict({"SB_SECRET": "s3cr3t"})],
              workdir="/tmp")
    show = "echo $SB_A $SB_B $SB_SECRET $SB_C; pwd"
    assert sb.exec("sh", "-c", show).stdout.read() == "sandbox sandbox s3cr3t\n/tmp\n"
    p = sb.exec("sh", "-c", show, env={"SB_B": "exec", "SB_C": "c"}, workdir="/",
                secrets=[runner.Secret.from_dict({"SB_SECRET": "other"})])
    assert p.stdout.read() == "sandbox exec other c\n/\n"
    assert "s3cr3t" not in repr(sb) and "s3cr3t" not in repr(p)
    if provider == "docker":
        assert "s3cr3t" not in subprocess.run(["docker", "inspect", docker_ps(sb.object_id)[0]], capture_output=True,
                                              text=True, check=True).stdout  # not in the container's config


def test_exec_timeout_kills_the_command(provider, make):
    sb = make()
    p = sb.exec("sh", "-c", "echo started; sleep 60; echo never", timeout=1)
    assert p.stdout.read() == "started\n"
    assert p.wait() == -1  # Modal's return code for an exec past its timeout
    assert sb.poll() is None  # the sandbox goes on
    assert sb.exec("echo", "still here").stdout.read() == "still here\n"


def test_aio(provider):
    async def main():
        sb = await Sandbox.create.aio(timeout=60)
        try:
            p = await sb.exec.aio("sh", "-c", "echo a; echo b")
            assert [line async for line in p.stdout] == ["a\n", "b\n"]
            assert await p.wait.aio() == 0
            f = await sb.open.aio("/tmp/aio.txt", "w")
            await f.write.aio("x")
            await f.close.aio()
            assert await (await sb.exec.aio("cat", "/tmp/aio.txt")).stdout.read.aio() == "x"
            assert sb.object_id in [s.object_id async for s in Sandbox.list.aio()]
            assert await sb.poll.aio() is None
        finally:
            await sb.terminate.aio()
        assert await sb.poll.aio() == 137

    asyncio.run(main())


def test_block_network_leaves_no_route_out(provider, make):
    # Read, never sent: no interface but loopback and no route at all. (Nothing here may send a
    # packet to an outside address, even if the block were broken.)
    probe = textwrap.dedent("""
        import socket
        print(sorted(name for _, name in socket.if_nameindex()))
        print(sum(not line.startswith("Iface") for line in open("/proc/net/route")), "routes")
    """)
    sb = make(block_network=True)
    out = sb.exec("python3", "-c", probe).stdout.read().splitlines()
    assert out == ["['lo']", "0 routes"]


def test_block_network_is_real_on_docker(docker_provider, make):
    # Without block_network the sandbox has an interface out; nothing is sent anywhere to show it.
    sb = make()
    names = sb.exec("python3", "-c", "import socket; print(*(n for _, n in socket.if_nameindex()))").stdout.read()
    assert "eth0" in names.split()


# ---- docker: what a container enforces ------------------------------------------------------------
def test_timeout_ends_the_sandbox(docker_provider, make):
    sb = make(timeout=2)
    with pytest.raises(SandboxTimeoutError):
        sb.wait()
    assert sb.returncode == 124
    eventually(lambda: not docker_ps(sb.object_id), why="the container did not remove itself")
    with pytest.raises(ConflictError, match="return code 124"):
        sb.exec("true")


def test_idle_timeout_counts_from_the_last_request(docker_provider, make):
    sb = make(idle_timeout=1, timeout=60)
    assert sb.exec("sleep", "2").wait() == 0  # a running exec keeps it busy past idle_timeout
    sb.wait(raise_on_termination=False)
    assert sb.returncode == 137
    with pytest.raises(SandboxTerminatedError, match="idle_timeout"):
        sb.wait()


def test_cpu_and_memory_are_docker_limits(docker_provider, make):
    sb = make(cpu=(0.5, 1.0), memory=(64, 128))
    read = textwrap.dedent("""
        import os
        def first(*paths):
            for p in paths:
                if os.path.exists(p):
                    return open(p).read().split()
        mem = first("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")
        cpu = first("/sys/fs/cgroup/cpu.max", "/sys/fs/cgroup/cpu/cpu.cfs_quota_us")
        period = cpu[1] if len(cpu) > 1 else first("/sys/fs/cgroup/cpu/cpu.cfs_period_us")[0]
        print(int(mem[0]), int(cpu[0]) / int(period))
    """)
    assert sb.exec("python3", "-c", read).stdout.read().split() == [str(128 * 1024 * 1024), "1.0"]
    hog = sb.exec("python3", "-c", "b = bytearray(400 * 1024 * 1024); b[::4096] = b'x' * len(b[::4096]); print('survived')")
    assert hog.wait() == 137  # killed by the out-of-memory killer
    assert hog.stdout.read() == ""
    assert sb.exec("echo", "alive").stdout.read() == "alive\n"


def test_tunnel_reaches_a_server_in_the_sandbox(docker_provider, make):
    sb = make("python3", "-m", "http.server", "8000", "--directory", "/tmp", encrypted_ports=[8000])
    with sb.open("/tmp/hello.txt", "w") as f:
        f.write("through the tunnel")
    tunnel = sb.tunnels()[8000]
    assert tunnel.host == "127.0.0.1" and tunnel.url == f"http://127.0.0.1:{tunnel.port}"
    bound = subprocess.run(["docker", "port", docker_ps(sb.object_id)[0], "8000"], capture_output=True, text=True,
                           check=True).stdout
    assert bound.split() == [f"127.0.0.1:{tunnel.port}"]  # published on loopback only
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + 30
    while True:
        try:
            body = opener.open(f"{tunnel.url}/hello.txt", timeout=5).read()
            break
        except OSError:
            assert time.monotonic() < deadline, "the server in the sandbox never answered"
            time.sleep(0.1)
    assert body == b"through the tunnel"


def test_volume_is_shared_with_the_host(docker_provider, make):
    vol = runner.Volume.from_name("sandbox-test-vol", create_if_missing=True)
    sb = make(volumes={"/data": vol})
    assert sb.exec("sh", "-c", "echo from the sandbox > /data/note.txt").wait() == 0
    assert b"".join(vol.read_file("note.txt")) == b"from the sandbox\n"
    with pytest.raises(InvalidError, match="mount path"):
        Sandbox.create(volumes={"data": vol})


def test_another_process_reaches_and_outlives(provider, make):
    sb = make()
    child = textwrap.dedent(f"""
        import runner
        sb = runner.Sandbox.from_id({sb.object_id!r})
        print(sb.exec("sh", "-c", "echo from child > /tmp/child.txt; cat /tmp/child.txt").stdout.read(), end="")
        made = runner.Sandbox.create(timeout=120)
        print(made.object_id)
    """)
    out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    said, made_id = out.stdout.splitlines()
    assert said == "from child"
    assert sb.exec("cat", "/tmp/child.txt").stdout.read() == "from child\n"
    orphan = Sandbox.from_id(made_id)  # its creator has exited; it runs on, as on Modal
    try:
        assert orphan.poll() is None
        assert orphan.exec("echo", "still running").stdout.read() == "still running\n"
    finally:
        orphan.terminate()


def test_list_by_tags_and_set_tags(docker_provider, make):
    run = uuid.uuid4().hex[:8]
    a = make(tags={"run": run, "team": "a"})
    b = make(tags={"run": run, "team": "b"}, name=f"named-{run}")
    assert [s.object_id for s in Sandbox.list(tags={"run": run, "team": "a"})] == [a.object_id]
    assert [s.object_id for s in Sandbox.list(tags={"run": run})] == [b.object_id, a.object_id]  # newest first
    assert {a.object_id, b.object_id} <= {s.object_id for s in Sandbox.list()}
    b.set_tags({"run": run, "team": "a", "extra": "1"})
    assert {s.object_id for s in Sandbox.list(tags={"run": run, "team": "a"})} == {a.object_id, b.object_id}
    assert [s.object_id for s in Sandbox.list(tags={"run": run, "extra": "1"})] == [b.object_id]
    assert b.get_tags() == {"run": run, "team": "a", "extra": "1"}
    assert Sandbox.from_name(None, f"named-{run}").object_id == b.object_id
    with pytest.raises(runner.exception.AlreadyExistsError):
        make(name=f"named-{run}")
    a.terminate()
    assert [s.object_id for s in Sandbox.list(tags={"run": run, "team": "a"})] == [b.object_id]


def test_app_run_ends_its_sandboxes(docker_provider):
    app = runner.App("sandbox-app-test")
    with app.run():
        sb = Sandbox.create(app=app, timeout=120)
        assert [s.object_id for s in Sandbox.list(app_id=app.app_id)] == [sb.object_id]
        kept = Sandbox.create(timeout=120)  # no app: lives on after the run
    try:
        assert not docker_ps(sb.object_id)
        assert sb.poll() == 137
        assert kept.poll() is None
    finally:
        kept.terminate()


def test_detach_then_from_id(docker_provider, make):
    sb = make()
    sb.detach()
    with pytest.raises(ClientClosed, match="from_id"):
        sb.exec("true")
    again = Sandbox.from_id(sb.object_id)
    assert again.exec("echo", "back").stdout.read() == "back\n"


def test_terminate_then_exec_raises(docker_provider, make):
    sb = make()
    p = sb.exec("sleep", "60")
    sb.terminate()
    assert sb.returncode == 137 and p.wait() == 137
    with pytest.raises(ConflictError, match=f"sandbox {sb.object_id} has finished .return code 137."):
        sb.exec("echo", "hi")
    with pytest.raises(SandboxTerminatedError):
        sb.wait()
    sb.wait(raise_on_termination=False)
    sb.terminate()  # again: nothing left to do
    with pytest.raises(NotFoundError):
        Sandbox.from_id(sb.object_id)


def test_paths_cannot_escape(docker_provider, make):
    sb = make(workdir="/tmp")
    with pytest.raises(InvalidError, match="climbs above /"):
        sb.open("../../../etc/passwd")
    with pytest.raises(InvalidError, match="NUL"):
        sb.open("a\0b", "w")
    with pytest.raises(InvalidError, match="private control directory"):
        sb.open("/run/runner-sb/spec.json")
    with pytest.raises(InvalidError, match="private control directory"):
        sb.ls("/run/runner-sb/../runner-sb")
    sb.exec("ln", "-s", "/run/runner-sb", "/tmp/link").wait()
    with pytest.raises(InvalidError, match="private control directory"):
        sb.open("/tmp/link/spec.json")  # through a symlink made inside the sandbox
    with pytest.raises(InvalidError, match="private control directory"):
        sb.rm("/run", recursive=True)
    assert sb.exec("echo", "intact").stdout.read() == "intact\n"


def test_nothing_is_left_behind(docker_provider, make):
    made = [make() for _ in range(3)] + [make("echo", "done")]
    ids = {sb.object_id for sb in made}
    assert ids <= control_dirs()
    for sb in made[:3]:
        sb.terminate()
    made[3].wait()
    for sb in made:
        eventually(lambda sb=sb: not docker_ps(sb.object_id), why=f"{sb.object_id}'s container is still there")
    assert ids & control_dirs() == {made[3].object_id}  # an end of its own is kept a while, to be read
    made[3].terminate()
    assert not ids & control_dirs()


# ---- bad input: one clear error each ---------------------------------------------------------------
@pytest.mark.parametrize("kwargs, match", [
    ({"timeout": 0}, "timeout"),
    ({"timeout": -5}, "timeout"),
    ({"timeout": "300"}, "timeout"),
    ({"timeout": 10**6}, "24 hours"),
    ({"idle_timeout": 0}, "idle_timeout"),
    ({"cpu": "two"}, "cpu"),
    ({"cpu": -1}, "cpu"),
    ({"memory": (512, 128)}, "below its request"),
    ({"gpu": "bogus"}, "invalid gpu"),
    ({"gpu": ["T4", "A10G"]}, "not a list"),
    ({"workdir": "relative"}, "absolute"),
    ({"env": {"A": 1}}, "env"),
    ({"secrets": [{"A": "b"}]}, "Secret"),
    ({"tags": {"a": 1}}, "tags"),
    ({"name": "bad name!"}, "sandbox name"),
    ({"encrypted_ports": [0]}, "port"),
    ({"unencrypted_ports": [8000, 8000]}, "twice"),
    ({"block_network": True, "encrypted_ports": [8000]}, "block_network"),
    ({"image": "python:3.11"}, "runner.Image"),
    ({"app": "my-app"}, "runner.App"),
])
def test_create_rejects_bad_input(kwargs, match, monkeypatch):
    monkeypatch.setenv("RUNNER_PROVIDER", "embedded")
    with pytest.raises(InvalidError, match=match):
        Sandbox.create(**kwargs)


def test_exec_and_open_reject_bad_input(provider, make):
    sb = make()
    for call, match in [
        (lambda: sb.exec(), "needs a command"),
        (lambda: sb.exec("echo", 1), "must be a string"),
        (lambda: sb.exec("true", workdir="tmp"), "absolute"),
        (lambda: sb.exec("true", timeout=0), "timeout"),
        (lambda: sb.exec("true", env={"A": 1}), "env"),
        (lambda: sb.exec("true", bufsize=0), "bufsize"),
        (lambda: sb.open("/tmp/x", "rw"), "invalid file mode"),
        (lambda: sb.open("/tmp/x", "q"), "invalid file mode"),
        (lambda: sb.open(""), "non-empty"),
        (lambda: Sandbox.from_id("not-an-id"), "not a sandbox id"),
    ]:
        with pytest.raises(InvalidError, match=match):
            call()
    with pytest.raises(NotFoundError):
        Sandbox.from_id("sb-000000000000")
    with pytest.raises(runner.exception.ExecutionError, match="no-such-command"):
        sb.exec("no-such-command")


def test_a_long_runner_home_is_refused(monkeypatch, tmp_path):
    monkeypatch.setenv("RUNNER_PROVIDER", "embedded")
    monkeypatch.setenv("RUNNER_HOME", str(tmp_path / ("x" * 90)))
    with pytest.raises(InvalidError, match="RUNNER_HOME=.* is too long"):
        Sandbox.create()


# ---- embedded: what a host process can enforce ----------------------------------------------------
def test_embedded_limits(monkeypatch, make):
    monkeypatch.setenv("RUNNER_PROVIDER", "embedded")
    sb = make(cpu=(0.5, 1.0), memory=(64, 256))
    code = "import os; print(len(os.sched_getaffinity(0)))"
    assert sb.exec("python3", "-c", code).stdout.read() == "1\n"
    hog = sb.exec("python3", "-c", "bytearray(1024 * 1024 * 1024)")
    assert hog.wait() == 1 and "MemoryError" in hog.stderr.read()
