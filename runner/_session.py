"""The input plane on the client: one Session per running app, one Pool of warm containers per
function (or class with its parameters).

Inputs are serialized by the caller, queued in the pool and sent to containers in batches over
one framed connection each. A container holds at most `window` inputs: its concurrency plus a
prefetch sized to keep about 20 ms of work queued, so trivial functions travel hundreds to a
frame while slow ones spread across containers. Containers scale with the backlog, from
`min_containers` (+ `buffer_containers` while busy) to `max_containers`, and stop after
`scaledown_window` idle.

Failures: a user exception or a timeout is retried per the function's `Retries`; a container that
dies takes its in-flight inputs with it, and those are retried or failed with an error that names
the input, except the ones that were only queued behind an input the agent stopped on purpose
(a timeout or a cancel), which go back to the queue at no cost.

Results go to a sink chosen by the caller: a thread-safe queue for sync code, an asyncio queue for
`.aio` code, so nothing here depends on how the caller waits.
"""

from __future__ import annotations

import asyncio
import collections
import heapq
import itertools
import json
import math
import os
import queue
import secrets
import shutil
import socket
import tempfile
import threading
import time
from typing import Any, Callable

from . import _protocol as P
from ._image import local_python
from ._context import pid_alive
from ._output import output
from ._providers import PreparedImages
from .exception import (
    ExecutionError,
    FunctionTimeoutError,
    InputCancellation,
    RemoteError,
    VersionError,
)

LOCAL_ERR = "local_err"  # a status for errors made on the client; the payload is the exception
START_TIMEOUT = float(os.environ.get("RUNNER_START_TIMEOUT", "120"))
DRAIN_TARGET = 0.5  # seconds of backlog one container may hold before another is worth starting
PREFETCH_SECONDS = 0.02
MAX_PREFETCH = 1024
CHUNK_SECONDS = 0.005
MAX_CHUNK = 512
TICK = 0.1
WEB_URLS_ENV = "RUNNER_WEB_URLS"  # {function name: URL} of the run's web functions, in containers

_ids = itertools.count(1)
_prefix = secrets.token_hex(3)


def new_id(kind: str) -> str:
    return f"{kind}-{_prefix}{next(_ids):x}"


class Input:
    """One call, or with kind "chunk" a run of `weight` consecutive map items sent as one payload."""

    __slots__ = ("id", "method", "kind", "blob", "sink", "retries", "index", "container", "sent_at", "items",
                 "cancelled", "weight", "suspect")

    def __init__(self, method: str | None, blob: bytes, sink: Any, index: int | None = None, kind: str = "call",
                 weight: int = 1):
        self.id = new_id("in")
        self.method = method
        self.kind = kind
        self.blob = blob
        self.sink = sink
        self.retries = 0
        self.index = index
        self.container: Container | None = None
        self.sent_at = 0.0
        self.items = 0
        self.cancelled = False
        self.weight = weight
        self.suspect = False  # was in flight when a container crashed: runs alone until it settles

    def describe(self) -> str:
        return f"input {self.id}" + (f" (item {self.index} of the map)" if self.index is not None else "")


class QueueSink:
    """Results for sync callers: (input, status, payload, traceback) tuples on a SimpleQueue."""

    def __init__(self):
        self.q: queue.SimpleQueue = queue.SimpleQueue()
        self.closed = False

    def deliver(self, inp: Input, status: str, payload: Any, tb: str | None) -> None:
        if not self.closed:
            self.q.put((inp, status, payload, tb))


class AsyncSink:
    """Results for async callers, handed to their event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.q: asyncio.Queue = asyncio.Queue()
        self.closed = False

    def deliver(self, inp: Input, status: str, payload: Any, tb: str | None) -> None:
        if not self.closed:
            try:
                self.loop.call_soon_threadsafe(self.q.put_nowait, (inp, status, payload, tb))
            except RuntimeError:  # the caller's loop is gone
                pass


class Container:
    def __init__(self, pool: Pool, handle: Any, conn: P.Connection, number: int):
        self.pool = pool
        self.handle = handle
        self.conn = conn
        self.number = number
        self.inflight: dict[str, Input] = {}
        self.load = 0  # map items in flight: chunks count for all their items
        self.suspects = 0  # suspect inputs in flight (at most one, alone)
        self.idle_since = time.monotonic()
        self.last_output = 0.0
        self.dying: tuple[str, str] | None = None
        self.stopping = False


class _Waiter:
    def __init__(self):
        self.event = threading.Event()
        self.conn: P.Connection | None = None
        self.hello: dict = {}


class Listener:
    """The unix socket agents connect to; each says which container it is with its token."""

    def __init__(self, directory: str):
        self.path = os.path.join(directory, "agent.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        os.chmod(self.path, 0o777)  # containers may run as another user
        self.sock.listen(128)
        self.waiters: dict[str, _Waiter] = {}
        self.lock = threading.Lock()
        self.closed = False
        threading.Thread(target=self._accept, name="runner-listener", daemon=True).start()

    def expect(self, token: str) -> _Waiter:
        waiter = _Waiter()
        with self.lock:
            self.waiters[token] = waiter
        return waiter

    def forget(self, token: str) -> None:
        with self.lock:
            self.waiters.pop(token, None)

    def _accept(self) -> None:
        while not self.closed:
            try:
                sock, _ = self.sock.accept()
            except OSError:
                return
            sock.settimeout(10)
            conn = P.Connection(sock)
            try:
                hello, _ = conn.recv()
            except (P.ConnectionClosed, OSError):
                conn.close()
                continue
            sock.settimeout(None)
            with self.lock:
                waiter = self.waiters.pop(hello.get("token", ""), None)
            if waiter is None or hello.get("op") != P.HELLO:
                conn.close()
                continue
            waiter.conn, waiter.hello = conn, hello
            waiter.event.set()

    def close(self) -> None:
        self.closed = True
        try:
            self.sock.close()
        except OSError:
            pass


class InitFailed(Exception):
    def __init__(self, exc: BaseException):
        self.exc = exc


class Pool:
    """The warm containers serving one target, and the inputs waiting for them."""

    def __init__(self, session: Session, target: Any):
        self.session = session
        self.target = target
        self.opts = target.options
        self.name = target.name
        self.lock = threading.Lock()
        self.pending: collections.deque[Input] = collections.deque()
        self.delayed: list[tuple[float, int, Input]] = []
        self.containers: list[Container] = []
        self.starting = 0
        self.numbers = itertools.count(1)
        self.ema: float | None = None  # seconds of container time per input
        self.max_containers = self.opts.max_containers or session.provider.default_max_containers
        self.max_containers = max(self.max_containers, self.opts.min_containers)
        self.base = target.max_inputs
        self.failures = 0  # consecutive container starts that failed

    # ---- intake ----------------------------------------------------------------------------
    def submit(self, inputs: list[Input]) -> None:
        with self.lock:
            if self.session.closed:
                raise ExecutionError("the app has stopped; no more inputs are accepted")
            self.pending.extend(inputs)
            batches = self._assign()
            starts = self._scale()
        self._send(batches)
        self._start(starts)

    def cancel(self, inp: Input, soft: bool = False) -> None:
        """Cancel an input. A soft cancel (leaving a map) drops it if it has not started and lets
        it finish otherwise, so the container stays warm; a hard one stops it where it runs."""
        with self.lock:
            inp.cancelled = True
            container = inp.container
            if container is None:
                try:
                    self.pending.remove(inp)
                except ValueError:
                    self.delayed = [d for d in self.delayed if d[2] is not inp]
                    heapq.heapify(self.delayed)
        if container is None:
            inp.sink.deliver(inp, LOCAL_ERR, InputCancellation(f"{inp.describe()} of {self.name} was cancelled"), None)
        else:
            try:
                container.conn.send({"op": P.CANCEL, "input_id": inp.id, "soft": soft})
            except P.ConnectionClosed:
                pass

    # ---- dispatch --------------------------------------------------------------------------
    def window(self) -> int:
        if self.ema is None:  # no prefetch until an input's time is known: the containers starting with
            return self.base  # this one would otherwise find the first one up holding their inputs
        return self.base + min(MAX_PREFETCH, int(PREFETCH_SECONDS / max(self.ema, 1e-6)))

    def _assign(self) -> list[tuple[Container, list[Input]]]:
        batches = []
        if not self.pending:
            return batches
        window = self.window()
        now = time.monotonic()
        for c in sorted(self.containers, key=lambda c: c.load):
            free = window - c.load
            if c.stopping or free <= 0 or c.suspects:
                continue
            take = []
            while free > 0 and self.pending:
                if self.pending[0].suspect and (take or c.load):
                    break  # a suspect runs alone, so that a crash names the right input
                inp = self.pending.popleft()
                inp.container, inp.sent_at = c, now
                c.inflight[inp.id] = inp
                c.load += inp.weight
                take.append(inp)
                free -= inp.weight
                if inp.suspect:
                    c.suspects += 1
                    break
            if take:
                batches.append((c, take))
            if not self.pending:
                break
        return batches

    def _send(self, batches: list[tuple[Container, list[Input]]]) -> None:
        for c, inputs in batches:
            try:
                c.conn.send(
                    {"op": P.INPUTS, "items": [(i.id, i.method, i.kind) for i in inputs]}, [i.blob for i in inputs]
                )
            except P.ConnectionClosed:
                pass  # its reader thread sees the close and settles its inputs

    # ---- scaling ---------------------------------------------------------------------------
    def _scale(self) -> int:
        """How many containers to start now (called under the lock)."""
        if self.session.closed:
            return 0
        backlog = sum(i.weight for i in self.pending) + len(self.delayed) + sum(c.load for c in self.containers)
        want = 0
        if backlog:
            share = 1.0 if self.ema is None else min(1.0, self.ema / DRAIN_TARGET)
            want = math.ceil(backlog / self.base * share) + self.opts.buffer_containers
            if self.failures >= 3:
                want = min(want, 1)  # a broken image or start-up: no storm of attempts
        want = min(max(want, self.opts.min_containers), self.max_containers)
        have = len([c for c in self.containers if not c.stopping]) + self.starting
        starts = max(0, want - have)
        if self.failures >= 3 and self.starting:
            starts = 0
        self.starting += starts
        return starts

    def _start(self, count: int) -> None:
        for _ in range(count):
            threading.Thread(target=self._launch, name=f"runner-start-{self.name}", daemon=True).start()

    def _launch(self) -> None:
        number = next(self.numbers)
        try:
            handle, conn, _ = self.session.launch(self, number)
        except InitFailed as err:
            self._start_failed(err.exc, fatal=True)
            return
        except Exception as exc:  # noqa: BLE001 - reported to the inputs waiting
            self._start_failed(exc, fatal=False)
            return
        c = Container(self, handle, conn, number)
        with self.lock:
            self.starting -= 1
            self.failures = 0
            if self.session.closed:
                c.stopping = True
            else:
                self.containers.append(c)
            batches = self._assign()
        threading.Thread(target=self._read, args=(c,), name=f"runner-read-{self.name}-{number}", daemon=True).start()
        if c.stopping:
            self.session.stop_container(c)
            return
        self._send(batches)

    def _start_failed(self, exc: BaseException, fatal: bool) -> None:
        with self.lock:
            self.starting -= 1
            self.failures += 1
            # Fail waiting inputs when nothing else can serve them: the error is theirs to see.
            stranded = fatal or (not self.containers and not self.starting)
            failed = []
            if stranded:
                failed = list(self.pending) + [d[2] for d in self.delayed]
                self.pending.clear()
                self.delayed.clear()
            starts = self._scale() if not stranded else 0
        for inp in failed:
            inp.sink.deliver(inp, LOCAL_ERR, exc, None)
        self._start(starts)

    # ---- outputs ---------------------------------------------------------------------------
    def _read(self, c: Container) -> None:
        while True:
            try:
                header, blobs = c.conn.recv()
            except P.ConnectionClosed:
                break
            op = header["op"]
            if op == P.OUTPUTS:
                self._on_outputs(c, header["items"], blobs)
            elif op == P.DYING:
                c.dying = (header["reason"], header["input_id"])
        self._on_gone(c)

    def _on_outputs(self, c: Container, items: list, blobs: list) -> None:
        deliveries = []
        retry_now = False
        with self.lock:
            now = time.monotonic()
            if c.last_output and c.inflight:
                done = sum(c.inflight[i[0]].weight for i in items if i[0] in c.inflight) or 1
                per = (now - max(c.last_output, min(i.sent_at for i in c.inflight.values()))) / done
                self.ema = per if self.ema is None else 0.8 * self.ema + 0.2 * per
            c.last_output = now
            for (input_id, status, tb), blob in zip(items, blobs):
                inp = c.inflight.get(input_id)
                if inp is None:
                    continue
                if status == P.GEN_ITEM:
                    inp.items += 1
                    deliveries.append((inp, status, blob, None))
                    continue
                del c.inflight[input_id]
                c.load -= inp.weight
                c.suspects -= inp.suspect
                inp.container = None
                if status in (P.OK, P.GEN_DONE):
                    deliveries.append((inp, status, blob, None))
                elif status == P.CANCELLED:
                    deliveries.append((inp, LOCAL_ERR, InputCancellation(f"{inp.describe()} of {self.name} was cancelled"), None))
                elif inp.kind == "chunk" and status == P.TIMEOUT:
                    self._split(inp)  # one of its items ran too long: find out which, one by one
                elif self._retry(inp, now):
                    retry_now = True
                elif status == P.TIMEOUT:
                    err = FunctionTimeoutError(f"{self.name} timed out after {self.opts.timeout:g}s ({inp.describe()})")
                    deliveries.append((inp, LOCAL_ERR, err, None))
                else:
                    deliveries.append((inp, P.ERR, blob, tb))
            if not c.inflight:
                c.idle_since = now
            batches = self._assign()
        for d in deliveries:
            d[0].sink.deliver(*d)
        self._send(batches)
        if retry_now:
            self.session.wake()

    def chunk_size(self) -> int:
        """How many map items to send as one payload: about CHUNK_SECONDS of work, for plain fast
        functions only. Functions with retries or concurrency get single inputs, so every item
        keeps its own retry count and its own slot."""
        if self.ema is None or self.opts.retries is not None or self.base > 1:
            return 1
        return max(1, min(MAX_CHUNK, int(CHUNK_SECONDS / max(self.ema, 1e-7))))

    def _split(self, chunk: Input) -> None:
        """Put a chunk's items back in the queue as single inputs (called under the lock)."""
        from ._serialization import split_chunk

        singles = [
            Input(chunk.method, blob, chunk.sink, index=chunk.index + k)
            for k, blob in enumerate(split_chunk(chunk.blob))
        ]
        self.pending.extendleft(reversed(singles))

    def _retry(self, inp: Input, now: float) -> bool:
        """Schedule another attempt if the policy allows one (called under the lock)."""
        policy = self.opts.retries
        if inp.cancelled or inp.items or policy is None or inp.retries >= policy.max_retries:
            return False
        inp.retries += 1
        heapq.heappush(self.delayed, (now + policy.delay(inp.retries), next(_ids), inp))
        return True

    def _on_gone(self, c: Container) -> None:
        info = "" if c.stopping else self.session.provider.exit_info(c.handle)
        deliveries = []
        with self.lock:
            if c in self.containers:
                self.containers.remove(c)
            now = time.monotonic()
            orphans = list(c.inflight.values())
            c.inflight.clear()
            c.load = c.suspects = 0
            requeue: list[Input] = []
            # Which input brought the container down? If no more were in flight than it runs at
            # once, each of them may have; otherwise outputs still unsent may have died with it,
            # so nobody is charged and each goes again alone, where a second crash is exact.
            singles = [i for i in orphans if i.kind != "chunk"]
            blame = len(singles) <= self.base
            for inp in orphans:
                inp.container = None
                if inp.cancelled:
                    err = InputCancellation(f"{inp.describe()} of {self.name} was cancelled")
                    deliveries.append((inp, LOCAL_ERR, err, None))
                elif self.session.closed:
                    err = ExecutionError(f"the app stopped before {inp.describe()} finished")
                    deliveries.append((inp, LOCAL_ERR, err, None))
                elif inp.kind == "chunk":
                    self._split(inp)  # a chunk is only an optimisation: its items go on as single inputs
                elif c.dying is not None:
                    if c.dying[1] != inp.id:
                        requeue.append(inp)  # queued behind the input the agent stopped on purpose
                elif not blame:
                    inp.suspect = True
                    requeue.append(inp)
                elif not self._retry(inp, now):
                    err = RemoteError(
                        f"container {c.number} of {self.name} ended ({info or 'it exited'}) while running "
                        f"{inp.describe()}, and no retries are left"
                    )
                    deliveries.append((inp, LOCAL_ERR, err, None))
            self.pending.extendleft(reversed(requeue))
            batches = self._assign()
            starts = self._scale()
        for d in deliveries:
            d[0].sink.deliver(*d)
        self.session.provider_stop(c)
        self._send(batches)
        self._start(starts)
        self.session.wake()

    # ---- housekeeping ----------------------------------------------------------------------
    def tick(self, now: float) -> float | None:
        """Release due retries, enforce the timeout backstop, scale down idle containers."""
        stop, kill = [], []
        with self.lock:
            while self.delayed and self.delayed[0][0] <= now:
                self.pending.appendleft(heapq.heappop(self.delayed)[2])
            limit = self.opts.timeout
            for c in self.containers:
                if c.inflight:
                    oldest = min(i.sent_at for i in c.inflight.values())
                    depth = math.ceil(c.load / self.base)
                    if now - oldest > limit * depth + 30:
                        kill.append(c)  # the agent's own watchdog did not answer: it is stuck
            idle = [c for c in self.containers if not c.inflight and not c.stopping]
            keep = max(self.opts.min_containers, 0)
            for c in sorted(idle, key=lambda c: c.idle_since):
                if len(self.containers) - len(stop) <= keep:
                    break
                if now - c.idle_since >= self.opts.scaledown_window and not self.pending:
                    c.stopping = True
                    stop.append(c)
            batches = self._assign()
            starts = self._scale()
            due = self.delayed[0][0] if self.delayed else None
        for c in stop:
            self.session.stop_container(c)
        for c in kill:
            self.session.provider_stop(c)
        self._send(batches)
        self._start(starts)
        return due

    def warm(self) -> bool | None:
        """True once `min_containers` are ready; None if a start failed (nothing to wait for)."""
        with self.lock:
            if self.failures:
                return None
            return len([c for c in self.containers if not c.stopping]) >= self.opts.min_containers

    def close(self) -> list[Container]:
        with self.lock:
            failed = list(self.pending) + [d[2] for d in self.delayed]
            self.pending.clear()
            self.delayed.clear()
            containers = list(self.containers)
            for c in containers:
                c.stopping = True
        for inp in failed:
            inp.sink.deliver(inp, LOCAL_ERR, ExecutionError(f"the app stopped before {inp.describe()} ran"), None)
        return containers


def _sweep_session_dirs() -> None:
    """Remove the socket directories of clients that died without cleaning up (SIGKILL)."""
    root = tempfile.gettempdir()
    try:
        names = os.listdir(root)
    except OSError:
        return
    for name in names:
        parts = name.split("-")
        if len(parts) == 3 and parts[0] == "runner" and parts[1].isdigit() and not pid_alive(int(parts[1])):
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)


def _quietly(fn: Callable[[], None]) -> None:
    try:
        fn()
    except Exception:  # noqa: BLE001 - one failing cleanup must not stop the others
        pass


class _WebRouter:
    """The front door's view of the run: a label's pool hands out container slots."""

    def __init__(self, session: Session):
        import concurrent.futures

        self.session = session
        self.waits = concurrent.futures.ThreadPoolExecutor(max_workers=256, thread_name_prefix="runner-web-wait")

    def labels(self) -> list[str]:
        return sorted(self.session.web_pools)

    async def acquire(self, label: str):
        pool = self.session.web_pools[label]  # KeyError: the front door answers 404
        got = pool.try_acquire()
        if got is not None:
            return got
        waiting = self.waits.submit(pool.acquire)
        try:
            return await asyncio.wrap_future(waiting)
        except asyncio.CancelledError:  # the client left (or the door stopped) while it waited
            waiting.add_done_callback(_release_unused)
            raise


def _release_unused(done) -> None:
    """A slot taken for a request that is gone goes straight back."""
    if not done.cancelled() and done.exception() is None:
        done.result()[2]()


class Session:
    """Everything one running app holds: its provider, listener, pools and spawned calls."""

    def __init__(self, app_name: str, provider: Any):
        self.app_name = app_name
        self.provider = provider
        self.id = new_id("ap")
        _sweep_session_dirs()
        self.dir = tempfile.mkdtemp(prefix=f"runner-{os.getpid()}-")
        os.chmod(self.dir, 0o755)
        self.listener = Listener(self.dir)
        self.pools: dict[Any, Pool] = {}
        self._making: dict[Any, threading.Lock] = {}  # target key -> held while its queue pool is made
        self.calls: dict[str, Any] = {}
        self.prepare = PreparedImages(provider)  # image -> what the provider starts from, once per app run
        self.lock = threading.Lock()
        self.closed = False
        self._wake = threading.Event()
        self._all: set[Any] = set()  # every container handle started, stopped or not
        self._on_close: list[Callable[[], None]] = []  # e.g. terminating the app's sandboxes
        self.web_pools: dict[str, Any] = {}  # label -> WebPool
        self.web_env: dict[str, str] = {}  # what containers need to answer get_web_url()
        self.front_door: Any = None
        threading.Thread(target=self._housekeeping, name="runner-housekeeping", daemon=True).start()

    def pool(self, target: Any) -> Pool:
        if hasattr(self.provider, "queue_pool"):  # a cluster: pods pull inputs from its queue
            return self._queue_pool(target)
        with self.lock:
            pool = self.pools.get(target.key)
            if pool is None:
                if self.closed:
                    raise ExecutionError("the app has stopped")
                pool = self.pools[target.key] = Pool(self, target)
                starts = 0
                if target.options.min_containers:
                    with pool.lock:
                        starts = pool._scale()
                pool._start(starts)
            return pool

    def _queue_pool(self, target: Any) -> Any:
        """The provider's pool for `target`, made once. Making one builds and pushes an image, so it
        happens under a lock of the target's own: other functions' calls are not held up by it."""
        with self.lock:
            pool = self.pools.get(target.key)
            if pool is not None:
                return pool
            if self.closed:
                raise ExecutionError("the app has stopped")
            making = self._making.setdefault(target.key, threading.Lock())
        with making:
            with self.lock:
                pool = self.pools.get(target.key)
            if pool is None:
                pool = self.provider.queue_pool(self, target)
                with self.lock:
                    closed = self.closed
                    if not closed:
                        self.pools[target.key] = pool
                if closed:
                    pool.close()
                    raise ExecutionError("the app has stopped")
            return pool

    def launch(self, pool: Any, number: int) -> tuple[Any, P.Connection, dict]:
        """Start one container for `pool` and bring it to ready (in the caller's thread); return its
        handle, its connection and its ready message."""
        from ._mounts import storage_access
        from ._providers import ContainerRequest

        target = pool.target
        prepared = self.prepare(target.image)
        storage_env, binds = storage_access(dict(target.options.volumes), self.provider.name)
        token = secrets.token_hex(12)
        waiter = self.listener.expect(token)
        req = ContainerRequest(
            name=target.name,
            image=target.image,
            env={**target.env(), **storage_env, **self.web_env},
            cpu=target.options.cpu,
            memory=target.options.memory,
            gpu=target.options.gpu,
            token=token,
            socket_dir=self.dir,
            socket_name=os.path.basename(self.listener.path),
            app_root=target.app_root,
            session=self.id,
            binds=binds,
            ports=target.web_ports(self.provider),
        )
        if self.closed:
            raise ExecutionError("the app has stopped")
        output().status(f"starting container {number} for {target.name}")
        handle = self.provider.start(req, prepared)
        with self.lock:
            self._all.add(handle)
        try:
            deadline = time.monotonic() + START_TIMEOUT
            while not waiter.event.wait(0.05):
                if self.closed:
                    raise ExecutionError("the app has stopped")
                if not self.provider.alive(handle):
                    raise ExecutionError(
                        f"the container for {target.name} exited before its agent connected "
                        f"({self.provider.exit_info(handle)}); its output is above"
                    )
                if time.monotonic() > deadline:
                    raise ExecutionError(f"the container for {target.name} did not start within {START_TIMEOUT:g}s")
            conn = waiter.conn
            if waiter.hello.get("python") != local_python():
                raise InitFailed(
                    VersionError(
                        f"{target.name}: the image runs Python {waiter.hello.get('python')} but this client runs "
                        f"Python {local_python()}; they must match (use Image.debian_slim(python_version="
                        f"'{local_python()}') or run runner under Python {waiter.hello.get('python')})"
                    )
                )
            spec, blobs = target.init_message(self.provider)
            conn.send({"op": P.INIT, "spec": spec}, blobs)
            header, got = conn.recv()
            if header["op"] == P.INIT_FAILED:
                from ._serialization import decode_error

                raise InitFailed(decode_error(got[0], header.get("tb"), target.name))
            return handle, conn, header
        except BaseException:
            self.listener.forget(token)
            self._stop_handle(handle)
            raise

    def stop_container(self, c: Container) -> None:
        """Ask a container to stop (running @exit hooks); force it after a grace period."""
        c.stopping = True
        try:
            c.conn.send({"op": P.SHUTDOWN})
        except P.ConnectionClosed:
            pass

        def reap():
            time.sleep(35)
            self.provider_stop(c)

        threading.Thread(target=reap, daemon=True).start()

    def provider_stop(self, c: Container) -> None:
        self._stop_handle(c.handle)

    def _stop_handle(self, handle: Any) -> None:
        try:
            self.provider.stop(handle)
        except Exception:  # noqa: BLE001 - stopping is best effort; close() retries
            pass

    def wake(self) -> None:
        self._wake.set()

    def _housekeeping(self) -> None:
        while not self.closed:
            now = time.monotonic()
            nearest = now + TICK
            for pool in list(self.pools.values()):
                due = pool.tick(now)
                if due is not None:
                    nearest = min(nearest, due)
            self._wake.wait(max(0.0, nearest - time.monotonic()))
            self._wake.clear()

    def serve_web(self, functions: list[tuple[str, Any, str]], port: int = 0, sock: Any = None,
                  hold: bool = False) -> None:
        """Put web functions ([(name, target, label)]) behind this run's front door, live at once
        (`hold`: once `front_door.open()` is called); `sock`: a listening socket to serve on (a
        deployed app's, handed over from its previous version)."""
        from ._frontdoor import FrontDoor
        from ._webpool import WebPool

        if not functions:
            return
        self._router = _WebRouter(self)
        self.front_door = FrontDoor(self._router, port=port, sock=sock)
        self.front_door.start(serving=not hold)
        self.web_env = {WEB_URLS_ENV: json.dumps({name: f"{self.front_door.url}/{label}" for name, _, label in functions})}
        make = getattr(self.provider, "web_pool", WebPool)
        for name, target, label in functions:
            with self.lock:
                pool = self.web_pools[label] = make(self, target, label)
                self.pools[("web", target.key)] = pool
            output().status(f"{name}: {self.front_door.url}/{label}")

    def warm_up(self, targets: list[Any], timeout: float = START_TIMEOUT) -> None:
        """Start the `min_containers` of these targets and of the web functions, and wait (up to
        `timeout`) until they are ready: a deployed version takes over only once it is warm."""
        pools = [self.pool(t) for t in targets if t.options.min_containers] + list(self.web_pools.values())
        deadline = time.monotonic() + timeout
        for pool in pools:
            while time.monotonic() < deadline and not self.closed and pool.warm() is False:
                time.sleep(0.05)

    def web_url(self, label: str) -> str | None:
        return f"{self.front_door.url}/{label}" if self.front_door is not None and label in self.web_pools else None

    def on_close(self, fn: Callable[[], None]) -> None:
        """Call `fn` (in a thread of its own, errors ignored) when the app stops."""
        with self.lock:
            if self.closed:
                raise ExecutionError("the app has stopped")
            self._on_close.append(fn)

    def close(self) -> None:
        """Stop every container (their @exit hooks run), then remove whatever is left."""
        with self.lock:
            if self.closed:
                return
            self.closed = True
        self._wake.set()
        if self.front_door is not None:
            self.front_door.stop()
            self._router.waits.shutdown(wait=False, cancel_futures=True)
        containers = [c for pool in list(self.pools.values()) for c in pool.close()]
        for c in containers:
            try:
                c.conn.send({"op": P.SHUTDOWN})
            except P.ConnectionClosed:
                pass
        deadline = time.monotonic() + 10
        for c in containers:
            while self.provider.alive(c.handle) and time.monotonic() < deadline:
                time.sleep(0.02)
        with self.lock:
            handles = list(self._all)
        threads = [threading.Thread(target=self._stop_handle, args=(h,)) for h in handles]
        threads += [threading.Thread(target=_quietly, args=(fn,)) for fn in self._on_close]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        self.listener.close()
        try:
            self.provider.close()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
