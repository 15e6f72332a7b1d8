"""A queue worker: `python -m runner._plane.worker` (function key and Redis URL from the
environment, RUNNER_PLANE_FUNCTION and RUNNER_PLANE_URL, or --function / --url).

It reads the function's spec from Redis (registered by the client), starts runner's own agent
(`python -m runner._agent`) as a child speaking runner._protocol over a private unix socket, and
then moves inputs from the function's stream to the agent and outputs from the agent to each
caller's result stream (see runner._plane for the whole design). Threads:

- the main thread reads inputs (XREADGROUP ... COUNT n BLOCK), at most `window` items held;
- the agent reader turns the agent's OUTPUTS frames into Redis writes: results, retries, acks;
- the writer sends those writes in pipelines, everything finished since its last one at once;
- the heartbeat keeps the lease on held entries (XCLAIM JUSTID resets their idle time), claims the
  entries of dead workers (XAUTOCLAIM past the lease), moves due retries into the stream and
  forwards hard cancels to the agent.

The agent runs as a child, not in this process, because it ends its own process to stop a sync
input past its timeout; this worker then restarts it and sends it the inputs that were queued
behind, at no cost to their retries.
"""

from __future__ import annotations

import argparse
import os
import pickle
import queue
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

from .. import _protocol as P
from .._agent import ADDR_ENV, TOKEN_ENV, _dump_exc
from . import _wire as W

PREFETCH_SECONDS = 0.05  # items held beyond max_inputs: about this much work
MAX_PREFETCH = 4096
MAX_COUNT = 256  # entries per XREADGROUP
DRAIN_GRACE = 25.0  # seconds a SIGTERMed worker waits for what it holds


class Held:
    """An input entry this worker read and has not acknowledged yet."""

    __slots__ = (
        "blob",
        "cancelled",
        "deadline",
        "done",
        "eid",
        "enqueued",
        "header",
        "input_id",
        "items",
        "kind",
        "method",
        "reply",
        "retries",
        "sent",
        "sent_at",
        "store",
        "weight",
    )

    def __init__(self, eid: str, header: bytes, blob: bytes):
        (self.input_id, self.reply, self.method, self.kind, self.weight, self.retries, self.store, self.enqueued,
         self.deadline) = pickle.loads(header)
        self.eid, self.header, self.blob = eid, header, blob
        self.sent = False
        self.sent_at = 0.0
        self.items = 0
        self.cancelled = False
        self.done = False  # its outcome (a result or a retry) is on the way to Redis


def _redis():
    from .._store._redis import _import_redis

    return _import_redis()


class Worker:
    def __init__(self, url: str, fn: str):
        redis = _redis()
        self.url, self.keys = url, W.Keys(fn)
        self.r = redis.Redis.from_url(url)  # writer and heartbeat (the client is thread-safe)
        self.reader = redis.Redis.from_url(url)  # the blocking XREADGROUP, on a connection of its own
        self.name = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"
        self.lock = threading.Condition()
        self.held: dict[str, Held] = {}
        self.load = 0  # items held (a chunk counts all its items)
        self.conn: P.Connection | None = None
        self.child: subprocess.Popen | None = None
        self.dying: tuple[str, str] | None = None
        self.init_error: tuple[bytes, str] | None = None
        self.ema: float | None = None
        self.last_output = 0.0
        self.last_weight = 1
        self.writes: queue.SimpleQueue = queue.SimpleQueue()
        self.stopping = False
        self.spec: dict = {}
        self.retries: Any = None
        self.lease = 10.0
        self.base = 1
        self._dir = tempfile.mkdtemp(prefix="rq-worker-")
        self._spawned: tuple | None = None  # (listener, path, token) of an agent not yet connected

    # ---- set-up ----------------------------------------------------------------------------
    def load_spec(self, wait: float = 3600.0) -> None:
        """Wait for the client to register the function (workers may start first)."""
        end = time.monotonic() + wait
        while True:
            got = self.r.hgetall(self.keys.spec)
            if got.get(b"spec"):
                break
            if self.stopping or self.r.exists(self.keys.ended):  # its run ended before this worker came up
                print(f"runner worker: function {self.keys.fn!r} has ended; exiting", file=sys.stderr, flush=True)
                os._exit(0)
            if time.monotonic() > end:
                raise SystemExit(f"runner worker: function {self.keys.fn!r} was never registered")
            time.sleep(0.1)
        self.spec = pickle.loads(got[b"spec"])
        self.blobs = pickle.loads(got[b"blobs"])
        self.retries = pickle.loads(got[b"retries"]) if got.get(b"retries") else None
        self.lease = float(got.get(b"lease") or 10.0)
        self.base = max(1, int(got.get(b"max_inputs") or 1))
        try:
            self.r.xgroup_create(self.keys.inputs, W.GROUP, id="0", mkstream=True)
        except Exception as exc:  # BUSYGROUP: another worker or the client made it
            if "BUSYGROUP" not in str(exc):
                raise

    def spawn_agent(self) -> None:
        """Start the agent child; it imports while this process does other work (the spec)."""
        path = os.path.join(self._dir, f"agent-{secrets.token_hex(3)}.sock")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen(1)
        listener.settimeout(60)
        token = secrets.token_hex(8)
        env = {**os.environ, ADDR_ENV: f"unix:{path}", TOKEN_ENV: token}
        self.child = subprocess.Popen([sys.executable, "-m", "runner._agent"], env=env, stdin=subprocess.DEVNULL)
        self._spawned = (listener, path, token)

    def start_agent(self) -> None:
        """Bring the agent child (spawned now unless `spawn_agent` did already) to READY; on
        INIT_FAILED keep the error for the inputs."""
        if self._spawned is None:
            self.spawn_agent()
        listener, path, token = self._spawned
        self._spawned = None
        try:
            sock, _ = listener.accept()
        finally:
            listener.close()
            os.unlink(path)
        sock.settimeout(None)
        conn = P.Connection(sock)
        hello, _ = conn.recv()
        if hello.get("op") != P.HELLO or hello.get("token") != token:
            raise SystemExit("runner worker: the agent did not say hello")
        client = self.spec.get("client_python")
        if client and hello.get("python") != client:  # cloudpickle's bytes are only good between equal versions
            from ..exception import VersionError

            err = VersionError(f"{self.spec.get('name')}: the image runs Python {hello.get('python')} but the client "
                               f"that registered it runs Python {client}; they must match (use Image.debian_slim("
                               f"python_version='{client}'))")
            header, blobs = {"op": P.INIT_FAILED, "tb": ""}, [_dump_exc(err)]
        else:
            conn.send({"op": P.INIT, "spec": self.spec}, self.blobs)
            header, blobs = conn.recv()
        if header["op"] == P.INIT_FAILED:
            self.init_error = (bytes(blobs[0]), header.get("tb") or "")
            conn.close()
            with self.lock:
                waiting = [h for h in self.held.values() if not h.done]
            for h in waiting:  # every input fails with the error the function's start-up raised
                self.finish(h, P.ERR, *self.init_error)
            return
        self.dying = None
        with self.lock:
            self.conn = conn
            self._send_unsent()
        threading.Thread(target=self._read_agent, args=(conn,), name="plane-agent-reader", daemon=True).start()

    # ---- inputs ----------------------------------------------------------------------------
    def window(self) -> int:
        if self.ema is None:  # no prefetch until an input's time is known: other workers may be starting
            return self.base
        return self.base + min(MAX_PREFETCH, int(PREFETCH_SECONDS / max(self.ema, 1e-7)))

    def run(self) -> None:
        while not self.stopping:
            with self.lock:
                free = self.window() - self.load
                if free <= 0:
                    self.lock.wait(0.2)
                    continue
            count = max(1, min(MAX_COUNT, free // max(1, self.last_weight)))
            try:
                got = self.reader.xreadgroup(W.GROUP, self.name, {self.keys.inputs: ">"}, count=count, block=200)
            except Exception as exc:  # noqa: BLE001 - the server restarts or the group is gone
                if "NOGROUP" in str(exc):
                    self.load_spec()
                else:
                    time.sleep(0.5)
                continue
            if got:
                self.take([(eid.decode(), f) for eid, f in got[0][1] if f])
        self.drain()

    def take(self, entries: list[tuple[str, dict]]) -> None:
        """Hand newly read (or claimed) entries to the agent, minus cancelled and expired ones."""
        if not entries:
            return
        held = [Held(eid, f[b"h"], f[b"b"]) for eid, f in entries]
        self.last_weight = max(1, held[-1].weight)
        marks = self.r.hmget(self.keys.cancel, [h.input_id for h in held])
        now = time.time()
        live = []
        for h, mark in zip(held, marks):
            if mark is not None:
                self.finish(h, P.CANCELLED, b"", None)
            elif h.deadline is not None and now > h.deadline:
                self.finish(h, W.EXPIRED, b"", None)
            elif self.init_error is not None:
                self.finish(h, P.ERR, self.init_error[0], self.init_error[1])
            else:
                live.append(h)
        with self.lock:
            for h in live:
                self.held[h.eid] = h
                self.load += h.weight
            self._send_unsent()

    def _send_unsent(self) -> None:
        """Send held entries not yet with the agent (under the lock)."""
        if self.conn is None:
            return
        todo = [h for h in self.held.values() if not h.sent and not h.done]
        if not todo:
            return
        now = time.monotonic()
        for h in todo:
            h.sent, h.sent_at = True, now
        try:
            self.conn.send({"op": P.INPUTS, "items": [(h.eid, h.method, h.kind) for h in todo]}, [h.blob for h in todo])
        except P.ConnectionClosed:
            pass  # the agent reader sees it and sorts them out

    # ---- outputs ---------------------------------------------------------------------------
    def _read_agent(self, conn: P.Connection) -> None:
        while True:
            try:
                header, blobs = conn.recv()
            except P.ConnectionClosed:
                break
            if header["op"] == P.OUTPUTS:
                self._on_outputs(header["items"], blobs)
            elif header["op"] == P.DYING:
                self.dying = (header["reason"], header["input_id"])
        self._on_agent_gone()

    def _on_outputs(self, items: list, blobs: list) -> None:
        now = time.monotonic()
        with self.lock:
            done = [self.held.get(i[0]) for i in items if i[1] != P.GEN_ITEM]
            done_weight = sum(h.weight for h in done if h is not None)
            sent = [h.sent_at for h in self.held.values() if h.sent]
            if done_weight and sent and self.last_output:
                per = (now - max(self.last_output, min(sent))) / done_weight
                self.ema = per if self.ema is None else 0.8 * self.ema + 0.2 * per
            self.last_output = now
        for (eid, status, tb), blob in zip(items, blobs):
            h = self.held.get(eid)
            if h is None or h.done:
                continue
            blob = bytes(blob)
            if status == P.GEN_ITEM:
                self.writes.put(("item", h, status, blob, tb, h.items))
                h.items += 1
            elif status in (P.ERR, P.TIMEOUT):
                self.fail(h, status, blob, tb)
            else:
                self.finish(h, status, blob, tb)

    def fail(self, h: Held, status: str, blob: bytes, tb: str | None) -> None:
        """A real failure: retried per the function's policy, or the caller's to see."""
        policy = self.retries
        if h.kind == "chunk":
            self.finish(h, W.SPLIT, b"", None)  # the caller runs its items one by one
        elif policy is not None and not h.items and not h.cancelled and h.retries < policy.max_retries:
            h.done = True
            self.writes.put(("retry", h, time.time() + policy.delay(h.retries + 1)))
        else:
            self.finish(h, status, blob, tb)

    def finish(self, h: Held, status: str, blob: bytes, tb: str | None) -> None:
        h.done = True
        self.writes.put(("final", h, status, blob, tb, h.items))

    def _release(self, done: list[Held]) -> None:
        with self.lock:
            for h in done:
                if self.held.pop(h.eid, None) is not None:
                    self.load -= h.weight
            self.lock.notify_all()

    def writer(self) -> None:
        k = self.keys
        while True:
            batch = [self.writes.get()]
            while len(batch) < 2048:
                try:
                    batch.append(self.writes.get_nowait())
                except queue.Empty:
                    break
            # One MULTI/EXEC: a caller sees a result only together with its input's XACK and XDEL,
            # never before (so the stream never still holds an input whose result was read).
            pipe = self.r.pipeline(transaction=True)
            acked: list[Held] = []
            per = self.ema or 0.0
            for op in batch:
                h = op[1]
                if op[0] == "item":
                    _, _, status, blob, tb, seq = op
                    pipe.xadd(h.reply, {"h": W.output_header(h.input_id, status, tb, seq, per), "b": blob},
                              nomkstream=True)
                    continue
                if op[0] == "retry":
                    again = W.input_header(h.input_id, h.reply, h.method, h.kind, h.weight, h.retries + 1, h.store,
                                           h.enqueued, h.deadline)
                    pipe.zadd(k.delayed, {W.pack(again, h.blob): op[2]})
                else:
                    _, _, status, blob, tb, seq = op
                    out = W.output_header(h.input_id, status, tb, seq, per)
                    pipe.xadd(h.reply, {"h": out, "b": blob}, nomkstream=True)
                    if h.store:
                        ck = W.call_key(h.input_id)
                        pipe.hsetnx(ck, "r", W.pack(out, blob))  # the first result wins; a duplicate is dropped
                        pipe.expire(ck, W.CALL_TTL)
                        pipe.rpush(W.call_done_key(h.input_id), 1)
                        pipe.expire(W.call_done_key(h.input_id), W.CALL_TTL)
                pipe.xack(k.inputs, W.GROUP, h.eid)
                pipe.xdel(k.inputs, h.eid)
                acked.append(h)
            while True:
                try:
                    pipe.execute(raise_on_error=False)
                    break
                except Exception:  # noqa: BLE001 - the connection dropped: the lease keeps the entries ours
                    time.sleep(0.2)
            self._release(acked)

    # ---- the agent going away ----------------------------------------------------------------
    def _on_agent_gone(self) -> None:
        code = self.child.wait() if self.child else None
        with self.lock:
            self.conn = None
            stranded = [h for h in self.held.values() if h.sent and not h.done]
        dying = self.dying
        for h in stranded:
            if dying is not None and h.eid == dying[1]:
                continue  # its TIMEOUT or CANCELLED output came before DYING
            if dying is not None:
                h.sent = False  # queued behind the input the agent stopped on purpose: run it again, free
            elif h.kind == "chunk":
                self.finish(h, W.SPLIT, b"", None)
            else:
                from ..exception import RemoteError

                err = RemoteError(f"the agent process of worker {self.name} ended (exit code {code}) while running "
                                  f"input {h.input_id}")
                self.fail(h, P.ERR, _dump_exc(err), None)
        if self.stopping:
            return
        try:
            self.start_agent()
        except BaseException as exc:  # noqa: BLE001 - no agent, no work: exit, and what we hold goes elsewhere
            print(f"runner worker {self.name}: the agent could not be restarted ({type(exc).__name__}: {exc})",
                  file=sys.stderr, flush=True)
            shutil.rmtree(self._dir, ignore_errors=True)
            os._exit(1)

    # ---- heartbeat, reclaim, retries, cancels ------------------------------------------------
    def heartbeat(self) -> None:
        k = self.keys
        beat = self.lease / 3
        last_beat = 0.0
        beats = 0
        while True:  # through the drain too: what is still running keeps its lease
            time.sleep(0.05)
            try:
                if self.r.zcard(k.delayed):
                    self.r.eval(W.PROMOTE_LUA, 2, k.delayed, k.inputs, time.time(), 256)
                now = time.monotonic()
                if now - last_beat < beat:
                    continue
                last_beat = now
                with self.lock:
                    held = list(self.held.values())
                    free = self.window() - self.load
                pipe = self.r.pipeline(transaction=False)
                pipe.hset(k.workers, self.name, time.time())
                if held:
                    pipe.xclaim(k.inputs, W.GROUP, self.name, 0, [h.eid for h in held], justid=True)
                    pipe.hmget(k.cancel, [h.input_id for h in held])
                res = pipe.execute()
                if held:
                    for h, mark in zip(held, res[-1]):
                        if mark == b"hard" and h.sent and not h.cancelled and self.conn is not None:
                            h.cancelled = True
                            try:
                                self.conn.send({"op": P.CANCEL, "input_id": h.eid})
                            except P.ConnectionClosed:
                                pass
                if free > 0 and not self.stopping:
                    self.reclaim(max(1, min(MAX_COUNT, free // max(1, self.last_weight))))
                beats += 1
                if beats % 30 == 0:
                    self.forget_dead_consumers()
            except Exception as exc:  # noqa: BLE001 - the server is away: try again next beat
                print(f"runner worker: heartbeat: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
                time.sleep(0.5)

    def forget_dead_consumers(self) -> None:
        """Remove consumers of the group that hold nothing and have been silent for long (workers
        that died and whose entries were taken over), so the group does not grow without end."""
        quiet = max(60.0, 10 * self.lease) * 1000
        for c in self.r.xinfo_consumers(self.keys.inputs, W.GROUP):
            name = c["name"].decode() if isinstance(c["name"], bytes) else c["name"]
            if name != self.name and not c["pending"] and c["idle"] > quiet:
                self.r.xgroup_delconsumer(self.keys.inputs, W.GROUP, name)
                self.r.hdel(self.keys.workers, name)

    def reclaim(self, count: int) -> None:
        """Take over entries of workers that stopped heartbeating (idle past the lease)."""
        k = self.keys
        got = self.r.xautoclaim(k.inputs, W.GROUP, self.name, int(self.lease * 1000), "0-0", count=count)
        entries = [(eid.decode(), f) for eid, f in got[1] if f]
        if not entries:
            return
        pipe = self.r.pipeline(transaction=False)
        for eid, _ in entries:
            pipe.xpending_range(k.inputs, W.GROUP, min=eid, max=eid, count=1)
        counts = [(p[0]["times_delivered"] if p else 1) for p in pipe.execute()]
        again = []
        for (eid, f), n in zip(entries, counts):
            if n > W.MAX_DELIVERIES:
                from ..exception import RemoteError

                h = Held(eid, f[b"h"], f[b"b"])
                err = RemoteError(f"input {h.input_id} was delivered {n - 1} times and every worker holding it "
                                  "died; it is not sent again")
                self.finish(h, P.ERR, _dump_exc(err), None)
            else:
                again.append((eid, f))
        print(f"runner worker {self.name}: took over {len(again)} input(s) of a worker that stopped", file=sys.stderr,
              flush=True)
        self.take(again)

    # ---- stopping ----------------------------------------------------------------------------
    def drain(self) -> None:
        """Let held inputs finish (within DRAIN_GRACE), then stop the agent; unfinished ones stay
        pending and go to another worker once the lease runs out."""
        end = time.monotonic() + DRAIN_GRACE
        with self.lock:
            while self.held and time.monotonic() < end:
                self.lock.wait(0.1)
            conn = self.conn
        if conn is not None:
            try:
                conn.send({"op": P.SHUTDOWN})
            except P.ConnectionClosed:
                pass
        if self.child is not None:
            try:
                self.child.wait(10)
            except subprocess.TimeoutExpired:
                self.child.kill()
        self.r.hdel(self.keys.workers, self.name)


def pod_url() -> str | None:
    """The queue's URL from a Kubernetes pod's env (RUNNER_QUEUE_URL, and the password the pod
    reads from the stack's Secret as RUNNER_QUEUE_PASSWORD), or None outside one."""
    url = os.environ.get(W.POD_URL_ENV)
    password = os.environ.get(W.POD_PASSWORD_ENV)
    return W.with_password(url, password) if url and password else url or None


def serve_web(worker: Worker) -> None:
    """Mode "web" (a web function's pod): the agent serves HTTP; this process says so on the queue
    (rq:f:F:ready, by pod name, which the client's front door waits for) and waits for SIGTERM."""
    pod = os.environ.get("RUNNER_POD_NAME") or socket.gethostname()
    if worker.init_error is not None:
        print(f"runner worker {worker.name}: the web function failed to start:\n{worker.init_error[1]}",
              file=sys.stderr, flush=True)
        os._exit(1)
    worker.r.hset(worker.keys.ready, pod, time.time())
    while not worker.stopping and worker.conn is not None:
        time.sleep(0.2)
    worker.r.hdel(worker.keys.ready, pod)
    worker.drain()


def enqueue_scheduled(worker: Worker) -> str:
    """Mode "schedule" (a CronJob's pod): queue one call of the function with the arguments its
    deploy stored (none), as a spawned call whose record holds the result, and return its id. The
    function's own workers run it, with its retries and timeout; this pod only queues it."""
    args = worker.r.hget(worker.keys.spec, "schedule_args")
    if args is None:
        raise SystemExit(f"runner schedule: function {worker.keys.fn!r} has no schedule")
    call_id = f"fc-{secrets.token_hex(10)}"
    now = time.time()
    head = W.input_header(call_id, W.reply_key("schedule"), None, "call", 1, 0, True, now, None)
    pipe = worker.r.pipeline(transaction=True)
    pipe.hset(W.call_key(call_id), mapping={"fn": worker.keys.fn, "name": worker.spec.get("name", ""), "at": now})
    pipe.expire(W.call_key(call_id), W.CALL_TTL)
    pipe.xadd(worker.keys.inputs, {"h": head, "b": args})
    pipe.execute()
    return call_id


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m runner._plane.worker", description="a runner queue worker")
    ap.add_argument("--url", default=os.environ.get(W.URL_ENV) or pod_url())
    ap.add_argument("--function", default=os.environ.get(W.FUNCTION_ENV))
    ap.add_argument("--mode", default=os.environ.get(W.MODE_ENV) or "queue", choices=("queue", "web", "schedule"))
    args = ap.parse_args(argv)
    if not args.url or not args.function:
        raise SystemExit(f"runner worker: give --url and --function (or {W.URL_ENV} and {W.FUNCTION_ENV})")
    worker = Worker(args.url, args.function)

    def stop(*_):
        worker.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if args.mode == "schedule":
        worker.load_spec(wait=60)
        print(f"runner schedule: queued {enqueue_scheduled(worker)} for {args.function}", file=sys.stderr, flush=True)
        shutil.rmtree(worker._dir, ignore_errors=True)
        return
    worker.spawn_agent()
    worker.load_spec()
    threading.Thread(target=worker.writer, name="plane-writer", daemon=True).start()
    worker.start_agent()
    threading.Thread(target=worker.heartbeat, name="plane-heartbeat", daemon=True).start()
    print(f"runner worker {worker.name}: serving {args.function}", file=sys.stderr, flush=True)
    try:
        if args.mode == "web":
            serve_web(worker)
        else:
            worker.run()
    finally:
        shutil.rmtree(worker._dir, ignore_errors=True)
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
