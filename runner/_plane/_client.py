"""The caller's side of the queue plane: `QueuePool`, with the interface of a local run's pool
(runner._session.Pool), so `.remote`, `.map`, `.spawn` and the rest work through it unchanged;
and `QueuedCall` / `find_call` for spawned calls found by id from any process.
"""

from __future__ import annotations

import os
import pickle
import secrets
import socket
import threading
import time
from typing import Any

from .. import _protocol as P
from .._aio import twin
from .._function import Function, FunctionCall, Target, _outcome
from .._session import LOCAL_ERR, Input
from ..exception import ExecutionError, FunctionTimeoutError, InputCancellation, InvalidError, TimeoutError
from . import _wire as W

CHUNK_SECONDS = 0.005  # map items per entry: about this much work on a worker
MAX_CHUNK = 512
REFRESH = 10.0  # seconds between refreshes of the result stream's expiry


def _redis_client(url: str):
    from .._store._redis import _import_redis

    return _import_redis().Redis.from_url(url)


class _WorkerView:
    """What Target.init_message asks of a provider: where workers see the app's source, and (for a
    web function's pods) where its server listens."""

    def __init__(self, app_root: str | None, web: Any = None):
        self.app_root, self.web = app_root, web

    def container_path(self, host_path: str) -> str:
        return self.app_root or host_path

    def web_bind(self, port: int):
        if self.web is None:  # pragma: no cover - web functions are refused before this
            raise InvalidError("web functions are not served through the queue plane")
        return self.web.web_bind(port)


class PlaneSession:
    """What FunctionCall and the call API look at on a pool's session."""

    def __init__(self):
        self.calls: dict[str, Any] = {}
        self.closed = False


def register(r, keys: W.Keys, target: Target, app_root: str | None, lease: float,
             secrets_in_spec: bool = True, web: Any = None) -> None:
    """Put the function's INIT spec and blobs where its workers read them, and its input stream.
    `secrets_in_spec=False`: the spec carries no secret values (the workers' environment has them,
    e.g. from Kubernetes Secrets the pod references). `web`: for a web function, whose `web_bind`
    says where its pods' server listens (its workers run in mode "web" and take no inputs)."""
    if target.web is not None and web is None:
        raise InvalidError(f"{target.name} is a web function; the queue plane carries inputs, not HTTP requests")
    spec, blobs = target.init_message(_WorkerView(app_root, web))
    from .._image import local_python

    spec["client_python"] = local_python()  # the worker checks its image's against it
    if not secrets_in_spec:
        spec["secret_env"] = {}
    retries = target.options.retries
    r.hset(keys.spec, mapping={"spec": pickle.dumps(spec), "blobs": pickle.dumps(blobs),
                               "retries": pickle.dumps(retries) if retries is not None else b"",
                               "lease": repr(float(lease)), "max_inputs": str(target.max_inputs)})
    try:
        r.xgroup_create(keys.inputs, W.GROUP, id="0", mkstream=True)
    except Exception as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def remove_function(url: str, key: str) -> int:
    """Delete a function's keys (spec, inputs, retries, cancels, workers), e.g. when an ephemeral
    app's run ends; inputs still queued are lost, so callers do it once nothing is owed. The
    number of keys removed. A tombstone (rq:f:F:ended, for a day) tells workers that start later
    (a pod scaled up as the run ended) to exit instead of waiting for the function."""
    k = W.Keys(key)
    r = _redis_client(url)
    try:
        pipe = r.pipeline(transaction=True)
        pipe.delete(k.spec, k.inputs, k.delayed, k.cancel, k.workers, k.ready)
        pipe.set(k.ended, 1, ex=W.CALL_TTL)
        return pipe.execute()[0]
    finally:
        r.close()


def _local_error(status: str, name: str, what: str, timeout: float | None = None) -> BaseException | None:
    if status == P.TIMEOUT:
        after = f" after {timeout:g}s" if timeout else ""
        return FunctionTimeoutError(f"{name} timed out{after} ({what})")
    if status == W.EXPIRED:
        return FunctionTimeoutError(f"{name}: {what} was not started before its deadline")
    if status == P.CANCELLED:
        return InputCancellation(f"{what} of {name} was cancelled")
    return None


class QueuePool:
    """One function's inputs through the queue: submitted as stream entries, results read from
    this caller's result stream by one thread and handed to each input's sink."""

    def __init__(self, target: Target, url: str, *, key: str | None = None, app_root: str | None = None,
                 lease: float = 10.0, deadline: float | None = None, secrets_in_spec: bool = True,
                 registered: bool = False):
        self.target, self.url, self.name = target, url, target.name
        self.keys = W.Keys(key or target.name)
        self.deadline = deadline  # seconds after enqueueing past which an input is not started
        self.r = _redis_client(url)
        self._rr = _redis_client(url)  # the reader's blocking XREAD, on its own connection
        self.session = PlaneSession()
        self.caller = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
        self.reply = W.reply_key(self.caller)
        self.lock = threading.Lock()
        self.live: dict[str, Input] = {}
        self.ema: float | None = None
        self.duplicates = 0  # results dropped because their input had finished already
        self._soft: list[str] = []
        if not registered:  # `registered`: a deployed function's spec, put there by its deploy
            register(self.r, self.keys, target, app_root, lease, secrets_in_spec)
        pipe = self.r.pipeline(transaction=True)
        pipe.xadd(self.reply, {"h": b""})  # the stream exists from now on: workers write with NOMKSTREAM
        pipe.xtrim(self.reply, maxlen=0)
        pipe.expire(self.reply, W.REPLY_TTL)
        pipe.execute()
        self._reader = threading.Thread(target=self._read, name=f"plane-results-{self.name}", daemon=True)
        self._reader.start()

    # ---- intake ------------------------------------------------------------------------------
    def submit(self, inputs: list[Input]) -> None:
        if self.session.closed:
            raise ExecutionError("the queue pool is closed; no more inputs are accepted")
        now = time.time()
        deadline = now + self.deadline if self.deadline else None
        pipe = self.r.pipeline(transaction=False)
        with self.lock:
            for inp in inputs:
                store = isinstance(inp.sink, FunctionCall)
                if store:
                    inp.id = inp.sink.object_id  # its record is found by this id, from any process
                    pipe.hset(W.call_key(inp.id), mapping={"fn": self.keys.fn, "name": self.name, "at": now})
                    pipe.expire(W.call_key(inp.id), W.CALL_TTL)
                inp.sent_at = now
                self.live[inp.id] = inp
                head = W.input_header(inp.id, self.reply, inp.method, inp.kind, inp.weight, 0, store, now, deadline)
                pipe.xadd(self.keys.inputs, {"h": head, "b": inp.blob})
        pipe.execute()

    def cancel(self, inp: Input, soft: bool = False) -> None:
        """Cancel an input. Soft (a map left early): skipped if it has not started, and its result
        dropped; hard: also stopped where it runs, and the caller sees InputCancellation now."""
        inp.cancelled = True
        with self.lock:
            if self.live.pop(inp.id, None) is None:
                return
            if soft:
                self._soft.append(inp.id)  # sent by the reader thread, many at once
                return
        pipe = self.r.pipeline(transaction=False)
        pipe.hset(self.keys.cancel, inp.id, "hard")
        pipe.expire(self.keys.cancel, W.CANCEL_TTL)
        pipe.execute()
        inp.sink.deliver(inp, LOCAL_ERR, InputCancellation(f"{inp.describe()} of {self.name} was cancelled"), None)

    def chunk_size(self) -> int:
        """Map items per entry: about CHUNK_SECONDS of work, for plain fast functions only (as in
        Pool.chunk_size: functions with retries or concurrency get single inputs)."""
        if self.ema is None or self.target.options.retries is not None or self.target.max_inputs > 1:
            return 1
        return max(1, min(MAX_CHUNK, int(CHUNK_SECONDS / max(self.ema, 1e-7))))

    # ---- results -----------------------------------------------------------------------------
    def _read(self) -> None:
        last, refreshed = "0-0", time.monotonic()
        while not self.session.closed:
            try:
                got = self._rr.xread({self.reply: last}, count=2048, block=250)
                if got:
                    entries = got[0][1]
                    last = entries[-1][0]
                    self._deliver(entries)
                pipe = None
                if got or self._soft or time.monotonic() - refreshed > REFRESH:
                    pipe = self.r.pipeline(transaction=False)
                    if got:
                        pipe.xtrim(self.reply, minid=last)
                    if time.monotonic() - refreshed > REFRESH:
                        pipe.expire(self.reply, W.REPLY_TTL)
                        refreshed = time.monotonic()
                    with self.lock:
                        soft, self._soft = self._soft, []
                    if soft:
                        pipe.hset(self.keys.cancel, mapping={i: "soft" for i in soft})
                        pipe.expire(self.keys.cancel, W.CANCEL_TTL)
                    pipe.execute()
            except Exception:  # noqa: BLE001 - the server went away for a moment: go on
                if self.session.closed:
                    return
                time.sleep(0.2)

    def _deliver(self, entries: list) -> None:
        deliveries, splits = [], []
        with self.lock:
            for _, fields in entries:
                head = fields.get(b"h")
                if not head:
                    continue
                input_id, status, tb, seq, per_item = pickle.loads(head)
                inp = self.live.get(input_id)
                if inp is None:
                    self.duplicates += 1
                    continue
                blob = fields.get(b"b", b"")
                if status == P.GEN_ITEM:
                    if seq != inp.items:  # an item of an earlier delivery of the same input
                        self.duplicates += 1
                        continue
                    inp.items += 1
                    deliveries.append((inp, status, blob, None))
                    continue
                del self.live[input_id]
                if per_item:
                    self.ema = per_item if self.ema is None else 0.8 * self.ema + 0.2 * per_item
                if status == W.SPLIT:
                    splits.append(inp)
                    continue
                err = _local_error(status, self.name, inp.describe(), self.target.options.timeout)
                if err is not None:
                    deliveries.append((inp, LOCAL_ERR, err, None))
                else:
                    deliveries.append((inp, status, blob, tb))
        for d in deliveries:
            d[0].sink.deliver(*d)
        for chunk in splits:
            self._split(chunk)

    def _split(self, chunk: Input) -> None:
        """A chunk's items as single inputs (one of them timed out, or its worker's agent died)."""
        from .._serialization import split_chunk

        self.submit([Input(chunk.method, blob, chunk.sink, index=chunk.index + k)
                     for k, blob in enumerate(split_chunk(chunk.blob))])

    def close(self) -> None:
        """Stop reading results and remove this caller's result stream. Inputs still waiting fail
        here; spawned calls go on and keep their results in Redis (find_call)."""
        with self.lock:
            if self.session.closed:
                return
            self.session.closed = True
            waiting = [i for i in self.live.values() if not isinstance(i.sink, FunctionCall)]
            self.live.clear()
        self._reader.join(2)
        for inp in waiting:
            inp.sink.deliver(inp, LOCAL_ERR, ExecutionError(f"the queue pool closed before {inp.describe()} finished"),
                             None)
        try:
            self.r.delete(self.reply)
        finally:
            self.r.close()
            self._rr.close()

    def __enter__(self) -> QueuePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _QueuedFunction(Function):
    """A Function whose calls go through a QueuePool."""

    def _pool(self):
        return self._queue_pool


def through_queue(fn: Function, url: str, **kwargs: Any) -> Function:
    """`fn`, with `.remote`, `.map`, `.spawn`, ... going through the queue at `url` (a QueuePool
    made with `kwargs`; it is `returned._queue_pool`, to close when done)."""
    bound = object.__new__(_QueuedFunction)
    bound.__dict__.update(fn.__dict__)
    bound._queue_pool = QueuePool(fn._target(), url, **kwargs)
    return bound


# ---- spawned calls, from any process -----------------------------------------------------------
class QueuedCall(FunctionCall):
    """A spawned call found by id: its result is read from its record in Redis."""

    def __init__(self, call_id: str, url: str, record: dict):  # no pool here
        self.object_id, self._url = call_id, url
        self._name = record.get(b"name", b"call").decode()
        self._fn = record.get(b"fn", b"").decode()
        self._input = None
        self.closed = False

    def _result_now(self, r) -> tuple | None:
        value = r.hget(W.call_key(self.object_id), "r")
        if value is None:
            return None
        head, blob = W.unpack(value)
        _, status, tb, _, _ = pickle.loads(head)
        err = _local_error(status, self._name, self.object_id)
        return (LOCAL_ERR, err, None) if err is not None else (status, blob, tb)

    def _get(self, timeout: float | None = None) -> Any:
        r = _redis_client(self._url)
        try:
            end = None if timeout is None else time.monotonic() + timeout
            while True:
                got = self._result_now(r)
                if got is not None:
                    return _outcome(self._name, *got)
                left = 1.0 if end is None else min(1.0, end - time.monotonic())
                if left <= 0:
                    raise TimeoutError(f"{self.object_id} ({self._name}) did not finish within {timeout:g}s")
                if r.blpop([W.call_done_key(self.object_id)], timeout=max(0.01, left)):
                    r.rpush(W.call_done_key(self.object_id), 1)  # for any other process waiting
        finally:
            r.close()

    async def _get_aio(self, timeout: float | None = None) -> Any:
        import asyncio

        return await asyncio.to_thread(self._get, timeout)

    get = twin("_get_aio")(_get)

    def _cancel(self, terminate_containers: bool = False) -> None:
        r = _redis_client(self._url)
        try:
            r.hset(W.Keys(self._fn).cancel, self.object_id, "hard")
            r.expire(W.Keys(self._fn).cancel, W.CANCEL_TTL)
        finally:
            r.close()

    async def _cancel_aio(self, terminate_containers: bool = False) -> None:
        self._cancel(terminate_containers)

    cancel = twin("_cancel_aio")(_cancel)


def find_call(call_id: str, url: str) -> QueuedCall | None:
    """A call spawned through the queue at `url`, by its id (`FunctionCall.object_id`), from any
    process that reaches the server; None if there is no such call (or its record expired)."""
    if not call_id.startswith("fc-"):
        return None
    r = _redis_client(url)
    try:
        record = r.hgetall(W.call_key(call_id))
    finally:
        r.close()
    return QueuedCall(call_id, url, record) if record else None
