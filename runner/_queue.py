"""`Queue`: a FIFO queue in the store, for handing work between the client, containers and programs.

Modal's API and limits: independent FIFO partitions (a partition key is 1 to 64 bytes; the
default partition has none), each holding at most 5,000 values and cleared `partition_ttl`
seconds (default 24 hours) after its last put. `get` waits for a value unless `block=False`
(then it returns None) and raises `queue.Empty` when its `timeout` runs out; `put` into a full
partition waits, and raises `queue.Full` when its `timeout` runs out (at once with `block=False`).

A blocking call waits in steps of at most a second, so Ctrl-C acts at once. The `.aio` forms run
the call in a worker thread that also stops within a second of the awaiting task's cancellation;
values a cancelled `get` had already taken go back to the head of their partition, in order, so
cancelling never loses a value.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from ._aio import blocking, blocking_iter, twin
from ._store import WAIT_STEP, Ephemeral, StoreObject, dump_value, load
from .exception import Error, InvalidError

PARTITION_MAX_ITEMS = 5000
DEFAULT_PARTITION_TTL = 24 * 3600


class Queue(StoreObject):
    """A distributed FIFO queue: `q = Queue.from_name("jobs", create_if_missing=True)`."""

    _kind = "queue"

    @classmethod
    def ephemeral(cls) -> Ephemeral:
        """`with Queue.ephemeral() as q:`: an anonymous Queue, deleted on exit."""
        return Ephemeral(cls)

    @blocking
    @staticmethod
    def delete(name: str, *, allow_missing: bool = False) -> None:
        """Delete the named Queue and everything in it."""
        Queue._delete(name, allow_missing)

    # ---- put -----------------------------------------------------------------------------------
    @twin("_put_aio")
    def put(self, v: Any, block: bool = True, timeout: float | None = None, *, partition: str | None = None,
            partition_ttl: int = DEFAULT_PARTITION_TTL) -> None:
        """Add a value at the end of the partition."""
        self._put([v], block, timeout, partition, partition_ttl)

    async def _put_aio(self, v: Any, block: bool = True, timeout: float | None = None, *,
                       partition: str | None = None, partition_ttl: int = DEFAULT_PARTITION_TTL) -> None:
        await _cancellable(self._put, [v], block, timeout, partition, partition_ttl)

    @twin("_put_many_aio")
    def put_many(self, vs: list, block: bool = True, timeout: float | None = None, *, partition: str | None = None,
                 partition_ttl: int = DEFAULT_PARTITION_TTL) -> None:
        """Add several values at the end of the partition, all or none."""
        self._put(_values(vs), block, timeout, partition, partition_ttl)

    async def _put_many_aio(self, vs: list, block: bool = True, timeout: float | None = None, *,
                            partition: str | None = None, partition_ttl: int = DEFAULT_PARTITION_TTL) -> None:
        await _cancellable(self._put, _values(vs), block, timeout, partition, partition_ttl)

    def _put(self, vs: list, block: bool, timeout: float | None, partition: str | None, ttl: int,
             stop: threading.Event | None = None) -> None:
        part, deadline = _partition(partition), _deadline(timeout)
        if isinstance(ttl, bool) or not isinstance(ttl, int) or ttl < 1:
            raise InvalidError(f"Queue partition_ttl must be a whole number of seconds >= 1, got {ttl!r}")
        if len(vs) > PARTITION_MAX_ITEMS:
            raise InvalidError(f"cannot put {len(vs)} values at once: a Queue partition holds at most "
                               f"{PARTITION_MAX_ITEMS}; put them in smaller batches")
        blobs = [dump_value(v, "a Queue value") for v in vs]
        delay = 0.01
        while blobs and not self._do("q_push", part, blobs, ttl, PARTITION_MAX_ITEMS):
            left = WAIT_STEP if deadline is None else deadline - time.monotonic()
            if not block or left <= 0:
                raise queue.Full(f"{self!r}: the partition holds {PARTITION_MAX_ITEMS} values, the most it can; "
                                 "take some out first")
            if stop is not None and stop.is_set():
                return
            time.sleep(min(delay, left))
            delay = min(delay * 2, 0.5)

    # ---- get -----------------------------------------------------------------------------------
    @twin("_get_aio")
    def get(self, block: bool = True, timeout: float | None = None, *, partition: str | None = None) -> Any:
        """Remove and return the first value; None at once if empty and not `block`."""
        values = self._loaded(self._take(1, block, timeout, partition))
        return values[0] if values else None

    async def _get_aio(self, block: bool = True, timeout: float | None = None, *,
                       partition: str | None = None) -> Any:
        values = self._loaded(await self._take_aio(1, block, timeout, partition))
        return values[0] if values else None

    @twin("_get_many_aio")
    def get_many(self, n_values: int, block: bool = True, timeout: float | None = None, *,
                 partition: str | None = None) -> list[Any]:
        """Remove and return up to `n_values` values, as soon as there is at least one."""
        return self._loaded(self._take(_count(n_values), block, timeout, partition))

    async def _get_many_aio(self, n_values: int, block: bool = True, timeout: float | None = None, *,
                            partition: str | None = None) -> list[Any]:
        return self._loaded(await self._take_aio(_count(n_values), block, timeout, partition))

    def _take(self, n: int, block: bool, timeout: float | None, partition: str | None,
              stop: threading.Event | None = None) -> tuple[bytes, list[bytes]]:
        part, deadline = _partition(partition), _deadline(timeout)
        if not block:
            return part, self._do("q_pop", part, n, 0)
        while True:
            left = WAIT_STEP if deadline is None else min(WAIT_STEP, deadline - time.monotonic())
            blobs = self._do("q_pop", part, n, max(left, 0))
            if blobs or (stop is not None and stop.is_set()):
                return part, blobs
            if deadline is not None and time.monotonic() >= deadline:
                raise queue.Empty()

    async def _take_aio(self, n: int, block: bool, timeout: float | None, partition: str | None):
        def put_back(taken: tuple[bytes, list[bytes]]) -> None:
            if taken[1]:
                self._do("q_push_front", *taken)

        return await _cancellable(self._take, n, block, timeout, partition, undo=put_back)

    def _loaded(self, taken: tuple[bytes, list[bytes]]) -> list[Any]:
        return [load(blob, f"a value of {self!r}") for blob in taken[1]]

    # ---- the rest ------------------------------------------------------------------------------
    @blocking
    def len(self, *, partition: str | None = None, total: bool = False) -> int:
        """The number of values in the partition, or in all partitions with `total=True`."""
        if partition is not None and total:
            raise InvalidError("Queue.len: pass a partition or total=True, not both")
        return self._do("q_len", None if total else _partition(partition))

    @blocking
    def clear(self, *, partition: str | None = None, all: bool = False) -> None:
        """Remove every value of the partition, or of every partition with `all=True`."""
        if partition is not None and all:
            raise InvalidError("Queue.clear: pass a partition or all=True, not both")
        self._do("q_clear", None if all else _partition(partition))

    @blocking_iter
    def iterate(self, *, partition: str | None = None, item_poll_timeout: float = 0.0) -> Iterator[Any]:
        """The values in order, without removing them; at the end, wait up to `item_poll_timeout`
        seconds for another before stopping."""
        return self._iterate(_partition(partition), _seconds(item_poll_timeout, "item_poll_timeout") or 0.0)

    def _iterate(self, part: bytes, poll: float) -> Iterator[Any]:
        position, last = 0, time.monotonic()
        while True:
            blobs = self._do("q_range", part, position, 100)
            for blob in blobs:
                yield load(blob, f"a value of {self!r}")
            position += len(blobs)
            if blobs:
                last = time.monotonic()
                continue
            left = poll - (time.monotonic() - last)
            if left <= 0:
                return
            time.sleep(min(0.05, left))


async def _cancellable(fn: Callable, *args, undo: Callable[[Any], None] | None = None) -> Any:
    """Run `fn(*args, stop)` in a worker thread. If the awaiting task is cancelled, `stop` is set (fn
    returns within a second) and `undo` gets the result the caller will never see, exactly once."""
    stop, lock, delivered = threading.Event(), threading.Lock(), []

    def work():
        result = fn(*args, stop)
        with lock:
            orphaned = stop.is_set()
            if not orphaned:
                delivered.append(result)
        if orphaned and undo:
            undo(result)
        return result

    try:
        return await asyncio.to_thread(work)
    except asyncio.CancelledError:
        with lock:
            stop.set()
            lost = list(delivered)
        if lost and undo:
            with contextlib.suppress(Error):
                undo(lost[0])
        raise


def _partition(partition: Any) -> bytes:
    if partition is None:
        return b""
    key = partition.encode() if isinstance(partition, str) else None
    if not key or len(key) > 64:
        raise InvalidError(f"Queue partition {partition!r} is invalid: a partition key is a non-empty string "
                           "of at most 64 bytes (or None for the default partition)")
    return key


def _seconds(value: Any, what: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise InvalidError(f"Queue {what} must be a number of seconds >= 0 or None, got {value!r}")
    return float(value)


def _deadline(timeout: Any) -> float | None:
    seconds = _seconds(timeout, "timeout")
    return None if seconds is None else time.monotonic() + seconds


def _count(n_values: Any) -> int:
    if isinstance(n_values, bool) or not isinstance(n_values, int) or n_values < 1:
        raise InvalidError(f"Queue.get_many: n_values must be a whole number >= 1, got {n_values!r}")
    return n_values


def _values(vs: Any) -> list:
    if isinstance(vs, (str, bytes, dict)) or not hasattr(vs, "__iter__"):
        raise InvalidError(f"Queue.put_many takes a list of values, got {type(vs).__name__}")
    return list(vs)
