"""Golden files: rendered objects compared, as YAML, with a file under tests/golden/. One helper for
the infra programs' manifests and the kubernetes provider's."""

from __future__ import annotations

import difflib
import os
import pathlib
import re
from typing import Any

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent


def assert_golden(directory: pathlib.Path, name: str, obj: Any) -> None:
    """Compare `obj` as YAML (a list: one document each) with `directory/<name>.yaml`;
    RUNNER_UPDATE_GOLDEN=1 rewrites the file instead (review the diff before committing it)."""
    path = directory / f"{name}.yaml"
    docs = obj if isinstance(obj, list) else [obj]
    text = yaml.safe_dump_all(docs, sort_keys=True, default_flow_style=False, width=100)
    assert not re.search(r"&id\d+", text), f"{name}: rendered objects share sub-dicts (YAML anchors)"
    if os.environ.get("RUNNER_UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return
    rel = path.relative_to(ROOT)
    assert path.exists(), f"no golden file {rel}; run with RUNNER_UPDATE_GOLDEN=1 to write it"
    expected = path.read_text()
    diff = "".join(difflib.unified_diff(expected.splitlines(True), text.splitlines(True), str(rel), "actual"))
    assert text == expected, f"{name} differs from {rel} (RUNNER_UPDATE_GOLDEN=1 rewrites it after review):\n{diff}"
