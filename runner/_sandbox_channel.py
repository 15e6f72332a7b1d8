"""A Sandbox object's one connection to its sandbox's supervisor, and how it learns that the sandbox ended.

Everything a Sandbox object does goes over one unix socket, multiplexed (frames as in
`runner._sandbox_agent`): requests carry an id and wait for their reply, exec output and the main
command's output arrive as they are produced, and a reader thread sorts them into buffers. The
connection is made on first use, not with the object, so `Sandbox.from_id` and `Sandbox.list`
cost no round trip.

A sandbox can end while no client listens, and its container removes itself, so how it ended
comes from several places, in this order: what the supervisor said on the connection, the `exit`
file in its control directory, a control directory that `terminate()` removed, and last the
provider saying the container or process is gone ("lost"). The main command's output is read
from its files once the supervisor is gone, so nothing it printed is missed.

`SupervisorLink` is that part of a Sandbox object: `Sandbox` (in `runner._sandbox`) builds its
public calls on it.
"""

from __future__ import annotations

import functools
import itertools
import pathlib
import socket
import threading
import time

from . import _sandbox_agent as agent
from ._sandbox_host import Backend, get_backend, log_tail, read_json
from ._sandbox_io import Buffer, ContainerProcess
from .exception import ClientClosed, ExecutionError

ENDED_SETTLE = 15.0  # seconds to wait, once the supervisor said it ended, for a remote sandbox's record of it


class Channel:
    """The one connection a Sandbox object keeps to its supervisor; frames as in `runner._sandbox_agent`."""

    def __init__(self, sock: socket.socket, sandbox: SupervisorLink):
        self.sock, self.sandbox = sock, sandbox
        self.rfile = sock.makefile("rb")
        hello, _ = agent.read_frame(self.rfile)
        self.workdir, self.private = hello["workdir"], hello["private"]
        sock.settimeout(None)
        self.lock = threading.Lock()
        self.ids = itertools.count(1)
        self.pending: dict[int, list] = {}
        self.execs: dict[int, ContainerProcess] = {}
        self.ended: dict | None = None
        self.dead = False
        self.closed = threading.Event()
        threading.Thread(target=self._read, name=f"runner-{sandbox._id}", daemon=True).start()

    def send(self, header: dict, body: bytes = b"") -> None:
        data = agent.pack(header, body)
        with self.lock:
            if self.dead:
                raise ConnectionError("the sandbox's supervisor is gone")
            try:
                self.sock.sendall(data)
            except OSError as exc:
                raise ConnectionError(str(exc)) from exc

    def call(self, header: dict, body: bytes = b"", proc: ContainerProcess | None = None) -> tuple[dict, bytes]:
        slot: list = [threading.Event(), None]
        with self.lock:
            if self.dead:
                raise ConnectionError("the sandbox's supervisor is gone")
            header["rid"] = next(self.ids)
            self.pending[header["rid"]] = slot
            if proc is not None:
                self.execs[proc._eid] = proc
        self.send(header, body)
        slot[0].wait()
        if slot[1] is None:
            raise ConnectionError("the sandbox's supervisor is gone")
        return slot[1]

    def _read(self) -> None:
        try:
            while True:
                h, body = agent.read_frame(self.rfile)
                op = h.get("op")
                if op == "reply":
                    slot = self.pending.pop(h.get("rid"), None)
                    if slot is not None:
                        slot[1] = (h, body)
                        slot[0].set()
                elif op in ("out", "eof") and h.get("eid") in self.execs:
                    buf = self.execs[h["eid"]]._buffers[h["fd"]]
                    buf.feed(body) if op == "out" else buf.close()
                elif op == "exit" and h.get("eid") in self.execs:
                    self.execs.pop(h["eid"])._exited(h["code"])
                elif op in ("main", "main_eof"):
                    buf = self.sandbox._main[h["fd"]]
                    buf.feed(body) if op == "main" else buf.close()
                elif op == "ended":
                    self.ended = h
        except (EOFError, OSError, ValueError):
            pass
        finally:
            with self.lock:
                self.dead = True
                pending, execs = list(self.pending.values()), list(self.execs.values())
                self.pending.clear()
                self.execs.clear()
            for slot in pending:
                slot[0].set()
            self.sock.close()
            self.sandbox._channel_closed(self, execs)
            self.closed.set()

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class SupervisorLink:
    """The state a Sandbox object keeps of its sandbox: the connection, how it ended, the main
    command's output so far, and whether this object was detached."""

    def __init__(self, sandbox_id: str, meta: dict):
        self._id, self._meta = sandbox_id, meta
        self._run = pathlib.Path(meta["run"])
        self._ctl = self._run.parent
        self._lock = threading.RLock()
        self._chan: Channel | None = None
        self._result: dict | None = None
        self._detached = False
        self._main = {fd: Buffer(start=functools.partial(self._subscribe, fd)) for fd in agent.STREAMS}
        self._following: set[str] = set()

    def _backend(self) -> Backend:
        return get_backend(self._meta["provider"])

    def _check_attached(self) -> None:
        if self._detached:
            raise ClientClosed(f"this Sandbox object was detached from {self._id}; "
                               f"use Sandbox.from_id({self._id!r}) to reach it again")

    def _channel(self, wait: bool = True) -> Channel | None:
        """The open connection to the supervisor, made if need be; None once the sandbox has ended
        (or, with wait=False, while it is still starting)."""
        from ._session import START_TIMEOUT

        with self._lock:
            self._check_attached()
            if self._chan is not None and not self._chan.dead:
                return self._chan
            if self._result is not None or self._load_exit():
                return None
            path = str(self._run / agent.SOCKET)
            backend = self._backend()
            started = time.monotonic()
            check_at = started + 0.25
            while True:
                sock = None
                try:
                    sock = backend.connect(self._meta, path, wait)
                    self._chan = Channel(sock, self)
                    return self._chan
                except (OSError, EOFError, ValueError, KeyError):
                    if sock is not None:
                        sock.close()
                if self._load_exit():
                    return None
                now = time.monotonic()
                if not wait or now >= check_at:
                    if not backend.provider.sandbox_alive(self._meta):
                        self._result = self._result or {"reason": "lost", "code": 137}
                        return None
                    if not wait:
                        return None
                    check_at = now + 0.25
                if now - started > START_TIMEOUT:
                    raise ExecutionError(f"sandbox {self._id}'s supervisor did not answer within {START_TIMEOUT:g}s"
                                         f"{log_tail(self._run)}")
                time.sleep(0.002)

    def _load_exit(self, settle: float = 0.0) -> bool:
        """Take the end from the `exit` file (which a remote sandbox's provider copies there once it has
        ended, waiting up to `settle` seconds for that), or from a control directory removed by terminate()."""
        info = read_json(self._run / agent.EXIT)
        if info is None and self._ctl.is_dir() and self._backend().collect(self._meta, settle):
            info = read_json(self._run / agent.EXIT)
        if info is None and not self._ctl.is_dir():
            info = {"reason": "terminated", "code": 137}
        if info is not None:
            self._result = self._result or info
        return info is not None

    def _channel_closed(self, chan: Channel, execs: list[ContainerProcess]) -> None:
        """The supervisor is gone (or we detached): settle what waited on it."""
        with self._lock:
            if self._chan is chan:
                self._chan = None
            if self._detached:
                error = ClientClosed(f"this Sandbox object was detached from {self._id}")
                for proc in execs:
                    proc._lost(-1, error)
                for buf in self._main.values():
                    buf.close(error)
                return
            # The record first (its `exit` file): a remote sandbox's record arrives a moment after the
            # supervisor's last word, and says more (a pod past its deadline timed out, whatever the kubelet's
            # SIGTERM made the supervisor say).
            if self._result is None and not self._load_exit(ENDED_SETTLE if chan.ended else 0.0) \
                    and chan.ended is not None:
                self._result = {"reason": chan.ended["reason"], "code": chan.ended["code"]}
            if self._result is None and not self._backend().provider.sandbox_alive(self._meta):
                self._result = {"reason": "lost", "code": 137}
            for proc in execs:
                proc._lost(137)  # killed with the sandbox
            for fd in self._following:
                self._main_from_file(fd)

    def _wait_closed(self, chan: Channel) -> None:
        chan.closed.wait(30)

    def _subscribe(self, fd: str) -> None:
        """Follow the main command's stdout or stderr: from the supervisor while it runs, else from its file."""
        with self._lock:
            self._following.add(fd)
            chan = self._channel()
            if chan is None:
                self._main_from_file(fd)
                return
            try:
                chan.send({"op": "subscribe", "fd": fd, "offset": self._main[fd].received})
            except ConnectionError:
                pass  # it is ending: _channel_closed reads the rest from the file

    def _main_from_file(self, fd: str) -> None:
        buf = self._main[fd]
        if buf.eof:
            return
        try:
            with open(self._run / fd, "rb") as f:
                f.seek(buf.received)
                buf.feed(f.read())
        except OSError:
            pass  # terminated: its control directory is gone
        buf.close()
