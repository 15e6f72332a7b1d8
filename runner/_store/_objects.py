"""What Dict and Queue share: encoding their data, the handle on a stored object, ephemeral objects.

Keys are encoded deterministically (equal keys must be equal bytes in every process) and values
are cloudpickled; both fail with an error naming the culprit, never a raw pickling error. A handle
resolves its name lazily, on first use, as Modal's does, and re-resolves when the process's store
changes (after a fork, or a new RUNNER_STORE_URL). Names follow Modal's rule for Dict and Queue (1
to 64 letters, digits, '-', '_', '.'), which allows a leading '.': these names are keys in the
store, never file names, so `runner._home.check_name` (which forbids it) is not the rule here.
"""

from __future__ import annotations

import asyncio
import io
import pickle
from collections.abc import Callable, Iterator
from typing import Any

import cloudpickle

from .. import _store  # the package, for current(): it imports this module, so look it up at call time
from ..exception import DeserializationError, InvalidError, NotFoundError
from ._backend import Backend, Gone, owner

_KEY_TYPES = (str, bytes, int, float, bool, type(None))
_PLAIN = "store plain data (numbers, strings, bytes, lists, dicts, dataclasses), not locks, sockets, open files or clients"


def _plain_key(key: Any) -> bool:
    return isinstance(key, _KEY_TYPES) or isinstance(key, tuple) and all(map(_plain_key, key))


def dump_key(key: Any, what: str) -> bytes:
    """A deterministic encoding, so equal keys are equal bytes in every process (a set's order, or
    an object's pickle, could differ between processes: such keys are refused)."""
    if not _plain_key(key):
        raise InvalidError(f"{what} key of type {type(key).__name__} is not supported; "
                           "use str, bytes, int, float, bool, None or tuples of them")
    buf = io.BytesIO()
    pickler = pickle.Pickler(buf, protocol=4)
    pickler.fast = True  # no memo: the bytes depend on the value only, not on object identity
    pickler.dump(key)
    return buf.getvalue()


def dump_value(value: Any, what: str) -> bytes:
    try:
        return cloudpickle.dumps(value)
    except Exception as exc:  # noqa: BLE001 - name the culprit, never a raw PicklingError
        raise InvalidError(f"{what} of type {type(value).__name__} cannot be serialized "
                           f"({type(exc).__name__}: {exc}); {_PLAIN}") from None


def load(blob: bytes, what: str) -> Any:
    try:
        return cloudpickle.loads(blob)
    except Exception as exc:  # noqa: BLE001
        raise DeserializationError(f"{what} cannot be deserialized here: {type(exc).__name__}: {exc}") from None


class Ephemeral:
    """`with X.ephemeral() as x:` (or `async with`): a new anonymous object, deleted on exit."""

    def __init__(self, cls: type, fill: Callable[[Any], None] | None = None):
        self._cls, self._fill, self._obj = cls, fill, None

    def __enter__(self):
        backend = _store.current()
        self._obj = self._cls._bind(backend, backend.create_ephemeral(self._cls._kind, owner()))
        if self._fill:
            try:
                self._fill(self._obj)
            except BaseException:
                backend.drop(self._obj._resolved[1])
                raise
        return self._obj

    def __exit__(self, *exc_info) -> None:
        backend, oid = self._obj._resolved
        backend.drop(oid)

    async def __aenter__(self):
        return await asyncio.to_thread(self.__enter__)

    async def __aexit__(self, *exc_info) -> None:
        await asyncio.to_thread(self.__exit__, *exc_info)


class StoreObject:
    """A handle on a Dict or Queue of the store: found by name lazily, on first use, as in Modal
    (so `Dict.from_name` at module level connects to nothing at import), or bound to an ephemeral
    object's id. Pickles as that reference, so a container gets a handle on the same object."""

    _kind = ""  # "dict" or "queue"

    def __init__(self, *args, **kwargs):
        kind = type(self).__name__
        raise InvalidError(f"{kind}() does not make one: use {kind}.from_name(name, create_if_missing=True), "
                           f"or `with {kind}.ephemeral() as x:`")

    @classmethod
    def _make(cls, name: str | None, create: bool, object_id: str | None):
        obj = cls.__new__(cls)
        obj._name, obj._create, obj._id = name, create, object_id
        obj._resolved = None
        return obj

    @classmethod
    def from_name(cls, name: str, *, create_if_missing: bool = False):
        """A handle on the named object; the store is first asked when the handle is first used."""
        return cls._make(check_name(cls, name), bool(create_if_missing), None)

    @classmethod
    def _bind(cls, backend: Backend, oid: str):
        obj = cls._make(None, False, oid)
        obj._resolved = (backend, oid)
        return obj

    def _target(self) -> tuple[Backend, str]:
        backend = _store.current()
        resolved = self._resolved
        if resolved is not None and resolved[0] is backend:
            return resolved
        oid = self._id or backend.lookup(self._kind, self._name, self._create)
        if oid is None:
            kind = type(self).__name__
            raise NotFoundError(f"{kind} {self._name!r} not found; create it with "
                                f"{kind}.from_name({self._name!r}, create_if_missing=True)")
        self._resolved = (backend, oid)
        return self._resolved

    def _do(self, op: str, *args) -> Any:
        backend, oid = self._target()
        try:
            return getattr(backend, op)(oid, *args)
        except Gone:
            raise self._gone() from None

    def _each(self, op: str, *args) -> Iterator:
        backend, oid = self._target()
        try:
            yield from getattr(backend, op)(oid, *args)
        except Gone:
            raise self._gone() from None

    def _gone(self) -> NotFoundError:
        why = "it was deleted" if self._name else "it was deleted, or the program that created it ended"
        return NotFoundError(f"{self!r} no longer exists: {why}")

    @property
    def name(self) -> str | None:
        return self._name

    @property
    def object_id(self) -> str:
        return self._target()[1]

    def __repr__(self) -> str:
        kind = type(self).__name__
        return f"{kind}.from_name({self._name!r})" if self._name else f"{kind}(ephemeral {self._id})"

    def __reduce__(self):
        return type(self)._make, (self._name, self._create, self._id)

    @classmethod
    def _delete(cls, name: str, allow_missing: bool) -> None:
        backend = _store.current()
        oid = backend.lookup(cls._kind, check_name(cls, name), False)
        if (oid is None or not backend.drop(oid)) and not allow_missing:
            raise NotFoundError(f"{cls.__name__} {name!r} not found, so there is nothing to delete")


def check_name(cls: type, name: Any) -> str:
    ok = isinstance(name, str) and 0 < len(name) <= 64 and all(c.isascii() and (c.isalnum() or c in "-_.") for c in name)
    if not ok:
        raise InvalidError(f"invalid {cls.__name__} name {name!r}: use 1 to 64 letters, digits, dashes, "
                           "periods and underscores")
    return name
