"""Blocking calls with an `.aio` twin, as Modal's API has: `d.get(k)` and `await d.get.aio(k)`.

Objects whose calls block on I/O (volumes, the store, sandboxes) mark their methods with
`@blocking`; the `.aio` form runs the same method in a worker thread, so there is one
implementation of each call and the event loop is never blocked.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any, Callable


class _Aio:
    """A call with a sync face and an `.aio` async one: `f.remote(x)` and `await f.remote.aio(x)`."""

    __slots__ = ("_sync", "aio")

    def __init__(self, sync: Callable, aio: Callable):
        self._sync = sync
        self.aio = aio

    def __call__(self, *args, **kwargs):
        return self._sync(*args, **kwargs)


class blocking:
    """Method decorator: `obj.m(...)` runs in the caller's thread, `await obj.m.aio(...)` in a worker thread."""

    def __init__(self, fn: Callable):
        self.fn = fn
        functools.update_wrapper(self, fn)

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, owner: type | None = None):
        bound = self.fn.__get__(obj, owner)  # works for plain methods and staticmethod/classmethod targets

        async def aio(*args, **kwargs):
            return await asyncio.to_thread(bound, *args, **kwargs)

        return _Aio(bound, aio)
