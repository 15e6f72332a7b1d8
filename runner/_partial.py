"""Decorators that mark methods and set per-function behaviour: enter, exit, method, concurrent,
batched, and `parameter()` for class parameters.

They only attach flags to the wrapped callable; the agent reads the flags inside the container,
so this module is standard library only.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from .exception import InvalidError

_FLAGS = "_runner_flags"
_MISSING = object()


def _flag(fn: Callable, **flags: Any) -> Callable:
    target = fn
    existing = dict(getattr(target, _FLAGS, {}))
    existing.update(flags)
    setattr(target, _FLAGS, existing)
    return target


def flags_of(fn: Any) -> dict:
    return getattr(fn, _FLAGS, {})


def enter(_fn: Callable | None = None, *, snap: bool = False):
    """Mark a method of an `@app.cls` class to run once when a container starts."""

    def deco(fn):
        return _flag(fn, enter=True, snap=snap)

    return deco(_fn) if _fn is not None else deco


def exit(_fn: Callable | None = None):  # noqa: A001 - Modal's name
    """Mark a method of an `@app.cls` class to run once when a container stops."""

    def deco(fn):
        return _flag(fn, exit=True)

    return deco(_fn) if _fn is not None else deco


def method(_fn: Callable | None = None, *, is_generator: bool | None = None):
    """Mark a method of an `@app.cls` class as callable remotely."""

    def deco(fn):
        return _flag(fn, method=True)

    return deco(_fn) if _fn is not None else deco


def concurrent(_fn: Callable | None = None, *, max_inputs: int, target_inputs: int | None = None):
    """Let one container serve up to `max_inputs` inputs at once (threads, or tasks for async code)."""
    if not isinstance(max_inputs, int) or max_inputs < 1:
        raise InvalidError(f"concurrent(max_inputs=...) must be a positive integer, got {max_inputs!r}")
    if target_inputs is not None and (not isinstance(target_inputs, int) or not 1 <= target_inputs <= max_inputs):
        raise InvalidError(f"concurrent(target_inputs=...) must be an integer from 1 to max_inputs, got {target_inputs!r}")

    def deco(fn):
        return _flag(fn, max_inputs=max_inputs, target_inputs=target_inputs or max_inputs)

    return deco(_fn) if _fn is not None else deco


def batched(_fn: Callable | None = None, *, max_batch_size: int, wait_ms: int):
    """Call the function with lists of up to `max_batch_size` inputs, waiting up to `wait_ms` to fill one."""
    if not isinstance(max_batch_size, int) or not 1 <= max_batch_size <= 1000:
        raise InvalidError(f"batched(max_batch_size=...) must be an integer from 1 to 1000, got {max_batch_size!r}")
    if not isinstance(wait_ms, (int, float)) or not 0 <= wait_ms < 10 * 60 * 1000:
        raise InvalidError(f"batched(wait_ms=...) must be from 0 to 600000, got {wait_ms!r}")

    def deco(fn):
        return _flag(fn, batch=(max_batch_size, float(wait_ms)))

    return deco(_fn) if _fn is not None else deco


@dataclasses.dataclass(frozen=True)
class _Parameter:
    default: Any = _MISSING
    init: bool = True

    @property
    def required(self) -> bool:
        return self.default is _MISSING


def parameter(*, default: Any = _MISSING, init: bool = True) -> Any:
    """Declare a class parameter: `name: str = modal.parameter(default="x")`."""
    if default is not _MISSING and not isinstance(default, (str, int, bool, bytes, float, type(None))):
        raise InvalidError(f"parameter default must be str, int, bool, bytes or float, got {type(default).__name__}")
    return _Parameter(default=default, init=init)


def class_parameters(cls: type) -> dict[str, _Parameter]:
    """The parameters a class declares, in definition order (its own and its bases')."""
    found: dict[str, _Parameter] = {}
    for klass in reversed(cls.__mro__):
        for name, value in vars(klass).items():
            if isinstance(value, _Parameter):
                found[name] = value
    return found


def is_missing(value: Any) -> bool:
    return value is _MISSING
