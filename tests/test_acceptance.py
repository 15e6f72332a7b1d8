"""The shared acceptance apps (core, images, storage, sandbox, web) pass, on the providers they name:
embedded and docker, and kubernetes against the API stand-in (tests/kube_stack.py).

They live beside this repository in ../shared/acceptance (as in CI); elsewhere they are skipped.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

CHECK = pathlib.Path(__file__).resolve().parents[2] / "shared" / "acceptance" / "check.py"
needs_check = pytest.mark.skipif(not CHECK.exists(), reason="../shared/acceptance is not beside this checkout")


def check(tag: str, provider: str, passed: int, env: dict | None = None) -> None:
    bindir = pathlib.Path(sys.executable).parent
    env = dict(os.environ, **(env or {}), PATH=f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    proc = subprocess.run(
        [sys.executable, str(CHECK), "--tag", tag, "--provider", provider, "--timeout", "600"],
        capture_output=True, text=True, timeout=900, env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"{passed} passed, 0 failed" in proc.stdout, proc.stdout


@needs_check
def test_core_acceptance(provider):
    check("core", provider, 7)


@needs_check
def test_images_acceptance(docker_provider):
    check("images", "docker", 1)


@needs_check
def test_storage_acceptance(provider):
    check("storage", provider, 1)


@needs_check
def test_sandbox_acceptance(docker_provider):
    check("sandbox", "docker", 1)


@needs_check
def test_web_acceptance(provider):
    check("web", provider, 1)


@needs_check
@pytest.mark.parametrize("tag,passed", [("core", 7), ("images", 1), ("storage", 1), ("sandbox", 1), ("web", 1)])
def test_acceptance_on_kubernetes(kube_stack, tag, passed):
    """The same apps, unchanged, on the kubernetes provider against the API stand-in."""
    check(tag, "kubernetes", passed, env=kube_stack.env)
