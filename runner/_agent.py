"""The agent: the one process in every container, the same code on every provider.

It connects to the input plane, loads the user's function (by import, as Modal does, or by value
when it is not importable), runs `@enter` hooks once, then serves inputs until told to stop:

- sync code runs on `max_inputs` worker threads, async code as tasks on one event loop;
- `@batched` functions get lists, filled up to `max_batch_size` or for `wait_ms`;
- outputs are written by one thread that sends everything finished since its last write in one
  frame, so a busy container answers in batches;
- a watchdog ends inputs past `timeout`: async ones are cancelled, a sync one takes its process
  down (threads cannot be stopped), after saying so, so the client retries only what is owed;
- a web function (`spec["web"]`) is served over HTTP by `runner._web_serve`, started before READY,
  which carries its port; its requests go straight to that server, not through inputs;
- when the connection closes (the client died or stopped it) or SIGTERM arrives, `@exit` hooks
  run and the process exits: nothing keeps serving a client that is gone.

Only the standard library, cloudpickle and runner's dependency-free modules are imported here.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import os
import queue
import signal
import socket
import sys
import threading
import time
import traceback
from typing import Any

from . import _protocol as P
from ._context import REMOTE_ENV, current_input
from ._partial import class_parameters, flags_of

ADDR_ENV = "RUNNER_AGENT_ADDR"
TOKEN_ENV = "RUNNER_CONTAINER_TOKEN"
EXIT_HOOK_BUDGET = 30.0


def _cloudpickle():
    import cloudpickle

    return cloudpickle


def connect(addr: str, deadline: float = 60.0) -> P.Connection:
    """Connect to `unix:/path`, retrying until the listener answers or the deadline passes."""
    if not addr.startswith("unix:"):
        raise SystemExit(f"runner agent: unsupported address {addr!r}")
    path = addr[len("unix:") :]
    end = time.monotonic() + deadline
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
            return P.Connection(sock)
        except OSError:
            sock.close()
            if time.monotonic() > end:
                raise SystemExit(f"runner agent: nobody listens on {path}; the client is gone")
            time.sleep(0.05)


def _resolve(spec: dict, blobs: list) -> Any:
    """The user's function or class: imported by module and qualified name, or unpickled."""
    # Secret values come over the agent's socket, not in the container's config, where
    # `docker inspect` would show them; set before the user's module is imported.
    os.environ.update(spec.get("secret_env") or {})
    for entry in reversed(spec.get("sys_path", [])):  # the app's root first, before the working directory
        if entry in sys.path:
            sys.path.remove(entry)
        sys.path.insert(0, entry)
    if spec.get("alias_modal", True):
        from ._compat import install_modal_alias

        install_modal_alias()
    if spec["by_value"]:
        obj = _cloudpickle().loads(blobs[0])
    else:
        obj = importlib.import_module(spec["module"])
        for part in spec["qualname"].split("."):
            obj = getattr(obj, part)
    return getattr(obj, "_runner_target", obj)


class Agent:
    def __init__(self, conn: P.Connection, spec: dict, blobs: list):
        self.conn = conn
        self.spec = spec
        self.blobs = blobs
        self.timeout = spec.get("timeout")
        self.out: queue.SimpleQueue = queue.SimpleQueue()
        self.running: dict[str, tuple[float, Any]] = {}  # input id -> (start, async task or None)
        self.running_lock = threading.Lock()
        self.cancelled: set[str] = set()
        self.instance = None
        self.target = None
        self.max_inputs = int(spec.get("max_inputs") or 1)
        self.exit_once = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sem: asyncio.Semaphore | None = None
        self._work: queue.SimpleQueue = queue.SimpleQueue()
        self._threads_started = False
        self._batchers: dict[str, _Batcher] = {}
        self._dispatch_cache: dict[str | None, tuple] = {}

    # ---- set-up ----------------------------------------------------------------------------
    def load(self) -> None:
        target = _resolve(self.spec, self.blobs)
        if self.spec["is_class"]:
            params = _cloudpickle().loads(self.blobs[1]) if len(self.blobs) > 1 else {}
            declared = class_parameters(target)
            if declared:
                instance = target.__new__(target)
                for name, decl in declared.items():
                    setattr(instance, name, params.get(name, decl.default))
            else:
                instance = target()
            self.instance = instance
            hooks = [m for _, m in inspect.getmembers(target, callable) if flags_of(m).get("enter")]
            hooks.sort(key=lambda m: (not flags_of(m).get("snap"), _line(m)))
            for hook in hooks:
                result = getattr(instance, hook.__name__)()
                if inspect.isawaitable(result):
                    self._run_coro(result).result()
            self.flags = flags_of(target)
        else:
            self.target = target
            self.flags = flags_of(target)

    def _callable(self, method: str | None):
        return getattr(self.instance, method) if self.instance is not None else self.target

    # ---- engines ---------------------------------------------------------------------------
    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="runner-async", daemon=True).start()
            self._loop = loop
            self._sem = asyncio.Semaphore(self.max_inputs)
        return self._loop

    def _run_coro(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self._ensure_loop())

    def _ensure_threads(self) -> None:
        if not self._threads_started:
            self._threads_started = True
            for i in range(self.max_inputs):
                threading.Thread(target=self._worker, name=f"runner-worker-{i}", daemon=True).start()

    def _worker(self) -> None:
        while True:
            input_id, fn, blob, chunk = self._work.get()
            if chunk:
                self._serve_chunk(input_id, fn, blob)
            else:
                self._serve_sync(input_id, fn, blob)

    def _dispatch(self, method: str | None) -> tuple:
        """How to run a method, worked out once: (callable, "batch" | "async" | "sync", batch args)."""
        found = self._dispatch_cache.get(method)
        if found is None:
            fn = self._callable(method)
            batch = flags_of(fn).get("batch")
            is_async = inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn)
            found = self._dispatch_cache[method] = (fn, "batch" if batch else "async" if is_async else "sync", batch)
        return found

    def submit(self, input_id: str, method: str | None, kind: str, blob) -> None:
        fn, mode, batch = self._dispatch(method)
        chunk = kind == "chunk"
        if mode == "batch":
            batcher = self._batchers.get(method or "")
            if batcher is None:
                batcher = self._batchers[method or ""] = _Batcher(self, fn, *batch)
            batcher.add(input_id, blob)
        elif mode == "async":
            serve = self._serve_chunk_async if chunk else self._serve_async
            asyncio.run_coroutine_threadsafe(serve(input_id, fn, blob), self._ensure_loop())
        else:
            self._ensure_threads()
            self._work.put((input_id, fn, blob, chunk))

    def _begin(self, input_id: str, task=None) -> bool:
        with self.running_lock:
            if input_id in self.cancelled:
                self.cancelled.discard(input_id)
                self.emit(input_id, P.CANCELLED, None)
                return False
            self.running[input_id] = (time.monotonic(), task)
        return True

    def _end(self, input_id: str) -> bool:
        """False when the watchdog already answered for this input."""
        with self.running_lock:
            return self.running.pop(input_id, None) is not None

    def _serve_sync(self, input_id: str, fn, blob) -> None:
        if not self._begin(input_id):
            return
        token = current_input.set(input_id)
        try:
            args, kwargs = _cloudpickle().loads(blob)
            result = fn(*args, **kwargs)
            if inspect.isgenerator(result):
                for item in result:
                    self.emit(input_id, P.GEN_ITEM, item)
                if self._end(input_id):
                    self.emit(input_id, P.GEN_DONE, None)
            elif self._end(input_id):
                self.emit(input_id, P.OK, result)
        except BaseException as exc:  # noqa: BLE001 - everything goes back to the caller
            if self._end(input_id):
                self.emit_error(input_id, exc)
        finally:
            current_input.reset(token)

    def _next_item(self, input_id: str) -> bool:
        """Restart the timeout clock for the next item of a chunk; False if the chunk was ended."""
        with self.running_lock:
            if input_id not in self.running:
                return False
            self.running[input_id] = (time.monotonic(), self.running[input_id][1])
        return True

    def _serve_chunk(self, input_id: str, fn, blob) -> None:
        """Many map items in one payload; one outcome per item, sent back together."""
        if not self._begin(input_id):
            return
        try:
            arg_tuples, kwargs = _cloudpickle().loads(blob)
        except BaseException as exc:  # noqa: BLE001
            if self._end(input_id):
                self.emit_error(input_id, exc)
            return
        outcomes = []
        for k, args in enumerate(arg_tuples):
            if not self._next_item(input_id):
                return
            token = current_input.set(f"{input_id}.{k}")
            try:
                outcomes.append((0, fn(*args, **kwargs)))
            except BaseException as exc:  # noqa: BLE001
                outcomes.append(_item_error(exc))
            finally:
                current_input.reset(token)
        if self._end(input_id):
            self.emit_chunk(input_id, outcomes)

    async def _serve_chunk_async(self, input_id: str, fn, blob) -> None:
        async with self._sem:
            if not self._begin(input_id, asyncio.current_task()):
                return
            try:
                arg_tuples, kwargs = _cloudpickle().loads(blob)
                outcomes = []
                for k, args in enumerate(arg_tuples):
                    if not self._next_item(input_id):
                        return
                    current_input.set(f"{input_id}.{k}")
                    try:
                        outcomes.append((0, await fn(*args, **kwargs)))
                    except asyncio.CancelledError:
                        raise
                    except BaseException as exc:  # noqa: BLE001
                        outcomes.append(_item_error(exc))
            except asyncio.CancelledError:
                return
            if self._end(input_id):
                self.emit_chunk(input_id, outcomes)

    async def _serve_async(self, input_id: str, fn, blob) -> None:
        async with self._sem:
            if not self._begin(input_id, asyncio.current_task()):
                return
            current_input.set(input_id)
            try:
                args, kwargs = _cloudpickle().loads(blob)
                if inspect.isasyncgenfunction(fn):
                    async for item in fn(*args, **kwargs):
                        self.emit(input_id, P.GEN_ITEM, item)
                    if self._end(input_id):
                        self.emit(input_id, P.GEN_DONE, None)
                else:
                    result = await fn(*args, **kwargs)
                    if self._end(input_id):
                        self.emit(input_id, P.OK, result)
            except asyncio.CancelledError:
                pass  # the watchdog or a cancel answered already
            except BaseException as exc:  # noqa: BLE001
                if self._end(input_id):
                    self.emit_error(input_id, exc)

    # ---- outputs ---------------------------------------------------------------------------
    def emit(self, input_id: str, status: str, value: Any) -> None:
        try:
            blob = _cloudpickle().dumps(value) if status in (P.OK, P.GEN_ITEM) else b""
        except Exception as exc:  # noqa: BLE001
            from .exception import SerializationError

            what = "an item yielded" if status == P.GEN_ITEM else "the result"
            err = SerializationError(f"{what} of {self.spec['name']} cannot be serialized: {type(exc).__name__}: {exc}")
            self.out.put((input_id, P.ERR, _dump_exc(err), ""))
            return
        self.out.put((input_id, status, blob, None))

    def emit_chunk(self, input_id: str, outcomes: list) -> None:
        try:
            blob = _cloudpickle().dumps(outcomes)
        except Exception:  # noqa: BLE001 - find the items whose results cannot travel
            from .exception import SerializationError

            fixed = []
            for outcome in outcomes:
                try:
                    _cloudpickle().dumps(outcome)
                    fixed.append(outcome)
                except Exception as exc:  # noqa: BLE001
                    err = SerializationError(f"the result of {self.spec['name']} cannot be serialized: {type(exc).__name__}: {exc}")
                    fixed.append((1, _dump_exc(err), ""))
            blob = _cloudpickle().dumps(fixed)
        self.out.put((input_id, P.OK, blob, None))

    def emit_error(self, input_id: str, exc: BaseException) -> None:
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        self.out.put((input_id, P.ERR, _dump_exc(exc), tb))

    def _writer(self) -> None:
        while True:
            batch, marks = [], []
            size = 0
            item = self.out.get()
            while True:
                if isinstance(item, threading.Event):
                    marks.append(item)
                else:
                    batch.append(item)
                    size += len(item[2])
                if size >= 4 * 1024 * 1024 or len(batch) >= 4096:
                    break
                try:
                    item = self.out.get_nowait()
                except queue.Empty:
                    break
            if not batch:
                for mark in marks:
                    mark.set()
                continue
            sys.stdout.flush()
            sys.stderr.flush()
            try:
                self.conn.send(
                    {"op": P.OUTPUTS, "items": [(i, s, tb) for i, s, _, tb in batch]}, [b for _, _, b, _ in batch]
                )
            except P.ConnectionClosed:
                return
            for mark in marks:
                mark.set()

    # ---- watchdog, cancel, stop ------------------------------------------------------------
    def _watchdog(self) -> None:
        while True:
            time.sleep(0.05)
            now = time.monotonic()
            with self.running_lock:
                late = [(i, task) for i, (t0, task) in self.running.items() if now - t0 > self.timeout]
            for input_id, task in late:
                if task is not None:
                    if self._end(input_id):
                        self.emit(input_id, P.TIMEOUT, None)
                        self._loop.call_soon_threadsafe(task.cancel)
                elif self._end(input_id):
                    self._die(P.TIMEOUT, input_id)

    def _die(self, reason: str, input_id: str) -> None:
        """Stop the process for an input that cannot be stopped otherwise, saying which one."""
        flushed = threading.Event()
        self.out.put(flushed)  # the writer sets it once everything before it is sent
        flushed.wait(5)
        status = P.TIMEOUT if reason == P.TIMEOUT else P.CANCELLED
        try:
            self.conn.send({"op": P.OUTPUTS, "items": [(input_id, status, None)]}, [b""])
            self.conn.send({"op": P.DYING, "reason": reason, "input_id": input_id})
        except P.ConnectionClosed:
            pass
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(3)

    def cancel(self, input_id: str, soft: bool = False) -> None:
        with self.running_lock:
            entry = self.running.get(input_id)
            if entry is None:
                self.cancelled.add(input_id)
                return
        if soft:
            return  # it runs to the end; nobody waits for the result
        task = entry[1]
        if task is not None:
            if self._end(input_id):
                self.emit(input_id, P.CANCELLED, None)
                self._loop.call_soon_threadsafe(task.cancel)
        elif self._end(input_id):
            self._die(P.CANCELLED, input_id)

    def run_exit_hooks(self) -> None:
        if self.instance is None or not self.exit_once.acquire(blocking=False):
            return
        hooks = [m for _, m in inspect.getmembers(type(self.instance), callable) if flags_of(m).get("exit")]
        hooks.sort(key=_line)

        def run():
            for hook in hooks:
                try:
                    result = getattr(self.instance, hook.__name__)()
                    if inspect.isawaitable(result):
                        self._run_coro(result).result()
                except Exception:  # noqa: BLE001 - report and go on with the others
                    traceback.print_exc()

        t = threading.Thread(target=run, daemon=True)
        t.start()
        t.join(EXIT_HOOK_BUDGET)

    def stop(self, code: int = 0) -> None:
        self.run_exit_hooks()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

    # ---- main loop -------------------------------------------------------------------------
    def serve(self) -> None:
        threading.Thread(target=self._writer, name="runner-writer", daemon=True).start()
        if self.timeout:
            threading.Thread(target=self._watchdog, name="runner-watchdog", daemon=True).start()
        while True:
            try:
                header, blobs = self.conn.recv()
            except P.ConnectionClosed:
                self.stop(0)
            op = header["op"]
            if op == P.INPUTS:
                for (input_id, method, kind), blob in zip(header["items"], blobs):
                    self.submit(input_id, method, kind, blob)
            elif op == P.CANCEL:
                self.cancel(header["input_id"], header.get("soft", False))
            elif op == P.SHUTDOWN:
                self.stop(0)


class _Batcher:
    """Collects inputs of a `@batched` function and calls it with lists."""

    def __init__(self, agent: Agent, fn, max_size: int, wait_ms: float):
        self.agent, self.fn, self.max_size, self.wait = agent, fn, max_size, wait_ms / 1000.0
        self.q: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=self._loop, name="runner-batcher", daemon=True).start()

    def add(self, input_id: str, blob) -> None:
        self.q.put((input_id, blob))

    def _loop(self) -> None:
        while True:
            batch = [self.q.get()]
            end = time.monotonic() + self.wait
            while len(batch) < self.max_size:
                left = end - time.monotonic()
                try:
                    batch.append(self.q.get(timeout=left) if left > 0 else self.q.get_nowait())
                except queue.Empty:
                    break
            self._call(batch)

    def _call(self, batch: list) -> None:
        agent = self.agent
        live = [(i, b) for i, b in batch if agent._begin(i)]
        if not live:
            return
        try:
            decoded = [_cloudpickle().loads(b) for _, b in live]
            width = max(len(a) + len(k) for a, k in decoded)
            names = list(inspect.signature(self.fn).parameters)
            columns: list[list] = [[] for _ in range(width)]
            for args, kwargs in decoded:
                values = list(args) + [kwargs[n] for n in names[len(args) : width]]
                for col, value in zip(columns, values):
                    col.append(value)
            result = self.fn(*columns)
            if inspect.isawaitable(result):
                result = agent._run_coro(_await(result)).result()
            result = list(result)
            if len(result) != len(live):
                raise ValueError(f"a @batched function returned {len(result)} outputs for {len(live)} inputs")
            for (input_id, _), value in zip(live, result):
                if agent._end(input_id):
                    agent.emit(input_id, P.OK, value)
        except BaseException as exc:  # noqa: BLE001
            for input_id, _ in live:
                if agent._end(input_id):
                    agent.emit_error(input_id, exc)


async def _await(awaitable):
    return await awaitable


def _item_error(exc: BaseException) -> tuple:
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return (1, _dump_exc(exc), tb)


def _line(fn) -> int:
    code = getattr(fn, "__code__", None)
    return code.co_firstlineno if code else 0


def _dump_exc(exc: BaseException) -> bytes:
    cp = _cloudpickle()
    try:
        blob = cp.dumps(exc)
        cp.loads(blob)  # a class that pickles but cannot be rebuilt is no better than none
        return blob
    except Exception:  # noqa: BLE001
        from .exception import RemoteError

        return cp.dumps(RemoteError(f"{type(exc).__module__}.{type(exc).__qualname__}: {exc}"))


def main() -> None:
    os.environ[REMOTE_ENV] = "1"
    conn = connect(os.environ[ADDR_ENV])
    conn.send(
        {
            "op": P.HELLO,
            "token": os.environ.get(TOKEN_ENV, ""),
            "python": f"{sys.version_info[0]}.{sys.version_info[1]}",
            "pid": os.getpid(),
        }
    )
    try:
        header, blobs = conn.recv()
    except P.ConnectionClosed:
        sys.exit(0)
    if header["op"] != P.INIT:
        raise SystemExit(f"runner agent: expected init, got {header['op']!r}")
    agent = Agent(conn, header["spec"], blobs)
    signal.signal(signal.SIGTERM, lambda *_: agent.stop(0))
    ready = {"op": P.READY}
    try:
        agent.load()
        # ---- web functions: serve HTTP before READY, and say on which port ----
        if header["spec"].get("web"):
            ready["web_port"] = _start_web(agent, header["spec"]["web"])
    except BaseException as exc:  # noqa: BLE001 - the client shows it
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        conn.send({"op": P.INIT_FAILED, "tb": tb}, [_dump_exc(exc)])
        time.sleep(0.1)
        os._exit(1)
    conn.send(ready)
    agent.serve()


def _start_web(agent: Agent, web: dict) -> int:
    """Start serving a web function (runner._web_serve); requests reach it over HTTP, not as inputs."""
    from . import _web_serve

    serving = _web_serve.start(
        web["kind"], agent._callable(web.get("method_name")), method=web.get("method"), docs=bool(web.get("docs")),
        port=web.get("port") or 0, startup_timeout=web.get("startup_timeout"), root_path=web.get("root_path") or "",
        host=web.get("host") or "0.0.0.0",
    )
    return serving.port


if __name__ == "__main__":
    main()
