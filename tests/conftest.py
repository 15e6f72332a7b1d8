"""Shared fixtures.

`provider` runs a test on each provider: embedded always, docker when a daemon answers. In CI
(CI=true) a missing Docker daemon is a failure, not a skip: the Docker tests are mandatory there.

The whole run gets a fresh RUNNER_HOME (named volumes, secrets, the store, sandbox channels), so
tests never see the user's state; its managed store server is stopped and the directory removed
at the end. The path is short because unix socket paths are limited to about 100 bytes.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import sys
import tempfile

import pytest

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def pytest_configure(config):
    _sweep_homes()
    os.environ["RUNNER_HOME"] = tempfile.mkdtemp(prefix=f"rh-{os.getpid()}-", dir="/tmp")


def _sweep_homes() -> None:
    """Homes of test runs that were killed before they could clean up: stop their store, remove them."""
    from runner._context import pid_alive

    for home in pathlib.Path("/tmp").glob("rh-*-*"):
        pid = home.name.split("-")[1]
        if pid.isdigit() and not pid_alive(int(pid)):
            os.environ["RUNNER_HOME"] = str(home)
            _stop_deployed_apps()
            from runner._store import stop_managed_server

            stop_managed_server()
            shutil.rmtree(home, ignore_errors=True)


def _stop_deployed_apps() -> None:
    """Apps a test deployed and did not stop (it failed midway): their daemons must not outlive the run."""
    from runner._deploy import deployed_apps, stop

    for name, state in deployed_apps().items():
        if state["alive"]:
            stop(name)


def pytest_unconfigure(config):
    home = os.environ.get("RUNNER_HOME", "")
    if not os.path.basename(home).startswith("rh-"):
        return
    _stop_deployed_apps()
    from runner._store import stop_managed_server

    stop_managed_server()
    shutil.rmtree(home, ignore_errors=True)


def _docker_ok() -> bool:
    from runner._providers import docker_answers

    return docker_answers()


DOCKER = _docker_ok()


def require_docker() -> None:
    if DOCKER:
        return
    if os.environ.get("CI"):
        pytest.fail("no Docker daemon answers, and Docker tests are mandatory in CI")
    pytest.skip("no Docker daemon answers")


@pytest.fixture(params=["embedded", "docker"])
def provider(request, monkeypatch):
    """The provider name; RUNNER_PROVIDER is set for anything the test starts."""
    if request.param == "docker":
        require_docker()
    monkeypatch.setenv("RUNNER_PROVIDER", request.param)
    return request.param


@pytest.fixture
def docker_provider(monkeypatch):
    require_docker()
    monkeypatch.setenv("RUNNER_PROVIDER", "docker")
    return "docker"


@pytest.fixture(scope="session")
def kube_stack(tmp_path_factory):
    """One whole loopback stack for the kubernetes provider (tests/kube_stack.py), shared by the
    session's tests: the API stand-in, the queue's redis-server, a registry and the outputs file."""
    import shutil

    require_docker()
    for binary in ("redis-server", "/usr/bin/docker-registry"):
        if not shutil.which(binary):
            if os.environ.get("CI"):
                pytest.fail(f"{binary} is missing; .ci/run installs it")
            pytest.skip(f"{binary} is missing")
    from kube_stack import KubeStack

    with KubeStack(tmp_path_factory.mktemp("kube-stack")) as stack:
        yield stack


@pytest.fixture
def make():
    """Sandbox.create that terminates what it made when the test ends, however it ends."""
    from runner import Sandbox
    from runner.exception import ClientClosed

    made = []

    def create(*args, **kwargs):
        kwargs.setdefault("timeout", 120)
        sb = Sandbox.create(*args, **kwargs)
        made.append(sb)
        return sb

    yield create
    for sb in made:
        try:
            sb.terminate()
        except ClientClosed:
            Sandbox.from_id(sb.object_id).terminate()
