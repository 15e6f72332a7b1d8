"""The checks of what users pass to `Sandbox.create` and `Sandbox.exec`.

Both take a command, env, secrets, a workdir and timeouts, so they share these. A bad value fails
at the call with one error saying what was wrong, before a container starts or a request reaches
the supervisor; `what` names the call (and argument) in the message.
"""

from __future__ import annotations

from typing import Any

from ._resources import MAX_TIMEOUT
from ._secret import Secret
from .exception import InvalidError

ARG_MAX = 2**16  # bytes of command line, as Modal allows


def check_cmd(args: tuple, what: str) -> list[str]:
    bad = [a for a in args if not isinstance(a, str)]
    if bad:
        raise InvalidError(f"{what}: every argument of the command must be a string, got {bad[0]!r}")
    if any("\0" in a for a in args):
        raise InvalidError(f"{what}: an argument of the command contains a NUL byte")
    if sum(len(a.encode()) for a in args) > ARG_MAX:
        raise InvalidError(f"{what}: the command is over {ARG_MAX} bytes long; pass large data through stdin or a file")
    return list(args)


def check_seconds(what: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= MAX_TIMEOUT:
        raise InvalidError(f"{what} must be a number of seconds above 0 and at most {MAX_TIMEOUT} (24 hours), got {value!r}")
    return float(value)


def check_workdir(workdir: Any, what: str) -> str | None:
    if workdir is not None and (not isinstance(workdir, str) or not workdir.startswith("/") or "\0" in workdir):
        raise InvalidError(f"{what}(workdir=...) must be an absolute path such as '/tmp', got {workdir!r}")
    return workdir


def check_env(env: Any, what: str) -> dict[str, str]:
    if env is None:
        return {}
    if not isinstance(env, dict) or not all(isinstance(k, str) and k and "=" not in k and "\0" not in k
                                            and (v is None or isinstance(v, str) and "\0" not in v)
                                            for k, v in env.items()):
        raise InvalidError(f"{what} must be a dict of variable names to str (or None to leave one out)")
    return {k: v for k, v in env.items() if v is not None}


def secret_env(secrets: Any, what: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for secret in secrets or ():
        if not isinstance(secret, Secret):
            raise InvalidError(f"{what}(secrets=...) takes runner.Secret objects, got {type(secret).__name__}")
        values.update(secret.env())
    return values


def check_tags(tags: Any, what: str) -> dict[str, str]:
    if tags is None:
        return {}
    if not isinstance(tags, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in tags.items()):
        raise InvalidError(f"{what} must be a dict of str to str, got {tags!r}")
    return dict(tags)


def check_ports(*groups: Any) -> tuple[int, ...]:
    ports: list[int] = []
    for group in groups:
        for port in group or ():
            if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
                raise InvalidError(f"Sandbox.create: port {port!r} must be an integer from 1 to 65535")
            if port in ports:
                raise InvalidError(f"Sandbox.create: port {port} is given twice")
            ports.append(port)
    return tuple(ports)
