"""Sandboxes on the kubernetes provider, through the public API, against the API stand-in
(tests/kube_stack.py: pods run as Docker containers, exec over the v5/v4 WebSocket protocols).
What the supervisor does (exec semantics, files, timeouts of execs) is the same code as on docker
and is tested in tests/test_sandbox.py; these tests cover what the pod changes: the manifests it
is made of, the one pods/exec stream everything goes over, how its end is read back, and that
nothing is left in the cluster. One stack for the module; every wait is bounded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

import runner
from runner.exception import ConflictError, ExecutionError, InvalidError, NotFoundError, SandboxTimeoutError

Sandbox = runner.Sandbox
pytestmark = [pytest.mark.docker, pytest.mark.timeout(90), pytest.mark.usefixtures("kube")]


@pytest.fixture
def kube(kube_stack, monkeypatch):
    """The stack's Kube (runner._providers._kube_api), with the environment selecting it."""
    for k, v in kube_stack.env.items():
        monkeypatch.setenv(k, v)
    from runner._providers._kubernetes import cluster

    return cluster().kube


def meta(sb) -> dict:
    with open(os.path.join(os.environ["RUNNER_HOME"], "sb", sb.object_id, "meta.json")) as f:
        return json.load(f)


def eventually(check, seconds=20.0, why=""):
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, why
        time.sleep(0.05)


def containers_of(kube_stack, pod: str) -> list:
    return [c for c in kube_stack.kube.containers() if c.labels.get("runner.kube-standin.pod") == f"runner/{pod}"]


# ---- the acceptance flow, over one pods/exec stream -----------------------------------------------
def test_exec_stdin_streaming_files_and_terminate(kube, make, kube_stack):
    sb = make()
    m = meta(sb)
    assert m["provider"] == "kubernetes" and m["namespace"] == kube.namespace and m["pod"] == sb.object_id
    assert kube.get("Pod", m["pod"])["status"]["phase"] == "Running"

    p = sb.exec("sh", "-c", "echo first; read x; echo got $x")
    lines = iter(p.stdout)
    assert next(lines) == "first\n"  # streamed: read while the command still waits for its stdin
    assert p.poll() is None
    p.stdin.write(b"5\n")
    p.stdin.write_eof()
    p.stdin.drain()
    assert list(lines) == ["got 5\n"] and p.wait() == 0

    p = sb.exec("python3", "-c", "import sys; print(sum(int(line) for line in sys.stdin))")
    p.stdin.write("1\n2\n3\n")
    p.stdin.write_eof()
    p.stdin.drain()
    assert p.wait() == 0 and p.stdout.read().strip() == "6"
    bad = sb.exec("sh", "-c", "echo oops >&2; exit 3")
    assert bad.wait() == 3 and bad.stderr.read() == "oops\n" and bad.stdout.read() == ""
    raw = sb.exec("python3", "-c", "import sys; sys.stdout.buffer.write(bytes(range(256)))", text=False)
    assert raw.stdout.read() == bytes(range(256))  # binary, byte for byte

    with sb.open("/tmp/note.txt", "w") as f:
        f.write("written from client")
    assert sb.exec("cat", "/tmp/note.txt").stdout.read() == "written from client"
    with sb.open("/tmp/blob", "wb") as f:
        f.write(bytes(range(256)) * 512)
    with sb.open("/tmp/blob", "rb") as f:
        assert f.read() == bytes(range(256)) * 512
    assert sb.exec("pwd", workdir="/tmp").stdout.read() == "/tmp\n"

    p = sb.exec("sleep", "60")
    sb.terminate()
    assert sb.returncode == 137 and p.wait() == 137
    with pytest.raises(ConflictError, match="has finished"):
        sb.exec("true")


def test_main_command_end_and_output_outlive_the_pod(kube, make):
    from test_sandbox import stdin_then_exit_7

    sb = stdin_then_exit_7(make)
    m = meta(sb)
    assert all(kube.get(kind, name) is None for kind, name in m["objects"])  # collected: nothing left
    again = Sandbox.from_id(sb.object_id)  # read back from the pod's log into the control directory
    assert again.returncode == 7 and again.stdout.read() == "ready\ngo\n" and again.stderr.read() == "err\n"


def test_from_id_in_another_process_and_outliving_its_creator(kube, make):
    sb = make()
    child = textwrap.dedent(f"""
        import runner
        sb = runner.Sandbox.from_id({sb.object_id!r})
        print(sb.exec("sh", "-c", "echo from child > /tmp/child.txt; cat /tmp/child.txt").stdout.read(), end="")
        print(runner.Sandbox.create(timeout=60).object_id)
    """)
    out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    said, made_id = out.stdout.splitlines()
    assert said == "from child"
    assert sb.exec("cat", "/tmp/child.txt").stdout.read() == "from child\n"
    orphan = Sandbox.from_id(made_id)  # its creator has exited; its pod runs on, as on Modal
    try:
        assert orphan.poll() is None
        assert orphan.exec("echo", "still running").stdout.read() == "still running\n"
        assert made_id in {s.object_id for s in Sandbox.list()}
    finally:
        orphan.terminate()
    assert kube.get("Pod", made_id) is None


def test_timeout_ends_the_pod(kube, make):
    sb = make(timeout=3)
    pod = kube.get("Pod", meta(sb)["pod"])
    assert pod["spec"]["activeDeadlineSeconds"] == 3
    with pytest.raises(SandboxTimeoutError):
        sb.wait()
    assert sb.returncode == 124
    assert kube.get("Pod", sb.object_id) is None  # collected before wait() returned
    with pytest.raises(ConflictError, match="return code 124"):
        sb.exec("true")


def test_block_network_leaves_no_route_out(kube, make):
    probe = textwrap.dedent("""
        import socket
        print(sorted(name for _, name in socket.if_nameindex()))
        print(sum(not line.startswith("Iface") for line in open("/proc/net/route")), "routes")
    """)
    sb = make(block_network=True)
    policy = kube.get("NetworkPolicy", meta(sb)["pod"])
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"] and "egress" not in policy["spec"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= kube.get("Pod", sb.object_id)["metadata"]["labels"].items()
    assert sb.exec("python3", "-c", probe).stdout.read().splitlines() == ["['lo']", "0 routes"]
    open_sb = make()  # without it, an interface out (nothing is sent anywhere to show it)
    assert kube.get("NetworkPolicy", open_sb.object_id) is None
    names = open_sb.exec("python3", "-c", "import socket; print(*(n for _, n in socket.if_nameindex()))").stdout.read()
    assert "eth0" in names.split()


def test_cpu_and_memory_are_pod_limits(kube, make):
    sb = make(cpu=(0.5, 1.0), memory=(64, 128))
    resources = kube.get("Pod", sb.object_id)["spec"]["containers"][0]["resources"]
    assert resources == {"requests": {"cpu": "500m", "memory": "64Mi"}, "limits": {"cpu": "1", "memory": "128Mi"}}
    read = textwrap.dedent("""
        def first(*paths):
            for p in paths:
                try:
                    return open(p).read().split()
                except OSError:
                    pass
        mem = first("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")
        cpu = first("/sys/fs/cgroup/cpu.max", "/sys/fs/cgroup/cpu/cpu.cfs_quota_us")
        period = cpu[1] if len(cpu) > 1 else first("/sys/fs/cgroup/cpu/cpu.cfs_period_us")[0]
        print(int(mem[0]), int(cpu[0]) / int(period))
    """)
    assert sb.exec("python3", "-c", read).stdout.read().split() == [str(128 * 1024 * 1024), "1.0"]
    hog = sb.exec("python3", "-c", "b = bytearray(400 * 1024 * 1024); b[::4096] = b'x' * len(b[::4096]); print('no')")
    assert hog.wait() == 137 and hog.stdout.read() == ""  # killed by the out-of-memory killer
    default = make()
    assert kube.get("Pod", default.object_id)["spec"]["containers"][0]["resources"] == {
        "requests": {"cpu": "250m", "memory": "256Mi"}}


def test_secrets_are_secret_objects_not_in_the_pod_spec(kube, make):
    sb = make(env={"SB_A": "plain"}, secrets=[runner.Secret.from_dict({"SB_SECRET": "s3cr3t-value"})])
    assert sb.exec("sh", "-c", "echo $SB_A $SB_SECRET").stdout.read() == "plain s3cr3t-value\n"
    pod = kube.get("Pod", sb.object_id)
    assert "s3cr3t-value" not in json.dumps(pod)
    refs = [ref["secretRef"]["name"] for ref in pod["spec"]["containers"][0]["envFrom"]]
    assert [["Secret", name] for name in refs] == [o for o in meta(sb)["objects"] if o[0] == "Secret"]
    assert kube.get("Secret", refs[0])["data"] == {"SB_SECRET": "czNjcjN0LXZhbHVl"}
    ctl = os.path.join(os.environ["RUNNER_HOME"], "sb", sb.object_id)
    for dirpath, _, files in os.walk(ctl):  # nor on this machine's disk
        for name in files:
            with open(os.path.join(dirpath, name), "rb") as f:
                assert b"s3cr3t-value" not in f.read(), name


def test_terminate_and_an_end_leave_nothing_behind(kube, make, kube_stack):
    sb = make(block_network=True, secrets=[runner.Secret.from_dict({"K": "v"})])
    objects = meta(sb)["objects"]
    assert sorted(kind for kind, _ in objects) == ["NetworkPolicy", "Pod", "Secret"]
    assert all(kube.get(kind, name) is not None for kind, name in objects)
    assert containers_of(kube_stack, sb.object_id)
    sb.terminate()
    assert [o for o in objects if kube.get(*o) is not None] == []
    assert containers_of(kube_stack, sb.object_id) == []
    assert not os.path.exists(os.path.join(os.environ["RUNNER_HOME"], "sb", sb.object_id))
    with pytest.raises(NotFoundError):
        Sandbox.from_id(sb.object_id)

    done = make("echo", "done", secrets=[runner.Secret.from_dict({"K": "v"})])
    objects = meta(done)["objects"]
    done.wait()
    assert done.returncode == 0
    assert [o for o in objects if kube.get(*o) is not None] == []
    eventually(lambda: not containers_of(kube_stack, done.object_id), why="the pod's containers are still there")
    assert Sandbox.from_id(done.object_id).stdout.read() == "done\n"  # its end is kept a while, to be read


def test_bad_input_is_one_clear_line(kube):
    for kwargs, match in [({"gpu": "T4"}, "gpu T4 is not offered by this stack's cluster"),
                          ({"unencrypted_ports": [8000]}, "tunnels .* not supported on the kubernetes provider")]:
        with pytest.raises(InvalidError, match=match) as info:
            Sandbox.create(timeout=30, **kwargs)
        assert "\n" not in str(info.value)
    no_python = runner.Image.debian_slim().run_commands("rm -f /usr/local/bin/python3* /usr/bin/python3*")
    with pytest.raises(ExecutionError, match="could not start.*the image needs python3") as info:
        Sandbox.create(image=no_python, timeout=30)
    assert "\n" not in str(info.value)
    assert kube.list("Pod", {"runner/kind": "sandbox"}) == []


def test_app_run_owns_and_ends_its_sandboxes(kube):
    app = runner.App("sandbox-kube-app-test")
    with app.run():
        sb = Sandbox.create(app=app, timeout=60)
        refs = kube.get("Pod", sb.object_id)["metadata"]["ownerReferences"]
        assert [r["kind"] for r in refs] == ["ConfigMap"]  # the run's owner: gone with the run, even if we die
        assert [s.object_id for s in Sandbox.list(app_id=app.app_id)] == [sb.object_id]
        kept = Sandbox.create(timeout=60)  # no app: lives on after the run
        assert "ownerReferences" not in kube.get("Pod", kept.object_id)["metadata"]
    try:
        assert sb.poll() == 137 and kube.get("Pod", sb.object_id) is None
        assert kept.poll() is None
    finally:
        kept.terminate()


def test_a_pod_past_its_active_deadline_timed_out(kube, make, monkeypatch):
    """The kubelet may reach activeDeadlineSeconds before the supervisor reaches its own deadline
    (here the supervisor is told 30 s more): the pod's DeadlineExceeded still reads as a timeout."""
    import runner._k8s

    render = runner._k8s.sandbox_manifests

    def later(*args, command, **kw):
        spec = json.loads(command[-1])
        spec["timeout"] += 30
        spec["deadline"] += 30
        return render(*args, command=[*command[:-1], json.dumps(spec)], **kw)

    monkeypatch.setattr(runner._k8s, "sandbox_manifests", later)
    sb = make(timeout=2)
    with pytest.raises(SandboxTimeoutError):
        sb.wait()
    assert sb.returncode == 124 and Sandbox.from_id(sb.object_id).returncode == 124
