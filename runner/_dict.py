"""`Dict`: a key-value map in the store, shared by the client, its containers and other programs.

Modal's API: `Dict.from_name(name, create_if_missing=True)` (lazy: nothing connects until first
use), `with Dict.ephemeral() as d:`, `Dict.delete(name)`, and get/put/pop/contains/len/update/
clear/keys/values/items, each with an `.aio` form. `d[k]` and `d.pop(k)` raise KeyError for a
missing key; `d.get(k)` returns the default. Values are cloudpickled; keys are plain data (str,
bytes, numbers, tuples) encoded deterministically, so the same key finds the same entry from any
process. There is no `len(d)`, as in Modal: an empty Dict is still a true value.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ._aio import blocking, blocking_iter
from ._store import Ephemeral, StoreObject, dump_key, dump_value, load
from .exception import InvalidError


class Dict(StoreObject):
    """A distributed dictionary: `d = Dict.from_name("cache", create_if_missing=True)`."""

    _kind = "dict"

    @classmethod
    def ephemeral(cls, data: dict | None = None) -> Ephemeral:
        """`with Dict.ephemeral() as d:`: an anonymous Dict (filled from `data`), deleted on exit."""
        return Ephemeral(cls, (lambda d: d.update(data)) if data else None)

    @blocking
    @staticmethod
    def delete(name: str, *, allow_missing: bool = False) -> None:
        """Delete the named Dict and everything in it."""
        Dict._delete(name, allow_missing)

    @blocking
    def get(self, key: Any, default: Any = None) -> Any:
        """The value for `key`, or `default` if it is missing."""
        blob = self._do("d_get", dump_key(key, "a Dict"))
        return default if blob is None else load(blob, f"the value of {self!r}[{key!r}]")

    @blocking
    def put(self, key: Any, value: Any, *, skip_if_exists: bool = False) -> bool:
        """Set `key` to `value`; with skip_if_exists, only if it is missing. True if it was set."""
        item = (dump_key(key, "a Dict"), dump_value(value, "a Dict value"))
        return self._do("d_put", [item], bool(skip_if_exists))

    @blocking
    def pop(self, key: Any) -> Any:
        """Remove `key` and return its value; KeyError if it is missing."""
        blob = self._do("d_pop", dump_key(key, "a Dict"))
        if blob is None:
            raise KeyError(key)
        return load(blob, f"the value of {self!r}[{key!r}]")

    @blocking
    def contains(self, key: Any) -> bool:
        return self._do("d_contains", dump_key(key, "a Dict"))

    @blocking
    def len(self) -> int:
        """The number of entries."""
        return self._do("d_len")

    @blocking
    def update(self, other: Any = None, /, **kwargs: Any) -> None:
        """Set many entries at once, from a mapping or (key, value) pairs and keyword arguments."""
        try:
            merged = dict(other or (), **kwargs)
        except (TypeError, ValueError):
            raise InvalidError(f"Dict.update takes a mapping or an iterable of (key, value) pairs, "
                               f"got {type(other).__name__}") from None
        items = [(dump_key(k, "a Dict"), dump_value(v, "a Dict value")) for k, v in merged.items()]
        if items:
            self._do("d_put", items, False)

    @blocking
    def clear(self) -> None:
        """Remove every entry."""
        self._do("d_clear")

    @blocking_iter
    def keys(self) -> Iterator[Any]:
        """The keys, in no particular order."""
        for key, _ in self._each("d_scan"):
            yield load(key, f"a key of {self!r}")

    @blocking_iter
    def values(self) -> Iterator[Any]:
        for _, value in self._each("d_scan"):
            yield load(value, f"a value of {self!r}")

    @blocking_iter
    def items(self) -> Iterator[tuple[Any, Any]]:
        for key, value in self._each("d_scan"):
            yield load(key, f"a key of {self!r}"), load(value, f"a value of {self!r}")

    def __getitem__(self, key: Any) -> Any:
        blob = self._do("d_get", dump_key(key, "a Dict"))
        if blob is None:
            raise KeyError(key)
        return load(blob, f"the value of {self!r}[{key!r}]")

    def __setitem__(self, key: Any, value: Any) -> None:
        self.put(key, value)

    def __delitem__(self, key: Any) -> None:
        self.pop(key)

    def __contains__(self, key: Any) -> bool:
        return self.contains(key)
