"""RUNNER_REGISTRY: images pushed to a registry after a build, found there instead of built again.

A real registry (Debian's `docker-registry`, the CNCF distribution server) runs on loopback for
these tests; nothing here talks to any address but 127.0.0.1. `.ci/run` installs it; elsewhere
the tests skip without it, and in CI (CI=true) its absence is a failure.
"""

from __future__ import annotations

import shutil
import socket

import docker
import docker.api.client
import pytest
import requests

from helpers import serve_registry
from helpers import untag as _untag
import runner
from runner._providers import _docker
from runner.exception import InvalidError, ProviderError


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _http() -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # loopback only: never through a proxy
    return session


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """A registry serving plain HTTP on 127.0.0.1:<free port>, for this module's tests."""
    root = tmp_path_factory.mktemp("registry")
    try:
        with serve_registry(root) as address:
            yield address
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def client():
    c = docker.from_env()
    yield c
    c.close()


def _forget_locally(image: runner.Image) -> None:
    """Remove every tag of `image` and of its steps from this daemon, local and registry-qualified."""
    ids = {f"{_docker.IMAGE_REPO}:{digest[:40]}" for _, digest in image.chain()}
    _untag(lambda tag: tag in ids or any(tag.endswith("/" + i) for i in ids))


def _final_tag(image: runner.Image) -> str:
    return image.chain()[-1][1][:40]


def test_a_run_builds_pushes_and_starts_from_the_registry_reference(registry, docker_provider, client, monkeypatch):
    from apps import registry_app

    _forget_locally(registry_app.image)
    built = []
    real = _docker.DockerProvider._step
    monkeypatch.setattr(
        _docker.DockerProvider, "_step", lambda self, prev, step, *a: built.append(step) or real(self, prev, step, *a)
    )
    monkeypatch.setenv("RUNNER_REGISTRY", registry)
    with registry_app.app.run():
        assert registry_app.read_marker.remote() == registry_app.MARKER
        (found,) = client.api.containers(filters={"label": "org.runner.function=read_marker"})
        config_image = client.api.inspect_container(found["Id"])["Config"]["Image"]
    assert len(built) == len(registry_app.image.steps)
    assert config_image == f"{registry}/runner-image:{_final_tag(registry_app.image)}"
    http = _http()
    assert "runner-image" in http.get(f"http://{registry}/v2/_catalog", timeout=10).json()["repositories"]
    tags = http.get(f"http://{registry}/v2/runner-image/tags/list", timeout=10).json()["tags"]
    assert _final_tag(registry_app.image) in tags


def test_an_image_the_registry_has_is_pulled_and_not_built(registry, docker_provider, client, monkeypatch):
    from apps import registry_app

    monkeypatch.setenv("RUNNER_REGISTRY", registry)
    provider = _docker.DockerProvider()
    try:
        provider.prepare(registry_app.image)  # in the registry now, whatever ran before
    finally:
        provider.close()
    _forget_locally(registry_app.image)
    ref = f"{registry}/runner-image:{_final_tag(registry_app.image)}"
    with pytest.raises(docker.errors.ImageNotFound):
        client.images.get(ref)

    def no_build(*args, **kwargs):
        raise AssertionError("an image the registry has was built")

    monkeypatch.setattr(_docker.DockerProvider, "_step", no_build)
    with registry_app.app.run():
        assert registry_app.read_marker.remote() == registry_app.MARKER
    assert client.images.get(ref)  # pulled
    assert client.images.get(f"runner-image:{_final_tag(registry_app.image)}")  # and tagged for local builds

    def no_pull(*args, **kwargs):
        raise AssertionError("an image on this machine was pulled again")

    monkeypatch.setattr(docker.api.client.APIClient, "pull", no_pull)
    with registry_app.app.run():
        assert registry_app.read_marker.remote() == registry_app.MARKER


def test_a_path_prefix_names_the_repository(registry, docker_provider, monkeypatch):
    from apps import registry_app

    monkeypatch.setenv("RUNNER_REGISTRY", f"{registry}/team")
    provider = _docker.DockerProvider()
    try:
        ref = provider.prepare(registry_app.image)
    finally:
        provider.close()
    assert ref == f"{registry}/team/runner-image:{_final_tag(registry_app.image)}"
    http = _http()
    assert "team/runner-image" in http.get(f"http://{registry}/v2/_catalog", timeout=10).json()["repositories"]
    tags = http.get(f"http://{registry}/v2/team/runner-image/tags/list", timeout=10).json()["tags"]
    assert _final_tag(registry_app.image) in tags


def test_an_unreachable_registry_is_one_clear_error(docker_provider, monkeypatch):
    from apps import registry_app

    address = f"127.0.0.1:{_free_port()}"  # nobody listens there
    monkeypatch.setenv("RUNNER_REGISTRY", address)
    with pytest.raises(ProviderError) as info, registry_app.app.run():
        registry_app.read_marker.remote()
    message = str(info.value)
    assert address in message and "does not answer" in message and "unset RUNNER_REGISTRY" in message
    assert "Connection refused" in message and "HTTPConnectionPool" not in message
    assert info.value.__cause__ is None and info.value.__suppress_context__


@pytest.mark.parametrize("value", ["http://127.0.0.1:5000", "team/images", "127.0.0.1:5000/Team"])
def test_a_malformed_registry_address_is_refused(docker_provider, monkeypatch, value):
    monkeypatch.setenv("RUNNER_REGISTRY", value)
    with pytest.raises(InvalidError, match="RUNNER_REGISTRY"):
        _docker.DockerProvider()
