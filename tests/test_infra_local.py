"""infra/local under Pulumi mocks: loopback-only bindings, the queue password kept secret, the
contract, config defaults and errors; plus the generated Redis config and secret commands, for real."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pulumi
import pytest
from helpers import stop_process
from infra_harness import ROOT, assert_golden, run

import infra.local as local
from infra.local import stack
from runner._stack import OUTPUT_KEYS, load_outputs

CONTAINER = "docker:index/container:Container"
NETWORK = "docker:index/network:Network"
IMAGE = "docker:index/remoteImage:RemoteImage"
COMMAND = "command:local:Command"
PASSWORD = "random:index/randomPassword:RandomPassword"
COMPONENT = "runner:local:LocalRunner"
DATA = "/srv/runner-local"
HOOKS = {IMAGE: lambda a: {"imageId": f"sha256:mock-{a.inputs['name']}", "repoDigest": a.inputs["name"]}}


def _run(config=None, secret_config=None):
    return run(local.program, config={"runner:cloud": "local", **(config or {})}, secret_config=secret_config,
               hooks=HOOKS)


@pytest.fixture(scope="module")
def rec():
    return _run({"runner:dataDir": DATA})


def _container(rec, name):
    return rec.one(CONTAINER, f"runner-local-{name}")


def _conf(container) -> str:
    (upload,) = container.inputs["uploads"]
    assert upload["file"] == "/etc/runner-queue.conf"
    return upload["content"]


# --- what is reachable, and from where ------------------------------------------------------


def test_every_published_port_is_on_loopback_and_the_queue_has_none(rec):
    containers = rec.of_type(CONTAINER)
    assert {c.name for c in containers} == {"runner-local-registry", "runner-local-queue"}
    for c in containers:
        assert not c.inputs.get("publishAllPorts"), c.name
        assert c.inputs.get("networkMode") in (None, "bridge"), c.name  # never the host's network
        for port in c.inputs.get("ports", []):
            assert port["ip"] == "127.0.0.1", (c.name, port)
    registry = _container(rec, "registry")
    assert registry.inputs["ports"] == [{"internal": 5000, "external": 5000, "ip": "127.0.0.1"}]
    queue = _container(rec, "queue")
    assert not queue.inputs.get("ports")
    assert "port 0\n" in _conf(queue)  # no TCP listener at all: the socket only
    assert "unixsocket /run/runner-queue/redis.sock\n" in _conf(queue)
    # A port published without an address on this network would still land on loopback.
    network = rec.one(NETWORK)
    assert network.inputs["options"] == {"com.docker.network.bridge.host_binding_ipv4": "127.0.0.1"}
    assert all(c.inputs["networksAdvanced"][0]["name"] == "runner-local" for c in containers)


def test_queue_port_when_asked_is_loopback_too():
    rec = _run({"runner:dataDir": DATA, "runner:queuePort": 6390})
    queue = _container(rec, "queue")
    assert queue.inputs["ports"] == [{"internal": 6379, "external": 6390, "ip": "127.0.0.1"}]
    assert "port 6379\n" in _conf(queue)
    assert rec.exports["queue_endpoint"].startswith("unix://")  # containers cannot reach host loopback


def test_containers_are_unprivileged_and_keep_data_in_the_data_dir(rec):
    for c in rec.of_type(CONTAINER):
        assert c.inputs["capabilities"] == {"drops": ["ALL"]}
        assert c.inputs["securityOpts"] == ["no-new-privileges:true"]
        assert not c.inputs.get("privileged")
        assert c.inputs["user"] == f"{os.getuid()}:{os.getgid()}"
        assert c.inputs["restart"] == "unless-stopped" and c.inputs["wait"] is True
        for mount in c.inputs["mounts"]:
            assert mount["type"] == "bind" and mount["source"].startswith(DATA + "/"), mount
    mounts = {m["target"]: m["source"] for m in _container(rec, "queue").inputs["mounts"]}
    # The socket directory (mounted into function containers) does not hold Redis' data files.
    assert mounts == {"/data": f"{DATA}/queue-data", "/run/runner-queue": f"{DATA}/queue-socket"}
    assert _container(rec, "queue").inputs["entrypoints"] == ["redis-server"]
    dirs = rec.one(COMMAND, "runner-local-data-dirs").inputs["create"]
    for d in ("registry", "queue-data", "queue-socket", "volumes"):
        assert f"{DATA}/{d}" in dirs
    assert "chmod 700" in dirs


def test_images_are_pinned_and_kept_on_destroy(rec):
    images = {i.inputs["name"]: i for i in rec.of_type(IMAGE)}
    assert set(images) == {stack.REGISTRY_IMAGE, local.stack.REDIS_IMAGE}
    for name, image in images.items():
        assert ":" in name and not name.endswith((":latest", ":2")), name
        assert image.inputs["keepLocally"] is True
    assert _container(rec, "registry").inputs["image"] == f"sha256:mock-{stack.REGISTRY_IMAGE}"


# --- the queue password ---------------------------------------------------------------------


def test_queue_password_is_random_secret_and_never_in_env_or_argv(rec):
    password = "mock-password-runner-local-queue-password"
    assert rec.one(PASSWORD).inputs["length"] >= 32
    queue = _container(rec, "queue")
    assert queue.is_secret("uploads.0.content")
    assert f"requirepass {password}\n" in _conf(queue)
    for c in rec.of_type(CONTAINER):
        assert password not in json.dumps(c.inputs.get("envs", [])) + json.dumps(c.inputs.get("command", []))
    secret = rec.one(COMMAND, "runner-local-queue-secret")
    assert secret.is_secret("stdin") and secret.inputs["stdin"] == password
    assert password not in secret.inputs["create"] and password not in secret.inputs["delete"]
    assert secret.inputs["create"].endswith(" runner-queue-auth")
    assert secret.inputs["environment"] == {"RUNNER_HOME": stack.runner_home()}


def test_configured_password_replaces_the_random_one():
    rec = _run({"runner:dataDir": DATA}, secret_config={"runner:queuePassword": "configured-pw"})
    assert not rec.of_type(PASSWORD)
    assert "requirepass configured-pw\n" in _conf(_container(rec, "queue"))
    assert rec.one(COMMAND, "runner-local-queue-secret").inputs["stdin"] == "configured-pw"


# --- the contract ---------------------------------------------------------------------------


def test_contract_outputs(rec):
    assert set(rec.exports) == set(OUTPUT_KEYS)
    assert rec.exports == {
        "cloud": "local", "kubeconfig": "", "registry_url": "127.0.0.1:5000",
        "bucket_url": f"file://{DATA}/volumes", "namespace": "runner", "service_account": "runner",
        "pod_labels": {}, "queue_endpoint": f"unix://{DATA}/queue-socket/redis.sock?db=0",
        "queue_secret_name": "runner-queue-auth", "gpu_types": {}, "web_domain": "", "web_endpoint": ""}
    assert rec.is_secret("kubeconfig")
    assert load_outputs(rec.exports).cloud == "local"


def test_children_are_parented_to_the_component_and_there_is_no_kubernetes(rec):
    component = rec.one(COMPONENT)
    assert component.parent_type == "pulumi:pulumi:Stack"
    others = [r for r in rec.resources if r is not component]
    assert others and all(r.parent == component.urn for r in others), [r.name for r in others]
    assert rec.k8s_manifests() == []


def test_the_program_runs_without_pulumi_kubernetes_installed(tmp_path):
    """A local-only user installs no Kubernetes SDK: the program and its shared parts never import it."""
    script = ("import sys; sys.modules['pulumi_kubernetes'] = None\n"  # `import pulumi_kubernetes` now fails
              "sys.path[:0] = [sys.argv[1], sys.argv[1] + '/tests']\n"
              "import infra_harness, infra.local\n"
              "rec = infra_harness.run(infra.local.program, config={'runner:cloud': 'local', "
              "'runner:dataDir': sys.argv[2]}, hooks={'docker:index/remoteImage:RemoteImage': "
              "lambda a: {'imageId': 'sha256:x'}})\n"
              "assert rec.exports['cloud'] == 'local'\n"
              "assert not [m for m, v in sys.modules.items() if m.startswith('pulumi_kubernetes') and v]\n")
    done = subprocess.run([sys.executable, "-c", script, str(ROOT), str(tmp_path)], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]


def test_golden(rec):
    user = f"{os.getuid()}:{os.getgid()}"

    def normal(value):
        text = json.dumps(value, sort_keys=True).replace(user, "UID:GID")
        return json.loads(text.replace(json.dumps(stack.runner_home())[1:-1], "RUNNER_HOME")
                          .replace(json.dumps(stack.sys.executable)[1:-1], "PYTHON"))

    docs = sorted(({"type": r.type, "name": r.name, "inputs": normal(r.inputs)}
                   for r in rec.resources if r.custom), key=lambda d: (d["type"], d["name"]))
    assert_golden("local-resources", docs)


# --- config ---------------------------------------------------------------------------------


def test_defaults_follow_runner_home(tmp_path, monkeypatch):
    monkeypatch.setenv("RUNNER_HOME", str(tmp_path))
    rec = _run()
    assert rec.exports["bucket_url"] == f"file://{tmp_path}/local-stack/volumes"
    assert rec.exports["registry_url"] == "127.0.0.1:5000"
    secret = rec.one(COMMAND, "runner-local-queue-secret")
    assert secret.inputs["environment"] == {"RUNNER_HOME": str(tmp_path)}
    args = local.LocalRunnerArgs()
    assert (args.registry_port, args.queue_port, args.queue_memory_mb) == (5000, None, 1024)
    assert "maxmemory 858993459\n" in _conf(_container(rec, "queue"))  # 80% of 1024 MB


@pytest.mark.parametrize("key,value,expect", [
    ("registryPort", "five", "runner:registryPort is 'five'; set a port number from 1 to 65535"),
    ("registryPort", "70000", "runner:registryPort is '70000'"),
    ("queuePort", "5000", "runner:queuePort is 5000, the registry's port"),
    ("dataDir", "relative/dir", "runner:dataDir is 'relative/dir'; set an absolute path"),
    ("queueMemoryMb", "1G", "runner:queueMemoryMb is '1G'; set megabytes"),
    ("registryImage", "registry 2", "runner:registryImage is 'registry 2'"),
])
def test_bad_config_is_one_clear_line(key, value, expect):
    with pytest.raises(pulumi.RunError) as e:
        _run({f"runner:{key}": value})
    assert expect in str(e.value) and "\n" not in str(e.value)


# --- for real: the commands and the Redis config the program generates ----------------------


def _sh(cmd, stdin, env):
    return subprocess.run(["/bin/sh", "-c", cmd], input=stdin, env={**os.environ, **env}, capture_output=True,
                          text=True, timeout=60)


def test_secret_commands_write_and_delete_runners_named_secret(rec, tmp_path):
    secret = rec.one(COMMAND, "runner-local-queue-secret").inputs
    env = {"RUNNER_HOME": str(tmp_path)}
    done = _sh(secret["create"], "s3cret pw", env)
    assert done.returncode == 0, done.stderr
    path = tmp_path / "secrets" / "runner-queue-auth.json"
    assert json.loads(path.read_text()) == {"password": "s3cret pw"}
    assert path.stat().st_mode & 0o077 == 0  # owner-only, as `runner secret create` makes it
    assert _sh(secret["create"], "rotated", env).returncode == 0  # an update replaces it
    assert json.loads(path.read_text()) == {"password": "rotated"}
    for _ in range(2):  # deleting twice (a destroy after a manual delete) is fine
        done = _sh(secret["delete"], "", env)
        assert done.returncode == 0, done.stderr
    assert not path.exists()


def test_dirs_command_makes_owner_only_directories(tmp_path):
    rec = _run({"runner:dataDir": str(tmp_path / "data dir")})
    done = _sh(rec.one(COMMAND, "runner-local-data-dirs").inputs["create"], "", {})
    assert done.returncode == 0, done.stderr
    for d in ("", "registry", "queue-data", "queue-socket", "volumes"):
        assert (tmp_path / "data dir" / d).stat().st_mode & 0o777 == 0o700, d


@pytest.mark.skipif(shutil.which("redis-server") is None and not os.environ.get("CI"), reason="no redis-server")
def test_generated_redis_config_requires_the_password_on_the_socket(tmp_path):
    import redis

    sock_dir, data = tmp_path / "sock", tmp_path / "data"
    sock_dir.mkdir()
    data.mkdir()
    conf = stack.queue_config(local.LocalRunnerArgs(data_dir=str(tmp_path)), "pw-123")
    conf = conf.replace("/run/runner-queue", str(sock_dir)).replace("dir /data", f"dir {data}")
    (tmp_path / "redis.conf").write_text(conf)
    server = subprocess.Popen(["redis-server", str(tmp_path / "redis.conf")], stdout=subprocess.DEVNULL)
    try:
        sock = sock_dir / "redis.sock"
        deadline = time.monotonic() + 10
        while not sock.exists():
            assert server.poll() is None and time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.02)
        url = f"unix://{sock}?db=0"
        with pytest.raises(redis.AuthenticationError):
            redis.Redis.from_url(url).ping()
        client = redis.Redis.from_url(url, password="pw-123")
        assert client.ping() and client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        assert client.config_get("port") == {"port": "0"}
    finally:
        stop_process(server)
