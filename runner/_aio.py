"""Blocking calls with an `.aio` twin, as Modal's API has: `d.get(k)` and `await d.get.aio(k)`.

Objects whose calls block on I/O (volumes, the store, sandboxes) mark their methods with
`@blocking`; the `.aio` form runs the same method in a worker thread, so there is one
implementation of each call and the event loop is never blocked. A method returning an iterator
uses `@blocking_iter`: its `.aio` form is an async iterator taking each step in a worker thread.
A call whose async form is its own code (it undoes work when cancelled, or waits on the event loop
itself, as function calls do) writes it separately and names it with `@twin`.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any


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

    def __get__(self, obj: Any, owner: type | None = None):
        bound = self.fn.__get__(obj, owner)  # works for plain methods and staticmethod/classmethod targets
        return _Aio(bound, self._aio(obj, bound))

    def _aio(self, obj: Any, bound: Callable) -> Callable:
        async def aio(*args, **kwargs):
            return await asyncio.to_thread(bound, *args, **kwargs)

        return aio


class blocking_iter(blocking):
    """Method decorator for a method returning an iterator: `for x in obj.m(...)`, and
    `async for x in obj.m.aio(...)` with each step taken in a worker thread."""

    def _aio(self, obj: Any, bound: Callable) -> Callable:
        return lambda *args, **kwargs: _iterate_in_thread(bound(*args, **kwargs))


class twin(blocking):
    """`@twin("_get_aio")`: `obj.m(...)` runs the method, `obj.m.aio` is the object's method `_get_aio`."""

    def __init__(self, aio: str):
        self.aio = aio

    def __call__(self, fn: Callable) -> twin:
        super().__init__(fn)
        return self

    def __get__(self, obj: Any, owner: type | None = None):
        return self if obj is None else super().__get__(obj, owner)

    def _aio(self, obj: Any, bound: Callable) -> Callable:
        return getattr(obj, self.aio)


async def _iterate_in_thread(it: Iterator) -> AsyncIterator:
    done = object()
    while (item := await asyncio.to_thread(next, it, done)) is not done:
        yield item
