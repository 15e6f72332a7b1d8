"""cloudpickle on the client side, with errors that name what could not be (de)serialized."""

from __future__ import annotations

import inspect
from typing import Any, Callable

import cloudpickle

from .exception import DeserializationError, RemoteError, SerializationError

_REMOTE_NOTE = "Remote traceback (most recent call last, in the container):"


def serialize_args(fn_name: str, raw: Callable | None, args: tuple, kwargs: dict) -> bytes:
    try:
        return cloudpickle.dumps((args, kwargs))
    except Exception as exc:  # noqa: BLE001 - find the culprit and name it
        names = _param_names(raw)
        for i, value in enumerate(args):
            _try_one(fn_name, names[i] if i < len(names) else f"#{i}", value)
        for key, value in kwargs.items():
            _try_one(fn_name, key, value)
        raise SerializationError(f"arguments of {fn_name} cannot be serialized: {type(exc).__name__}: {exc}") from None


def serialize_chunk(fn_name: str, raw: Callable | None, arg_tuples: list[tuple], kwargs: dict) -> bytes:
    """Many calls' arguments as one payload: `(list of args tuples, shared kwargs)`."""
    try:
        return cloudpickle.dumps((arg_tuples, kwargs))
    except Exception:  # noqa: BLE001 - let the one-call path name the culprit
        for args in arg_tuples:
            serialize_args(fn_name, raw, args, kwargs)
        raise


def split_chunk(blob: bytes) -> list[bytes]:
    """The single-call payloads of a chunk's items."""
    arg_tuples, kwargs = cloudpickle.loads(blob)
    return [cloudpickle.dumps((args, kwargs)) for args in arg_tuples]


def _try_one(fn_name: str, name: str, value: Any) -> None:
    try:
        cloudpickle.dumps(value)
    except Exception as exc:  # noqa: BLE001
        raise SerializationError(
            f"argument {name!r} of {fn_name} ({type(value).__name__}) cannot be serialized: {type(exc).__name__}: {exc}"
        ) from None


def _param_names(raw: Callable | None) -> list[str]:
    if raw is None:
        return []
    try:
        return [p for p in inspect.signature(raw).parameters if p != "self"]
    except (TypeError, ValueError):
        return []


def deserialize(blob: bytes | memoryview, what: str) -> Any:
    try:
        return cloudpickle.loads(blob)
    except Exception as exc:  # noqa: BLE001
        raise DeserializationError(f"{what} cannot be deserialized here: {type(exc).__name__}: {exc}") from None


def decode_error(blob: bytes | memoryview, tb: str | None, fn_name: str) -> BaseException:
    """The exception user code raised in a container, as its own type, with the remote traceback."""
    try:
        exc = cloudpickle.loads(blob)
    except Exception as err:  # noqa: BLE001 - its class may not exist here
        exc = RemoteError(f"{fn_name} raised an exception that cannot be rebuilt here ({type(err).__name__}: {err})")
    if not isinstance(exc, BaseException):
        exc = RemoteError(f"{fn_name} failed: {exc!r}")
    if tb and not any(str(n).startswith(_REMOTE_NOTE) for n in getattr(exc, "__notes__", ())):
        exc.add_note(f"{_REMOTE_NOTE}\n{tb.rstrip()}")
    return exc
