"""Secrets: environment variables given to containers, never printed.

`repr()` shows the names only. Named secrets (`runner secret create`) are stored outside any
project, one owner-only (0600) file each under `$RUNNER_HOME/secrets/` (a 0700 directory), and
are read by `Secret.from_name` on the client; containers get the values as environment only.
"""

from __future__ import annotations

import json
import os
import pathlib
import tempfile
from typing import Iterable

from ._context import is_local
from ._home import check_name, subdir
from .exception import AlreadyExistsError, InvalidError, NotFoundError


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
    def from_name(name: str, *, required_keys: Iterable[str] = (), environment_name: str | None = None) -> Secret:
        """A secret stored with `runner secret create NAME KEY=VALUE...`, read when this runs."""
        check_name(name, "secret")
        keys = [required_keys] if isinstance(required_keys, str) else list(required_keys)
        if not is_local():
            return Secret({}, source=f"from_name({name})")  # inside a container: given as env already
        path = _store() / f"{name}.json"
        if not path.is_file():
            raise NotFoundError(f"secret {name!r} not found; create it with `runner secret create {name} KEY=VALUE ...`")
        values = json.loads(path.read_text())
        missing = [k for k in keys if k not in values]
        if missing:
            raise NotFoundError(
                f"secret {name!r} lacks required key(s) {', '.join(missing)} (it has {', '.join(sorted(values)) or 'none'}); "
                f"add them with `runner secret create {name} KEY=VALUE ... --force`"
            )
        return Secret(values, source=f"from_name({name})")


# ---- named secrets on this host: one owner-only JSON file each, outside any project ------------
def _store() -> pathlib.Path:
    return subdir("secrets")


def save(name: str, values: dict[str, str], *, force: bool = False) -> None:
    """Store a named secret; written to a new owner-only file and renamed in, never half-written."""
    check_name(name, "secret")
    Secret(values, source=name)  # the same key and value checks as everywhere
    path = _store() / f"{name}.json"
    if path.exists() and not force:
        raise AlreadyExistsError(f"secret {name!r} exists already; pass --force to replace it")
    fd, tmp = tempfile.mkstemp(dir=_store(), prefix=".new-")  # mkstemp files are 0600
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(values, f)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def names() -> dict[str, list[str]]:
    """Each stored secret's name with its keys (never the values)."""
    return {p.stem: sorted(json.loads(p.read_text())) for p in sorted(_store().glob("*.json"))}


def delete(name: str) -> None:
    check_name(name, "secret")
    path = _store() / f"{name}.json"
    if not path.is_file():
        raise NotFoundError(f"secret {name!r} not found")
    path.unlink()
