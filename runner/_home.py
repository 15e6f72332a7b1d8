"""Where runner keeps state on the host: named secrets, volumes, the store, sandbox channels.

One root, `RUNNER_HOME` (default `~/.runner`), outside any project, so nothing of it is ever
committed or copied into an image. Every directory is created owner-only (0700), because secret
values and store sockets live under it.
"""

from __future__ import annotations

import os
import pathlib
import re
from typing import Any

from .exception import InvalidError

HOME_ENV = "RUNNER_HOME"
_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$")


def home() -> pathlib.Path:
    """The state root, created owner-only if missing."""
    root = pathlib.Path(os.environ.get(HOME_ENV) or pathlib.Path.home() / ".runner").absolute()
    if not root.is_dir():
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
    return root


def subdir(*parts: str) -> pathlib.Path:
    """A directory under the state root, created owner-only if missing."""
    path = home()
    for part in parts:
        path = path / part
        if not path.is_dir():
            path.mkdir(mode=0o700, exist_ok=True)
            os.chmod(path, 0o700)  # mkdir's mode is masked by the umask
    return path


def check_name(name: Any, kind: str) -> str:
    """A name for a stored object (volume, secret, dict, queue): also a safe file name."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidError(
            f"invalid {kind} name {name!r}: use 1 to 64 letters, digits, '-', '_' or '.', not starting with '.'"
        )
    return name
