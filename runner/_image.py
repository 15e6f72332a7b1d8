"""Image definitions: a base and a chain of steps, each step a new immutable Image.

An Image only describes; a provider builds it. Every step has a content key (its arguments and,
for files it copies, a digest of their bytes), and an image's id chains the keys of its steps,
so an unchanged image is found again without building, and a changed step rebuilds from there.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import pathlib
import shlex
import sys
from typing import Any, Iterable, Sequence

from .exception import InvalidError, NotFoundError

SUPPORTED_PYTHON = ("3.9", "3.10", "3.11", "3.12", "3.13")


def local_python() -> str:
    return f"{sys.version_info[0]}.{sys.version_info[1]}"


@dataclasses.dataclass(frozen=True)
class Step:
    kind: str  # "run" | "env" | "workdir" | "copy"
    args: tuple
    content: str = ""  # digest of copied bytes, part of the key

    def key(self) -> str:
        return json.dumps([self.kind, self.args, self.content], default=str)

    def describe(self) -> str:
        if self.kind == "run":
            return "RUN " + " && ".join(self.args)
        if self.kind == "env":
            return "ENV " + " ".join(f"{k}=..." for k, _ in self.args)
        if self.kind == "workdir":
            return f"WORKDIR {self.args[0]}"
        return f"COPY {self.args[0]} {self.args[1]}"


def _digest_path(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    if path.is_file():
        h.update(path.read_bytes())
        return h.hexdigest()
    for p in sorted(path.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(path)).encode() + b"\0")
            h.update(p.read_bytes())
    return h.hexdigest()


class Image:
    """A container image: `Image.debian_slim().pip_install("numpy").env({...})`."""

    def __init__(self, base: str, python_version: str | None, steps: tuple[Step, ...] = ()):
        self.base = base
        self.python_version = python_version  # None: not known until a container reports it
        self.steps = steps

    def __repr__(self) -> str:
        return f"Image({self.base}, {len(self.steps)} steps)"

    def _extend(self, *steps: Step) -> Image:
        return Image(self.base, self.python_version, self.steps + steps)

    @property
    def object_id(self) -> str:
        return "im-" + self.digest()[:24]

    def digest(self) -> str:
        h = hashlib.sha256(self.base.encode())
        for step in self.steps:
            h.update(step.key().encode())
        return h.hexdigest()

    def chain(self) -> list[tuple[Step, str]]:
        """Each step with the id of the image that ends with it."""
        h = hashlib.sha256(self.base.encode())
        out = []
        for step in self.steps:
            h.update(step.key().encode())
            out.append((step, h.hexdigest()))
        return out

    def env_vars(self) -> dict[str, str]:
        merged: dict[str, str] = {}
        for step in self.steps:
            if step.kind == "env":
                merged.update(dict(step.args))
        return merged

    # ---- bases -----------------------------------------------------------------------------
    @staticmethod
    def debian_slim(python_version: str | None = None) -> Image:
        version = python_version or local_python()
        if not isinstance(version, str) or version not in SUPPORTED_PYTHON:
            raise InvalidError(f"debian_slim(python_version={version!r}): use one of {', '.join(SUPPORTED_PYTHON)}")
        return Image(f"python:{version}-slim-bookworm", version)

    @staticmethod
    def from_registry(tag: str, *, add_python: str | None = None) -> Image:
        if not isinstance(tag, str) or not tag or any(c.isspace() for c in tag):
            raise InvalidError(f"from_registry: {tag!r} is not an image reference such as 'ubuntu:22.04'")
        if add_python is not None:
            raise InvalidError("from_registry(add_python=...) is not supported by this version of runner yet")
        return Image(tag, None)

    # ---- steps -----------------------------------------------------------------------------
    def pip_install(self, *packages: str | Sequence[str], index_url: str | None = None,
                    extra_index_url: str | None = None, pre: bool = False) -> Image:
        pkgs = _flatten(packages, "pip_install")
        if not pkgs:
            return self
        flags = []
        if index_url:
            flags += ["--index-url", index_url]
        if extra_index_url:
            flags += ["--extra-index-url", extra_index_url]
        if pre:
            flags.append("--pre")
        cmd = "python -m pip install --no-cache-dir " + " ".join(shlex.quote(x) for x in [*flags, *pkgs])
        return self._extend(Step("run", (cmd,)))

    def apt_install(self, *packages: str | Sequence[str]) -> Image:
        pkgs = _flatten(packages, "apt_install")
        if not pkgs:
            return self
        cmd = (
            "apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "
            + " ".join(shlex.quote(p) for p in pkgs)
            + " && rm -rf /var/lib/apt/lists/*"
        )
        return self._extend(Step("run", (cmd,)))

    def run_commands(self, *commands: str | Sequence[str]) -> Image:
        cmds = _flatten(commands, "run_commands")
        return self._extend(*(Step("run", (c,)) for c in cmds))

    def env(self, vars: dict[str, str]) -> Image:  # noqa: A002 - Modal's name
        if not isinstance(vars, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in vars.items()):
            raise InvalidError("Image.env takes a dict of str to str")
        return self._extend(Step("env", tuple(sorted(vars.items()))))

    def workdir(self, path: str | os.PathLike) -> Image:
        path = str(path)
        if not path.startswith("/"):
            raise InvalidError(f"Image.workdir needs an absolute path, got {path!r}")
        return self._extend(Step("workdir", (path,)))

    def add_local_file(self, local_path: str | os.PathLike, remote_path: str, *, copy: bool = True) -> Image:
        src = pathlib.Path(local_path).expanduser().resolve()
        if not src.is_file():
            raise NotFoundError(f"add_local_file: no file at {src}")
        if remote_path.endswith("/"):
            remote_path += src.name
        if not remote_path.startswith("/"):
            raise InvalidError(f"add_local_file: remote_path must be absolute, got {remote_path!r}")
        return self._extend(Step("copy", (str(src), remote_path), _digest_path(src)))

    def add_local_dir(self, local_path: str | os.PathLike, remote_path: str, *, copy: bool = True) -> Image:
        src = pathlib.Path(local_path).expanduser().resolve()
        if not src.is_dir():
            raise NotFoundError(f"add_local_dir: no directory at {src}")
        if not remote_path.startswith("/"):
            raise InvalidError(f"add_local_dir: remote_path must be absolute, got {remote_path!r}")
        return self._extend(Step("copy", (str(src), remote_path), _digest_path(src)))

    @contextlib.contextmanager
    def imports(self):
        """Imports inside this block may fail on the client; they only need to work in the container."""
        from ._context import is_local

        try:
            yield
        except ImportError:
            if not is_local():
                raise


def _flatten(items: Iterable[Any], what: str) -> list[str]:
    out: list[str] = []
    for item in items:
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, (list, tuple)):
            out.extend(_flatten(item, what))
        else:
            raise InvalidError(f"{what} takes strings or lists of strings, got {type(item).__name__}")
    return out
