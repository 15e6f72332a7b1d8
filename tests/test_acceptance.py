"""The shared acceptance apps tagged `core` pass under `runner run`, on each provider.

They live beside this repository in ../shared/acceptance (as in CI); elsewhere they are skipped.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

CHECK = pathlib.Path(__file__).resolve().parents[2] / "shared" / "acceptance" / "check.py"


@pytest.mark.skipif(not CHECK.exists(), reason="../shared/acceptance is not beside this checkout")
def test_core_acceptance(provider):
    bindir = pathlib.Path(sys.executable).parent
    env = dict(os.environ, PATH=f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    proc = subprocess.run(
        [sys.executable, str(CHECK), "--tag", "core", "--provider", provider, "--timeout", "180"],
        capture_output=True, text=True, timeout=900, env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "7 passed, 0 failed" in proc.stdout, proc.stdout


@pytest.mark.skipif(not CHECK.exists(), reason="../shared/acceptance is not beside this checkout")
def test_images_acceptance(docker_provider):
    bindir = pathlib.Path(sys.executable).parent
    env = dict(os.environ, PATH=f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    proc = subprocess.run(
        [sys.executable, str(CHECK), "--tag", "images", "--provider", "docker", "--timeout", "600"],
        capture_output=True, text=True, timeout=900, env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 passed, 0 failed" in proc.stdout, proc.stdout
