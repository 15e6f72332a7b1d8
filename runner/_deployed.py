"""Calling deployed apps from any process: `Function.from_name`, `Cls.from_name`, `App.lookup`,
and spawned calls found again with `FunctionCall.from_id`.

A deployed app's daemon (`runner._deploy`) serves its functions on a control socket. The caller
side plugs in where a running app's pool would be: `RemotePool` has the pool's interface
(`submit`, `cancel`, `chunk_size`), so `.remote`, `.map`, `.starmap`, `.spawn`, `.remote_gen` and
their `.aio` forms are the very code paths of a local run. Inputs are serialized here, sent in
batches on one connection per app and process, and their results come back on it in batches.

When a new version replaces the daemon, the old one tells its clients to retire their connection:
new inputs go to the new version (found through state.json), while the old connection stays open
until every input it carried has its result. Nothing accepted is dropped.

Spawned calls are recorded under the app's `calls/` directory (pending, then the result), so a
call outlives the process that spawned it and `FunctionCall.from_id(id).get()` works anywhere on
this host.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import pickle
import queue
import secrets
import socket
import threading
import time
from typing import Any, Callable

import cloudpickle

from . import _protocol as P
from ._aio import twin
from ._function import Function, FunctionCall, _Discard, _Invocable
from ._session import LOCAL_ERR, Input
from .exception import ExecutionError, InvalidError, NotFoundError, OutputExpiredError, TimeoutError

RESULT_BATCH = 1024
CALL_TTL = 24 * 3600.0  # how long results of spawned calls are kept


def _terminal(status: str) -> bool:
    return status != P.GEN_ITEM


def _dump_error(exc: BaseException) -> bytes:
    try:
        return cloudpickle.dumps(exc)
    except Exception:  # noqa: BLE001 - an exception that does not pickle still says what it was
        return cloudpickle.dumps(ExecutionError(f"{type(exc).__name__}: {exc}"))


# ---- the daemon's side --------------------------------------------------------------------------
class _Link:
    """One client connection to the daemon: reads submits and cancels, sends results in batches."""

    def __init__(self, server: ControlServer, conn: P.Connection):
        self.server, self.conn = server, conn
        self.inflight: dict[str, tuple[str, Input, Any]] = {}  # input id -> (client id, input, pool)
        self.by_cid: dict[str, Input] = {}
        self.spawned: set[str] = set()  # recorded in calls/ for FunctionCall.from_id
        self.detached: set[str] = set()  # spawned or spawn_map'ed: they go on when the client leaves
        self.out: queue.SimpleQueue = queue.SimpleQueue()
        self.lock = threading.Lock()
        self.closed = False  # the Input sink protocol: deliveries are dropped once True
        threading.Thread(target=self._read, name="runner-control-read", daemon=True).start()
        threading.Thread(target=self._write, name="runner-control-write", daemon=True).start()

    def deliver(self, inp: Input, status: str, payload: Any, tb: str | None) -> None:
        self.out.put((inp, status, payload, tb))

    def _read(self) -> None:
        try:
            while True:
                header, blobs = self.conn.recv()
                op = header.get("op")
                if op == "submit":
                    self._submit(header, blobs)
                elif op == "cancel":
                    with self.lock:
                        inp = self.by_cid.get(header["cid"])
                        entry = self.inflight.get(inp.id) if inp is not None else None
                    if entry is not None:
                        entry[2].cancel(inp, soft=bool(header.get("soft")))
                elif op == "handover":
                    sock = self.server.daemon.handover(self.server.app)
                    socket.send_fds(self.conn.sock, [b"F"], [sock.fileno()] if sock is not None else [])
                elif op == "retire":
                    self.conn.send({"op": "retiring"})
                    self.server.daemon.on_retire()
        except (P.ConnectionClosed, OSError, EOFError):
            pass
        finally:
            self._gone()

    def _submit(self, header: dict, blobs: list) -> None:
        items = header["items"]
        try:
            pool = self.server.pool(header["target"])
        except Exception as exc:  # noqa: BLE001 - every input of the submit gets the error
            for cid, *_ in items:
                self.out.put((cid, LOCAL_ERR, exc, None))
            return
        inputs = []
        with self.lock:
            for (cid, method, kind, weight, index, how), blob in zip(items, blobs):
                inp = Input(method, bytes(blob), self, index=index, kind=kind, weight=weight)
                self.inflight[inp.id] = (cid, inp, pool)
                self.by_cid[cid] = inp
                if how:
                    self.detached.add(cid)
                if how == "spawn":
                    self.spawned.add(cid)
                    self.server.calls.pending(cid)
                inputs.append(inp)
        try:
            pool.submit(inputs)
        except Exception as exc:  # noqa: BLE001 - e.g. the app is stopping
            for inp in inputs:
                self.deliver(inp, LOCAL_ERR, exc, None)

    def _write(self) -> None:
        while True:
            first = self.out.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < RESULT_BATCH:
                try:
                    item = self.out.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self.out.put(None)
                    break
                batch.append(item)
            records, blobs = [], []
            for inp, status, payload, tb in batch:
                if isinstance(inp, str):  # an error before the input existed
                    cid, pool = inp, None
                else:
                    with self.lock:
                        entry = self.inflight.get(inp.id)
                        if entry is None:
                            continue
                        cid, _, pool = entry
                        if _terminal(status):
                            del self.inflight[inp.id]
                            self.by_cid.pop(cid, None)
                    self.server.note_done()
                blob = _dump_error(payload) if status == LOCAL_ERR else bytes(payload or b"")
                if _terminal(status):
                    self.detached.discard(cid)
                    if cid in self.spawned:
                        self.server.calls.finish(cid, status, blob, tb)
                        self.spawned.discard(cid)
                records.append((cid, status, tb, pool.chunk_size() if pool is not None else 1))
                blobs.append(blob)
            if records and not self.closed:
                try:
                    self.conn.send({"op": "results", "items": records}, blobs)
                except P.ConnectionClosed:
                    self.closed = True

    def retire(self) -> None:
        with contextlib.suppress(P.ConnectionClosed):
            self.conn.send({"op": "retire"})

    def busy(self) -> bool:
        with self.lock:
            return bool(self.inflight)

    def _gone(self) -> None:
        """The client went away: what it was waiting for is cancelled, its spawned calls go on."""
        self.closed = True
        with self.lock:
            entries = [e for e in self.inflight.values() if e[0] not in self.detached]
        for cid, inp, pool in entries:
            with contextlib.suppress(Exception):
                pool.cancel(inp, soft=True)
        # Keep the writer running until spawned calls are recorded; results for others are dropped.
        threading.Thread(target=self._finish, daemon=True).start()

    def _finish(self) -> None:
        while self.detached:
            time.sleep(0.05)
        with self.lock:
            self.inflight.clear()
        self.out.put(None)
        self.server.forget(self)
        self.conn.close()


class ControlServer:
    """The daemon's control socket: each connection a `_Link`."""

    def __init__(self, daemon: Any, app: Any, path: str):
        self.daemon, self.app, self.path = daemon, app, path
        self.calls = CallStore(daemon.name)
        self.calls.sweep()
        self.links: set[_Link] = set()
        self.lock = threading.Lock()
        self.pools: dict[Any, Any] = {}
        self.idle = threading.Condition()
        with contextlib.suppress(OSError):
            os.unlink(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(128)
        self.retired = False
        threading.Thread(target=self._accept, name="runner-control", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.sock.accept()
            except OSError:
                return
            link = _Link(self, P.Connection(sock))
            with self.lock:
                self.links.add(link)
                retired = self.retired
            if retired:
                link.retire()

    def pool(self, target: dict) -> Any:
        """The pool serving `{"function": name}` or `{"cls": name, "params": {...}}`."""
        key = repr(sorted(target.items()))
        with self.lock:
            pool = self.pools.get(key)
        if pool is not None:
            return pool
        app = self.app
        if "function" in target:
            fn = app._functions.get(target["function"])
            if fn is None:
                raise NotFoundError(f"app {self.daemon.name!r} has no function {target['function']!r}")
            if fn._web_label() is not None:
                raise InvalidError(f"{target['function']} is a web function: call it over HTTP at {fn.get_web_url()}")
            pool = fn._pool()
        else:
            cls = app._classes.get(target["cls"])
            if cls is None:
                raise NotFoundError(f"app {self.daemon.name!r} has no class {target['cls']!r}")
            obj = cls(**target.get("params", {}))
            pool = app._require_session(repr(obj)).pool(obj._target())
        with self.lock:
            self.pools[key] = pool
        return pool

    def note_done(self) -> None:
        with self.idle:
            self.idle.notify_all()

    def forget(self, link: _Link) -> None:
        with self.lock:
            self.links.discard(link)
        self.note_done()

    def retire(self) -> None:
        """A newer version serves now: clients send new inputs there."""
        with self.lock:
            self.retired = True
            links = list(self.links)
        for link in links:
            link.retire()

    def wait_idle(self, deadline: float) -> None:
        """Until every input that clients sent here has its result (or the deadline)."""
        with self.idle:
            while time.monotonic() < deadline:
                with self.lock:
                    busy = [link for link in self.links if link.busy()]
                if not busy:
                    return
                self.idle.wait(min(0.5, max(0.0, deadline - time.monotonic())))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()
        with contextlib.suppress(OSError):
            os.unlink(self.path)


# ---- spawned calls, kept on disk ------------------------------------------------------------------
class CallStore:
    """`calls/<id>.pending` (the daemon's pid) while a spawned call runs, then `calls/<id>.result`."""

    def __init__(self, app_name: str):
        from ._deploy import app_dir

        self.dir = app_dir(app_name) / "calls"
        self.dir.mkdir(mode=0o700, exist_ok=True)

    def sweep(self) -> None:
        cutoff = time.time() - CALL_TTL
        for path in self.dir.iterdir():
            with contextlib.suppress(OSError):
                if path.stat().st_mtime < cutoff:
                    path.unlink()

    def pending(self, cid: str) -> None:
        (self.dir / f"{cid}.pending").write_text(str(os.getpid()))

    def finish(self, cid: str, status: str, blob: bytes, tb: str | None) -> None:
        tmp = self.dir / f".{cid}.tmp"
        tmp.write_bytes(pickle.dumps((status, blob, tb)))
        os.replace(tmp, self.dir / f"{cid}.result")
        with contextlib.suppress(OSError):
            (self.dir / f"{cid}.pending").unlink()


def find_call(call_id: str) -> FunctionCall | None:
    """A spawned call of a deployed app, by id, from any process."""
    from ._home import subdir

    if not call_id.startswith("fc-") or not call_id[3:].replace("-", "").isalnum():
        return None
    for app in subdir("apps").iterdir():  # deployed now or not: a stopped app's results stay a day
        calls = app / "calls"
        if (calls / f"{call_id}.result").exists() or (calls / f"{call_id}.pending").exists():
            return StoredCall(call_id, app.name, calls)
    return None


class StoredCall(FunctionCall):
    """A spawned call of a deployed app found by id: its result is read from the app's `calls/`."""

    def __init__(self, call_id: str, app_name: str, calls: pathlib.Path):  # noqa: D107 - no pool here
        self.object_id, self._name, self._calls = call_id, f"{app_name} call", calls
        self._input = None
        self.closed = False

    def _result_now(self) -> tuple | None:
        path = self._calls / f"{self.object_id}.result"
        try:
            return pickle.loads(path.read_bytes())
        except FileNotFoundError:
            pass
        pending = self._calls / f"{self.object_id}.pending"
        try:
            pid = int(pending.read_text() or 0)
        except (OSError, ValueError):
            pid = 0
        from ._context import pid_alive

        if not pid or not pid_alive(pid):
            if (self._calls / f"{self.object_id}.result").exists():
                return pickle.loads((self._calls / f"{self.object_id}.result").read_bytes())
            raise OutputExpiredError(f"{self.object_id}: its app stopped before the call finished")
        return None

    def _wait(self, timeout: float | None) -> tuple:
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.005
        while True:
            got = self._result_now()
            if got is not None:
                return got
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"{self.object_id} did not finish within {timeout:g}s")
            time.sleep(delay if deadline is None else min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 0.1)

    def _get(self, timeout: float | None = None) -> Any:
        from ._function import _outcome

        status, blob, tb = self._wait(timeout)
        return _outcome(self._name, status, cloudpickle.loads(blob) if status == LOCAL_ERR else blob, tb)

    async def _get_aio(self, timeout: float | None = None) -> Any:
        import asyncio

        return await asyncio.to_thread(self._get, timeout)

    get = twin("_get_aio")(_get)

    def _cancel(self, terminate_containers: bool = False) -> None:
        raise InvalidError(f"{self.object_id}: a call found by id cannot be cancelled here; "
                           "cancel it from the process that spawned it")

    async def _cancel_aio(self, terminate_containers: bool = False) -> None:
        self._cancel(terminate_containers)

    cancel = twin("_cancel_aio")(_cancel)


# ---- the caller's side --------------------------------------------------------------------------
class _Channel:
    """This process's connection to one deployed app's current version."""

    def __init__(self, app_name: str):
        self.app_name = app_name
        self.lock = threading.Lock()
        self.conn: P.Connection | None = None  # where new inputs go: the current version's
        self.conns: dict[str, P.Connection] = {}  # connection id -> connection, retired ones too
        self.inflight: dict[str, dict[str, Input]] = {}  # connection id -> client id -> input
        self.conn_id = ""
        self.chunk = 1

    def _connect(self) -> tuple[str, P.Connection]:
        from ._deploy import read_state, unknown_app

        state = read_state(self.app_name)
        if state is None or not state.get("control"):
            raise unknown_app(self.app_name)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(state["control"])
        except OSError as exc:
            sock.close()
            raise ExecutionError(f"deployed app {self.app_name!r} does not answer ({exc.strerror or exc}); "
                                 f"see `runner app logs {self.app_name}`") from None
        conn = P.Connection(sock)
        conn_id = secrets.token_hex(4)
        self.inflight[conn_id] = {}
        self.conns[conn_id] = conn
        threading.Thread(target=self._read, args=(conn_id, conn), name="runner-deployed", daemon=True).start()
        return conn_id, conn

    def submit(self, target: dict, inputs: list[Input]) -> None:
        items, blobs = [], []
        for inp in inputs:
            # Spawned calls are recorded for from_id; they and spawn_map inputs outlive this process.
            how = "spawn" if isinstance(inp.sink, FunctionCall) else "detach" if isinstance(inp.sink, _Discard) else ""
            items.append((inp.id, inp.method, inp.kind, inp.weight, inp.index, how))
            blobs.append(inp.blob)
        with self.lock:
            if self.conn is None:
                self.conn_id, self.conn = self._connect()
            conn, conn_id = self.conn, self.conn_id
            for inp in inputs:
                self.inflight[conn_id][inp.id] = inp
        try:
            conn.send({"op": "submit", "target": target, "items": items}, blobs)
        except P.ConnectionClosed:
            pass  # the reader fails these inputs

    def cancel(self, inp: Input, soft: bool) -> None:
        """Cancel on the connection that carried the input (a retired version runs it to the end)."""
        with self.lock:
            conn = next((self.conns[cid] for cid, live in self.inflight.items() if inp.id in live), None)
        if conn is not None:
            with contextlib.suppress(P.ConnectionClosed):
                conn.send({"op": "cancel", "cid": inp.id, "soft": soft})

    def _read(self, conn_id: str, conn: P.Connection) -> None:
        retired = False
        try:
            while True:
                if retired and not self.inflight.get(conn_id):
                    return
                header, blobs = conn.recv()
                if header["op"] == "retire":
                    retired = True
                    with self.lock:
                        if self.conn is conn:
                            self.conn = None  # new inputs go to the new version
                    continue
                for (cid, status, tb, chunk), blob in zip(header["items"], blobs):
                    self.chunk = chunk
                    with self.lock:
                        live = self.inflight.get(conn_id, {})
                        inp = live.get(cid)
                        if inp is not None and _terminal(status):
                            del live[cid]
                    if inp is None:
                        continue
                    payload: Any = cloudpickle.loads(blob) if status == LOCAL_ERR else bytes(blob)
                    inp.sink.deliver(inp, status, payload, tb)
        except P.ConnectionClosed:
            pass
        finally:
            with self.lock:
                if self.conn is conn:
                    self.conn = None
                lost = self.inflight.pop(conn_id, {})
                self.conns.pop(conn_id, None)
            conn.close()
            for inp in lost.values():
                inp.sink.deliver(inp, LOCAL_ERR, ExecutionError(
                    f"deployed app {self.app_name!r} stopped before {inp.describe()} finished"), None)


class _Channels:
    """One channel per deployed app in this process."""

    def __init__(self):
        self.lock = threading.Lock()
        self.channels: dict[str, _Channel] = {}

    def get(self, app_name: str) -> _Channel:
        with self.lock:
            channel = self.channels.get(app_name)
            if channel is None:
                channel = self.channels[app_name] = _Channel(app_name)
            return channel


CHANNELS = _Channels()


class _RemoteSession:
    """What a FunctionCall asks of its pool's session."""

    closed = False

    def __init__(self):
        self.calls: dict[str, Any] = {}


class RemotePool:
    """A deployed function or class instance, with the interface of a local run's pool."""

    def __init__(self, app_name: str, target: dict, name: str):
        self.app_name, self.target, self.name = app_name, target, name
        self.channel = CHANNELS.get(app_name)
        self.session = _RemoteSession()

    def submit(self, inputs: list[Input]) -> None:
        for inp in inputs:
            if isinstance(inp.sink, FunctionCall):
                inp.id = inp.sink.object_id  # the daemon records it by this id, for from_id anywhere
        self.channel.submit(self.target, inputs)

    def cancel(self, inp: Input, soft: bool = False) -> None:
        self.channel.cancel(inp, soft)

    def chunk_size(self) -> int:
        return self.channel.chunk


def on_cluster() -> bool:
    """Whether deployed apps live on the stack's cluster (the kubernetes provider) for this process."""
    import os

    return os.environ.get("RUNNER_PROVIDER") == "kubernetes"


def apps() -> Any:
    """Where deployed apps live: runner._kube_deploy on a cluster, else runner._deploy (this host).
    Both have read_state, create_empty, deployed_apps, stop and follow_logs."""
    if on_cluster():
        from . import _kube_deploy as where
    else:
        from . import _deploy as where
    return where


def _describe(app_name: str) -> dict:
    from ._deploy import unknown_app

    state = apps().read_state(app_name)
    if state is None:
        raise unknown_app(app_name)
    return state


class DeployedFunction(Function):
    """`Function.from_name(app, name)`: a function of a deployed app, looked up on first use."""

    def __init__(self, app_name: str, name: str):  # noqa: D107 - no raw function here
        self._app_name, self._name, self._method, self._raw = app_name, name, None, None
        self._info: dict | None = None
        self.__name__ = self.__qualname__ = name
        self.__doc__ = None

    def __repr__(self) -> str:
        return f"Function.from_name({self._app_name!r}, {self._name!r})"

    def hydrate(self) -> DeployedFunction:
        """Look the function up now (it is looked up on first use otherwise)."""
        state = _describe(self._app_name)
        info = state["functions"].get(self._name)
        if info is None:
            have = ", ".join(state["functions"]) or "none"
            hint = f"; it has classes {', '.join(state['classes'])} (use Cls.from_name)" if state["classes"] else ""
            raise NotFoundError(f"deployed app {self._app_name!r} has no function {self._name!r} "
                                f"(its functions: {have}){hint}")
        self._info = {**info, "url": state["web"].get(self._name)}
        return self

    def _is_gen(self) -> bool:
        return bool((self._info or self.hydrate()._info)["gen"])

    def _pool(self):
        info = self._info or self.hydrate()._info
        if info["web"]:
            raise InvalidError(f"{self._name} is a web function: call it over HTTP at {info['url']}")
        if "key" in info:  # deployed to a cluster: through its queue
            from ._kube_deploy import lookup_pool

            return lookup_pool(self._app_name, info, self._name)
        return RemotePool(self._app_name, {"function": self._name}, self._name)

    def _web_label(self) -> str | None:
        return self._name if (self._info or self.hydrate()._info)["web"] else None

    def get_web_url(self) -> str | None:
        info = self._info or self.hydrate()._info
        if not info["web"]:
            raise InvalidError(f"{self._name} is not a web function")
        return info["url"]

    def local(self, *args, **kwargs):
        raise InvalidError(f"{self!r} runs in its deployed app; call .remote() (there is no local copy)")

    __call__ = local

    def get_raw_f(self) -> Callable:
        raise InvalidError(f"{self!r} runs in its deployed app; its source is not in this process")


class DeployedCls:
    """`Cls.from_name(app, name)`: call it with parameters, then call methods with `.remote()` etc."""

    def __init__(self, app_name: str, name: str):
        self._app_name, self._name = app_name, name
        self._info: dict | None = None

    def __repr__(self) -> str:
        return f"Cls.from_name({self._app_name!r}, {self._name!r})"

    def hydrate(self) -> DeployedCls:
        state = _describe(self._app_name)
        info = state["classes"].get(self._name)
        if info is None:
            raise NotFoundError(f"deployed app {self._app_name!r} has no class {self._name!r} "
                                f"(its classes: {', '.join(state['classes']) or 'none'})")
        self._info = info
        return self

    def __call__(self, **params: Any) -> _DeployedObj:
        info = self._info or self.hydrate()._info
        unknown = sorted(set(params) - set(info["params"]))
        if unknown:
            raise InvalidError(f"{self._name} has no parameter {', '.join(unknown)} "
                               f"(its parameters: {', '.join(info['params']) or 'none'})")
        return _DeployedObj(self, params)


class _DeployedObj:
    def __init__(self, cls: DeployedCls, params: dict):
        self._cls, self._params = cls, params

    def __repr__(self) -> str:
        return f"{self._cls._name}({', '.join(f'{k}={v!r}' for k, v in self._params.items())})"

    def __getattr__(self, name: str) -> _DeployedMethod:
        if name.startswith("_"):
            raise AttributeError(name)
        methods = self._cls._info["methods"]
        if name not in methods:
            raise AttributeError(f"{self._cls._name} has no @method {name!r} (its methods: {', '.join(methods)})")
        return _DeployedMethod(self, name, methods[name]["gen"])


class _DeployedMethod(_Invocable):
    def __init__(self, obj: _DeployedObj, name: str, gen: bool):
        self._obj, self._method, self._raw, self._gen = obj, name, None, gen
        self._name = f"{obj!r}.{name}"

    def _is_gen(self) -> bool:
        return self._gen

    def _pool(self):
        cls = self._obj._cls
        if "key" in cls._info:  # deployed to a cluster: through the instance's queue
            from ._kube_deploy import instance_pool

            return instance_pool(cls._app_name, cls._name, cls._info, self._obj._params, self._name)
        return RemotePool(cls._app_name, {"cls": cls._name, "params": self._obj._params}, self._name)

    def local(self, *args, **kwargs):
        raise InvalidError(f"{self._name} runs in its deployed app; call .remote()")
