"""Shared fixtures.

`provider` runs a test on each provider: embedded always, docker when a daemon answers. In CI
(CI=true) a missing Docker daemon is a failure, not a skip: the Docker tests are mandatory there.
"""

from __future__ import annotations

import os
import sys
import pathlib

import pytest

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


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
