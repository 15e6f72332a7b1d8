"""The README holds: exactly two set-up commands and one test command, and the example they
run prints what it should, on each provider."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _blocks(section: str) -> list[str]:
    text = (ROOT / "README.md").read_text()
    body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return [line for block in re.findall(r"```\n(.*?)```", body, re.S) for line in block.strip().splitlines()]


def test_readme_has_two_setup_commands_and_one_test_command():
    setup = _blocks("Set up")
    assert len(setup) == 2
    assert setup[0].startswith("pip install")
    assert setup[1] == "runner run examples/hello_world.py"
    assert _blocks("Test") == ["python -m pytest"]


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert _blocks("Test")[0] in ci.splitlines()
    assert _blocks("Set up")[0].replace("pip install", "python -m pip install -q") in ci


def test_hello_world_runs_as_the_readme_says(provider):
    command = _blocks("Set up")[1].split()
    assert command[0] == "runner"
    proc = subprocess.run(
        [sys.executable, "-m", "runner", *command[1:]], cwd=ROOT, capture_output=True, text=True, timeout=300,
        env=dict(os.environ, RUNNER_PROVIDER=provider),
    )
    assert proc.returncode == 0, proc.stderr
    assert "local: 1000000" in proc.stdout
    assert "remote: 1000000" in proc.stdout
    assert "sum of squares: 2646700" in proc.stdout
    assert "hello 0" in proc.stdout and "world 1" in proc.stderr
