"""Web functions while an app runs: warm containers serving HTTP, behind one front door per app.

A web function's containers run its HTTP server (see `runner._web_serve`), and the front door
(`runner._frontdoor`, one loopback port per app run) routes each client connection by label to
one of them. This module decides which container and when containers start and stop:

- A connection takes one slot of a container (a container has `@concurrent(max_inputs)` slots,
  1 by default, as on Modal) until it closes or moves to another label.
- With no free slot, a container starts (up to `max_containers`) and the request is held until it
  is ready: a cold start on request, never an error. When all containers are busy at
  `max_containers`, requests wait for a slot.
- `min_containers` start with the app and stay warm; a container with no connection for
  `scaledown_window` stops, down to zero. The next request wakes the function again.
- A container that dies is dropped, and the next request gets another one.
"""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any, Callable

from . import _protocol as P
from .exception import ExecutionError

ACQUIRE_TIMEOUT = 300.0  # how long a request may wait for a container before a 503


class WebContainer:
    def __init__(self, handle: Any, conn: P.Connection, address: tuple[str, int], number: int):
        self.handle, self.conn, self.address, self.number = handle, conn, address, number
        self.inflight = 0
        self.idle_since = time.monotonic()
        self.stopping = False


class WebPool:
    """The containers of one web function, handed out by the front door one connection at a time."""

    def __init__(self, session: Any, target: Any, label: str):
        self.session, self.target, self.label, self.name = session, target, label, target.name
        self.opts = target.options
        self.slots = max(1, target.concurrency)
        self.max_containers = max(self.opts.max_containers or session.provider.default_max_containers,
                                  self.opts.min_containers)
        self.containers: list[WebContainer] = []
        self.starting = 0
        self.waiting = 0
        self.error: BaseException | None = None  # the last start failure, for requests that waited on it
        self.failures = 0
        self.numbers = itertools.count(1)
        self.cond = threading.Condition()
        self._start(self.opts.min_containers)

    # ---- the front door's side -------------------------------------------------------------
    def try_acquire(self) -> tuple[str, int, Callable[[], None]] | None:
        """A free slot now, or None (then call `acquire`, off the front door's event loop)."""
        with self.cond:
            return self._take()

    def acquire(self, timeout: float = ACQUIRE_TIMEOUT) -> tuple[str, int, Callable[[], None]]:
        """A slot of a ready container, starting one if none is free; waits while it starts."""
        deadline = time.monotonic() + timeout
        with self.cond:
            self.waiting += 1
            failures = self.failures
            try:
                while True:
                    got = self._take()
                    if got is not None:
                        return got
                    if self.session.closed:
                        raise ExecutionError("the app has stopped")
                    if self.failures > failures and not self._live():
                        # A start this request waited for failed: it gets the error; the next
                        # request tries again.
                        raise ExecutionError(f"{self.name} could not start: {self.error}")
                    self._start(self._wanted())
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise ExecutionError(f"{self.name}: no container became free within {timeout:g}s")
                    self.cond.wait(min(left, 1.0))
            finally:
                self.waiting -= 1

    def _take(self) -> tuple[str, int, Callable[[], None]] | None:
        free = [c for c in self.containers if not c.stopping and c.inflight < self.slots]
        if not free:
            return None
        c = min(free, key=lambda c: c.inflight)  # spread connections over containers
        c.inflight += 1
        host, port = c.address
        return host, port, lambda: self._release(c)

    def _release(self, c: WebContainer) -> None:
        with self.cond:
            c.inflight -= 1
            if c.inflight == 0:
                c.idle_since = time.monotonic()
            self.cond.notify_all()

    def _live(self) -> list[WebContainer]:
        return [c for c in self.containers if not c.stopping]

    def _wanted(self) -> int:
        """Containers to start now: enough for every waiting request, within max_containers."""
        free = sum(self.slots - c.inflight for c in self._live())
        need = -(-max(0, self.waiting - free) // self.slots) - self.starting
        room = self.max_containers - len(self._live()) - self.starting
        return max(0, min(need, room))

    # ---- containers ------------------------------------------------------------------------
    def _start(self, count: int) -> None:
        """Start `count` containers, each in a thread of its own (call with the lock held)."""
        self.starting += count
        for _ in range(count):
            threading.Thread(target=self._launch, name=f"runner-web-{self.label}", daemon=True).start()

    def _launch(self) -> None:
        number = next(self.numbers)
        try:
            c = self._container(number)
        except BaseException as exc:  # noqa: BLE001 - the waiting requests report it
            with self.cond:
                self.starting -= 1
                self.failures += 1
                self.error = getattr(exc, "exc", exc)  # InitFailed carries the user's exception
                self.cond.notify_all()
            return
        with self.cond:
            self.starting -= 1
            if self.session.closed:
                c.stopping = True
            self.containers.append(c)
            self.cond.notify_all()
        if c.stopping:
            self._retire(c)

    def _container(self, number: int) -> WebContainer:
        """Start one container and bring it to ready (in the caller's thread)."""
        handle, conn, ready = self.session.launch(self, number)
        return WebContainer(handle, conn, self.session.provider.address(handle, ready["web_port"]), number)

    def _retire(self, c: WebContainer) -> None:
        """Stop a container this pool no longer uses."""
        self.session.stop_container(c)

    def tick(self, now: float) -> float | None:
        """Drop dead containers; stop those idle past scaledown_window, down to min_containers."""
        provider = self.session.provider
        stop = []
        with self.cond:
            for c in list(self.containers):
                if c.stopping or not provider.alive(c.handle):
                    self.containers.remove(c)
                    if not c.stopping:
                        self.session.provider_stop(c)
            idle = sorted((c for c in self._live() if c.inflight == 0), key=lambda c: c.idle_since)
            spare = len(self._live()) - self.opts.min_containers
            due = None
            for c in idle[:max(0, spare)]:
                when = c.idle_since + self.opts.scaledown_window
                if when <= now:
                    c.stopping = True
                    stop.append(c)
                else:
                    due = when if due is None else min(due, when)
            if len(self._live()) + self.starting < self.opts.min_containers:
                self._start(self.opts.min_containers - len(self._live()) - self.starting)
        for c in stop:
            self.session.stop_container(c)
        return due

    def warm(self) -> bool | None:
        """True once `min_containers` are ready; None if a start failed (nothing to wait for)."""
        with self.cond:
            if self.failures:
                return None
            return len(self._live()) >= self.opts.min_containers

    def close(self) -> list[WebContainer]:
        with self.cond:
            containers = list(self.containers)
            for c in containers:
                c.stopping = True
            self.cond.notify_all()
        return containers
