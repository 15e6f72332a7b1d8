"""The docker provider: images built once and reused, resources enforced, output streamed."""

from __future__ import annotations

import uuid

import docker
import pytest

import runner
from runner._providers import _docker
from runner._resources import parse_gpu
from runner.exception import RemoteError


@pytest.fixture
def client():
    c = docker.from_env()
    yield c
    c.close()


def test_image_steps_apply_and_the_app_runs_in_its_own_containers(docker_provider):
    from apps import dockerish

    with dockerish.app.run():
        info = dockerish.inspect_container.remote()
    assert info["env"] == "from-image"
    assert info["layered"] == "layered"
    assert info["cwd"] == "/root"
    assert info["hostname"] != __import__("socket").gethostname()


def test_an_unchanged_image_starts_without_building(docker_provider, monkeypatch):
    from apps import dockerish

    with dockerish.app.run():
        dockerish.inspect_container.remote()  # built (or found) here

    def no_build(*args, **kwargs):
        raise AssertionError("a cached image was built again")

    monkeypatch.setattr(_docker.DockerProvider, "_step", no_build)
    with dockerish.app.run():
        assert dockerish.inspect_container.remote()["layered"] == "layered"


def test_a_changed_step_rebuilds_from_that_step_on(docker_provider, monkeypatch):
    from apps import dockerish

    with dockerish.app.run():
        dockerish.inspect_container.remote()
    ran = []
    real = _docker.DockerProvider._step
    monkeypatch.setattr(_docker.DockerProvider, "_step", lambda self, prev, step, *a: ran.append(step) or real(self, prev, step, *a))
    step = f"echo {uuid.uuid4().hex} > /more.txt"  # new to this daemon, so not cached
    changed = dockerish.image.run_commands(step)
    assert changed.chain()[:-1] == dockerish.image.chain()
    provider = _docker.DockerProvider()
    try:
        ref = provider.prepare(changed)
        provider.client.images.remove(ref)
    finally:
        provider.close()
    assert [s.args for s in ran] == [(step,)]


def test_cpu_and_memory_limits_reach_the_container(docker_provider, client):
    from apps import dockerish

    with dockerish.app.run():
        host = dockerish.limited.remote()
        (found,) = [c for c in client.api.containers(filters={"label": "org.runner.function=limited"}) if c["Id"].startswith(host)]
        cfg = client.api.inspect_container(found["Id"])["HostConfig"]
    assert cfg["NanoCpus"] == 1_000_000_000
    assert cfg["CpuShares"] == 512
    assert cfg["Memory"] == 128 * 1024 * 1024
    assert cfg["MemoryReservation"] == 64 * 1024 * 1024


def test_memory_limit_is_enforced(docker_provider):
    from apps import dockerish

    with dockerish.app.run():
        assert dockerish.hog.remote(8) == 8
        with pytest.raises(RemoteError, match=r"exit code 137.*input in-"):
            dockerish.hog.remote(400)


def test_container_stdout_streams_to_the_client(docker_provider, capfd):
    from apps import dockerish

    with dockerish.app.run():
        assert dockerish.shout.remote("hey") == "HEY"
    out = capfd.readouterr().out
    assert "stdout-from-container hey" in out


def test_gpu_request_becomes_a_device_request(monkeypatch):
    """No GPU here: check what would be asked of Docker, with the daemon call captured."""
    provider = _docker.DockerProvider.__new__(_docker.DockerProvider)
    captured = {}

    class FakeImages:
        def get(self, ref):
            return type("I", (), {"attrs": {"Config": {"Env": [], "WorkingDir": ""}}})()

    class FakeContainers:
        def run(self, image, **kwargs):
            captured.update(kwargs)
            raise RuntimeError("stop here")

    provider.client = type("C", (), {"images": FakeImages(), "containers": FakeContainers()})()
    provider.owner = "test"
    req = _docker.ContainerRequest(
        name="train", image=None, env={}, cpu=None, memory=None, gpu=parse_gpu("A100-80GB:2"), token="t",
        socket_dir="/tmp", socket_name="agent.sock", app_root=None, session="s",
    )
    with pytest.raises(runner.exception.ProviderError, match="stop here"):
        provider.start(req, "img")
    (request,) = captured["device_requests"]
    assert request["Count"] == 2 and request["Capabilities"] == [["gpu"]]


def test_apt_and_pip_steps_install_packages(docker_provider):
    """Real package installs through the image builder (PyPI over the host's CA, Debian's mirror)."""
    from apps import dockerish

    with dockerish.packaged_app.run():
        assert dockerish.tools.remote() == {"six": "1.16.0", "jq": "3"}


def test_force_build_rebuilds_from_the_forced_step(docker_provider, monkeypatch):
    from apps import dockerish

    with dockerish.app.run():
        dockerish.inspect_container.remote()  # everything cached from here on
    ran = []
    real = _docker.DockerProvider._step
    monkeypatch.setattr(_docker.DockerProvider, "_step", lambda self, prev, step, *a: ran.append(step.kind) or real(self, prev, step, *a))
    provider = _docker.DockerProvider()
    try:
        provider.prepare(dockerish.image)
        assert ran == []
        forced = runner.Image.debian_slim().env({"STEP_ENV": "from-image"}).run_commands(
            "echo layered > /layered.txt", force_build=True)
        assert forced.object_id == dockerish.image.object_id  # forcing does not change what it is
        provider.prepare(forced)
        assert ran == ["run"]
        ran.clear()
        monkeypatch.setenv("RUNNER_FORCE_BUILD", "1")
        provider.prepare(dockerish.image)
        assert ran == ["env", "run"]
    finally:
        provider.close()


def test_built_images_carry_no_owner_label(docker_provider):
    from apps import dockerish

    provider = _docker.DockerProvider()
    try:
        labels = provider.client.images.get(provider.prepare(dockerish.image.env({"RELABEL": uuid.uuid4().hex}))).attrs["Config"]["Labels"]
    finally:
        provider.close()
    assert not labels.get("org.runner.owner") and labels["org.runner.build"].startswith("runner-image:")
