"""Secrets: environment variables given to containers, never printed.

`repr()` shows the names only. Named secrets stored on disk arrive with the storage work; until
then `Secret.from_name` says plainly that the name is unknown.
"""

from __future__ import annotations

import os
import pathlib
from typing import Iterable

from ._context import is_local
from .exception import InvalidError, NotFoundError


class Secret:
    def __init__(self, values: dict[str, str], *, source: str):
        for key, value in values.items():
            if not isinstance(key, str) or not key or not isinstance(value, str):
                raise InvalidError(f"secret {source}: keys and values must be non-empty strings (bad key {key!r})")
        self._values = dict(values)
        self._source = source

    def __repr__(self) -> str:
        return f"Secret({self._source}: {', '.join(sorted(self._values))})"

    def env(self) -> dict[str, str]:
        return dict(self._values)

    @staticmethod
    def from_dict(values: dict[str, str | None]) -> Secret:
        if not isinstance(values, dict):
            raise InvalidError("Secret.from_dict takes a dict of str to str")
        return Secret({k: v for k, v in values.items() if v is not None}, source="from_dict")

    @staticmethod
    def from_local_environ(env_keys: Iterable[str]) -> Secret:
        keys = [env_keys] if isinstance(env_keys, str) else list(env_keys)
        missing = [k for k in keys if k not in os.environ]
        if missing and not is_local():
            return Secret({}, source="from_local_environ")  # inside a container: given as env already
        if missing:
            raise InvalidError(f"Secret.from_local_environ: not set in this environment: {', '.join(missing)}")
        return Secret({k: os.environ[k] for k in keys}, source="from_local_environ")

    @staticmethod
    def from_dotenv(path: str | os.PathLike | None = None, *, filename: str = ".env") -> Secret:
        file = pathlib.Path(path or os.getcwd())
        if file.is_dir():
            file = file / filename
        if not file.is_file() and not is_local():
            return Secret({}, source="from_dotenv")  # inside a container: given as env already
        if not file.is_file():
            raise NotFoundError(f"Secret.from_dotenv: no file at {file}")
        values: dict[str, str] = {}
        for lineno, raw in enumerate(file.read_text().splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("export "):
                line = line[len("export ") :]
            key, sep, value = line.partition("=")
            if not sep:
                raise InvalidError(f"{file}:{lineno}: expected KEY=VALUE")
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]
            values[key.strip()] = value
        return Secret(values, source=f"from_dotenv({file.name})")

    @staticmethod
    def from_name(name: str, *, required_keys: Iterable[str] = ()) -> Secret:
        raise NotFoundError(f"secret {name!r} not found: named secrets are not supported by this version of runner yet")
