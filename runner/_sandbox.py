"""Sandboxes: Modal's `Sandbox` API, containers to start, exec into, and read and write files in.

A sandbox is a container (docker) or a detached host process (embedded) whose first process is the
supervisor in `runner._sandbox_agent`. A Sandbox object keeps one connection to it, over a unix
socket, and multiplexes everything on it: exec, stdin, output streamed back as it is produced, and
file operations. So an exec starts no process on the host (no `docker exec`), and output arrives
while commands run.

`$RUNNER_HOME/sb/<id>/` holds `meta.json` (provider, container or pid, tunnels, app, deadline) and
`tags.json`, written by clients only. Its `run/` directory is what the supervisor sees (bind-mounted
at /run/runner-sb in a container): the socket, the spec, the main command's output and the `exit`
file. Exit code and output being files, `wait()`, `returncode` and `sb.stdout` work after a
container has removed itself, and `Sandbox.from_id` works from any process on this host.

Lifetimes follow Modal: a sandbox outlives the client that created it and ends when its command
exits, at `timeout`, after `idle_timeout`, or on `terminate()`; one created with an app inside
`with app.run():` ends with that run. Nothing is left behind: `terminate()` removes the container
and the control directory. The supervisor ends its sandbox at the deadline itself, and a docker
label holding the deadline lets any later client remove a sandbox whose supervisor could not
(OVERDUE seconds past it). Control directories of sandboxes that ended on their own are kept for
GRACE seconds, so other processes can still read how they ended, then swept (in the background, once
per process) by the next client process that creates, lists or looks up a sandbox.

Differences from Modal, by necessity: tunnels are plain TCP on 127.0.0.1 (no TLS, no public URL),
for `encrypted_ports` too. On the embedded provider there is no image and no filesystem isolation
(the sandbox is a process of this host), `memory` limits each process's address space, and
`block_network` needs root (a private network namespace).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import itertools
import json
import os
import pathlib
import re
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from . import _sandbox_agent as agent
from ._aio import _Aio, blocking
from ._home import check_name, home, subdir
from ._image import Image
from ._resources import MAX_TIMEOUT, _pair, check_volumes, parse_gpu
from ._secret import Secret
from .exception import (
    AlreadyExistsError,
    ClientClosed,
    ConflictError,
    ExecutionError,
    InvalidError,
    NotFoundError,
    ProviderError,
    SandboxTerminatedError,
    SandboxTimeoutError,
)

CONTAINER_RUN = "/run/runner-sb"  # where a container sees its control directory
ID = re.compile(r"^sb-[0-9a-f]{12}$")
GRACE = 600.0  # seconds an ended sandbox's control directory is kept before a client sweeps it
OVERDUE = 60.0  # seconds past its deadline after which any client removes a sandbox still running
MAX_SOCKET_PATH = 100  # a unix socket path must fit in sun_path (108 bytes on Linux)
ARG_MAX = 2**16  # bytes of command line, as Modal allows
STREAMS = agent.STREAMS


@dataclasses.dataclass(frozen=True)
class Tunnel:
    """A sandbox port published on this host's loopback. Modal's tunnels are public and TLS; these are
    plain TCP on 127.0.0.1, so `url` is http and `tcp_socket` works for every port."""

    host: str
    port: int
    unencrypted_host: str
    unencrypted_port: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def tcp_socket(self) -> tuple[str, int]:
        return (self.unencrypted_host, self.unencrypted_port)


# ---- streams ------------------------------------------------------------------------------------
class _Buffer:
    """The bytes of one output stream as they arrive, and whether it has ended."""

    def __init__(self, start: Callable[[], None] | None = None):
        self.cond = threading.Condition()
        self.data = bytearray()
        self.received = 0
        self.eof = False
        self.error: Exception | None = None
        self.start = start  # the main command's streams subscribe on the first read

    def feed(self, data: bytes) -> None:
        with self.cond:
            self.data += data
            self.received += len(data)
            self.cond.notify_all()

    def close(self, error: Exception | None = None) -> None:
        with self.cond:
            self.eof, self.error = True, self.error or error
            self.cond.notify_all()

    def take(self, line: bool) -> bytes | None:
        """Everything to the end of the stream, or (line=True) one line; None at the end."""
        start, self.start = self.start, None
        if start is not None:
            start()
        with self.cond:
            while not self.eof and not (line and b"\n" in self.data):
                self.cond.wait()
            if self.error is not None:
                raise self.error
            cut = self.data.find(b"\n") + 1 if line and b"\n" in self.data else len(self.data)
            if line and not cut:
                return None
            out = bytes(self.data[:cut])
            del self.data[:cut]
            return out


class StreamReader:
    """stdout or stderr of a sandbox or of an exec'd command, readable while it runs: `read()` to the
    end, or iterate (also `async for`) line by line."""

    def __init__(self, buf: _Buffer, text: bool):
        self._buf, self._text = buf, text

    def _decode(self, data: bytes):
        return data.decode(errors="replace") if self._text else data

    @blocking
    def read(self):
        return self._decode(self._buf.take(line=False))

    def __iter__(self) -> Iterator:
        while (line := self._buf.take(line=True)) is not None:
            yield self._decode(line)

    async def __aiter__(self):
        while (line := await asyncio.to_thread(self._buf.take, True)) is not None:
            yield self._decode(line)


class StreamWriter:
    """A command's stdin: `write()` buffers, `drain()` sends, `write_eof()` closes it with the next drain."""

    def __init__(self, send: Callable[[bytes, bool], None]):
        self._send = send
        self._buffer = bytearray()
        self._eof = self._eof_sent = False
        self._lock = threading.Lock()

    def write(self, data: bytes | bytearray | memoryview | str) -> None:
        if self._eof:
            raise InvalidError("stdin was closed by write_eof(); nothing more can be written to it")
        if isinstance(data, str):
            data = data.encode()
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise InvalidError(f"stdin.write() takes bytes or str, got {type(data).__name__}")
        with self._lock:
            self._buffer += data

    def write_eof(self) -> None:
        self._eof = True

    @blocking
    def drain(self) -> None:
        with self._lock:
            data, eof = bytes(self._buffer), self._eof and not self._eof_sent
            self._buffer.clear()
            self._eof_sent = self._eof_sent or eof
            if data or eof:
                self._send(data, eof)


class ContainerProcess:
    """A command started by `Sandbox.exec`: its streams, and its exit code once it has ended."""

    def __init__(self, sandbox: Sandbox, eid: int, text: bool):
        self._sandbox, self._eid = sandbox, eid
        self._buffers = {fd: _Buffer() for fd in STREAMS}
        self.stdout = StreamReader(self._buffers["stdout"], text)
        self.stderr = StreamReader(self._buffers["stderr"], text)
        self.stdin = StreamWriter(lambda data, eof: sandbox._send({"op": "stdin", "eid": eid, "eof": eof}, data))
        self._done = threading.Event()
        self._code: int | None = None

    def __repr__(self) -> str:
        return f"ContainerProcess({self._sandbox.object_id}, exec {self._eid})"

    def _exited(self, code: int) -> None:
        self._code = code
        self._done.set()

    def _lost(self, code: int, error: Exception | None = None) -> None:
        for buf in self._buffers.values():
            buf.close(error)
        self._exited(code)

    @property
    def returncode(self) -> int:
        if self._code is None:
            raise InvalidError("call wait() before reading returncode (poll() checks without blocking)")
        return self._code

    @blocking
    def poll(self) -> int | None:
        return self._code

    @blocking
    def wait(self) -> int:
        self._done.wait()
        return self._code


class FileIO:
    """A file in the sandbox, from `Sandbox.open`, with io.FileIO's calls; each is one request."""

    def __init__(self, sandbox: Sandbox, fid: int, path: str, mode: str):
        self._sandbox, self._fid, self._path, self._mode = sandbox, fid, path, mode
        self._text = "b" not in mode
        self._readable = "r" in mode or "+" in mode
        self._writable = any(c in mode for c in "wax+")
        self._closed = False

    def __repr__(self) -> str:
        return f"FileIO({self._path!r}, {self._mode!r})"

    def _call(self, call: str, need: str = "", body: bytes = b"", **fields):
        if self._closed:
            raise InvalidError(f"{self._path} is closed")
        if need and not (self._readable if need == "reading" else self._writable):
            raise InvalidError(f"{self._path} was opened with mode {self._mode!r}, which does not allow {need}")
        return self._sandbox._fs(call, body, fid=self._fid, path=self._path, **fields)

    def _decode(self, data: bytes):
        if not self._text:
            return data
        try:
            return data.decode()
        except UnicodeDecodeError:
            raise InvalidError(f"{self._path} is not UTF-8 text; open it in binary mode ('rb') to read its bytes") from None

    @blocking
    def read(self, n: int | None = None):
        return self._decode(self._call("read", "reading", n=n, text=self._text)[1])

    @blocking
    def readline(self):
        return self._decode(self._call("readline", "reading")[1])

    @blocking
    def write(self, data) -> int:
        if self._text != isinstance(data, str):
            raise InvalidError(f"{self._path} is open in {'text' if self._text else 'binary'} mode {self._mode!r}: "
                               f"write {'str' if self._text else 'bytes'}, not {type(data).__name__}")
        return self._call("write", "writing", data.encode() if self._text else bytes(data))[0]

    @blocking
    def seek(self, offset: int, whence: int = 0) -> int:
        if whence not in (0, 1, 2):
            raise InvalidError(f"seek(whence={whence!r}): use 0 (from the start), 1 (from here) or 2 (from the end)")
        return self._call("seek", offset=offset, whence=whence)[0]

    @blocking
    def tell(self) -> int:
        return self._call("tell")[0]

    @blocking
    def flush(self) -> None:
        self._call("flush")

    @blocking
    def close(self) -> None:
        if not self._closed:
            self._call("close")
            self._closed = True

    def __enter__(self) -> FileIO:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---- the connection to a supervisor ---------------------------------------------------------------
class _Channel:
    """The one connection a Sandbox object keeps to its supervisor; frames as in `runner._sandbox_agent`."""

    def __init__(self, sock: socket.socket, sandbox: Sandbox):
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
        threading.Thread(target=self._read, name=f"runner-{sandbox.object_id}", daemon=True).start()

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


# ---- the provider, once per process -------------------------------------------------------------
class _Backend:
    """One provider of a kind for this process, shared by every sandbox it creates or finds, with the
    images it has prepared: finding an image once is what keeps `create` fast."""

    def __init__(self, name: str):
        from ._providers import choose

        self.provider = choose(name)
        self.lock = threading.Lock()
        self.images: dict[str, Any] = {}
        self.image_locks: dict[str, threading.Lock] = {}
        self.swept: set[str] = set()

    def prepare(self, image: Image) -> Any:
        key = image.digest()
        with self.lock:
            lock = self.image_locks.setdefault(key, threading.Lock())
        with lock:
            if key not in self.images:
                self.images[key] = self.provider.prepare(image)
            return self.images[key]

    def sweep(self, root: pathlib.Path) -> None:
        """Once per state root per process, in the background: `_sweep`."""
        with self.lock:
            if str(root) in self.swept:
                return
            self.swept.add(str(root))
        threading.Thread(target=_sweep, args=(root,), name="runner-sandbox-sweep", daemon=True).start()


_backends_lock = threading.Lock()


@functools.cache
def _cached_backend(name: str) -> _Backend:
    return _Backend(name)


def _backend(name: str) -> _Backend:
    with _backends_lock:
        return _cached_backend(name)


@functools.cache
def _detected_provider() -> str:
    from ._providers import docker_answers

    return "docker" if docker_answers() else "embedded"


def _provider_name() -> str:
    from ._providers import PROVIDER_ENV

    return os.environ.get(PROVIDER_ENV) or _detected_provider()


@dataclasses.dataclass
class SandboxRequest:
    """What a provider needs to start a sandbox's supervisor."""

    id: str
    app: str
    run_dir: str  # host directory of the socket, spec, output and exit files
    env: dict[str, str]  # runner's own (the store, image env on embedded); the user's go in env.json
    workdir: str | None
    cpu: tuple[float, float | None] | None
    memory: tuple[float, float | None] | None
    gpu: tuple
    block_network: bool
    ports: tuple[int, ...]
    binds: list  # runner._mounts.Bind: volumes and the store
    deadline: float  # wall-clock time by which it must have ended


# ---- the sandbox ----------------------------------------------------------------------------------
class Sandbox:
    """A sandbox: `Sandbox.create(...)`, then `exec`, files, `wait`, `terminate`. Like Modal's, it
    mirrors asyncio.subprocess.Process, and every blocking call has an `.aio` twin."""

    def __init__(self, sandbox_id: str, meta: dict):
        self._id, self._meta = sandbox_id, meta
        self._run = pathlib.Path(meta["run"])
        self._ctl = self._run.parent
        self._lock = threading.RLock()
        self._chan: _Channel | None = None
        self._result: dict | None = None
        self._detached = False
        self._main = {fd: _Buffer(start=functools.partial(self._subscribe, fd)) for fd in STREAMS}
        self._following: set[str] = set()
        self._stdout = StreamReader(self._main["stdout"], text=True)
        self._stderr = StreamReader(self._main["stderr"], text=True)
        self._stdin = StreamWriter(lambda data, eof: self._send({"op": "stdin", "eid": "main", "eof": eof}, data))

    def __repr__(self) -> str:
        return f"Sandbox({self._id})"

    @property
    def object_id(self) -> str:
        return self._id

    @property
    def returncode(self) -> int | None:
        """The exit code once it has ended (124 after its timeout, 137 when terminated), else None."""
        return None if self._result is None else self._result["code"]

    @property
    def stdout(self) -> StreamReader:
        self._check_attached()
        return self._stdout

    @property
    def stderr(self) -> StreamReader:
        self._check_attached()
        return self._stderr

    @property
    def stdin(self) -> StreamWriter:
        self._check_attached()
        return self._stdin

    # ---- creating and finding --------------------------------------------------------------
    @blocking
    @staticmethod
    def create(*args: str, app: Any = None, name: str | None = None, tags: dict[str, str] | None = None,
               image: Image | None = None, env: dict[str, str | None] | None = None, secrets: Any = None,
               volumes: dict | None = None, workdir: str | None = None, timeout: float = 300,
               idle_timeout: float | None = None, cpu: Any = None, memory: Any = None, gpu: str | None = None,
               block_network: bool = False, encrypted_ports: Any = (), unencrypted_ports: Any = ()) -> Sandbox:
        """Start a sandbox running `args` (with none, it idles until its timeout or `terminate()`)."""
        from ._app import App
        from ._mounts import storage_access

        cmd = _check_cmd(args, "Sandbox.create")
        if app is not None and not isinstance(app, App):
            raise InvalidError(f"Sandbox.create(app=...) takes a runner.App, got {type(app).__name__}")
        if image is not None and not isinstance(image, Image):
            raise InvalidError(f"Sandbox.create(image=...) takes a runner.Image, got {type(image).__name__}")
        if name is not None:
            check_name(name, "sandbox")
        tags = _check_tags(tags, "Sandbox.create(tags=...)")
        env = {**_secret_env(secrets, "Sandbox.create"), **_check_env(env, "Sandbox.create(env=...)")}
        volumes = check_volumes(volumes or {}, "Sandbox.create(volumes=...)")
        workdir = _check_workdir(workdir, "Sandbox.create")
        timeout = _check_seconds("Sandbox.create(timeout=...)", timeout)
        idle_timeout = None if idle_timeout is None else _check_seconds("Sandbox.create(idle_timeout=...)", idle_timeout)
        if isinstance(gpu, (list, tuple)):
            raise InvalidError("Sandbox.create(gpu=...) takes one GPU type such as 'H100' or 'A100:2', not a list")
        gpu, cpu, memory = parse_gpu(gpu), _pair("cpu", cpu, float), _pair("memory", memory, int)
        if not isinstance(block_network, bool):
            raise InvalidError(f"Sandbox.create(block_network=...) must be True or False, got {block_network!r}")
        ports = _check_ports(encrypted_ports, unencrypted_ports)
        if block_network and ports:
            raise InvalidError("Sandbox.create: ports cannot be opened with block_network=True, which leaves the "
                               "sandbox no network to publish them on; drop the ports or block_network")
        image = image or Image.debian_slim()
        backend = _backend(_provider_name())
        provider = backend.provider
        provider.validate(image, gpu, cpu, memory, "Sandbox.create")
        app_id, app_name = (app.app_id, app.name) if app is not None else (None, None)
        root = subdir("sb")
        backend.sweep(root)
        if name is not None and any(m.get("app_name") == app_name and m.get("name") == name for m in _live(root).values()):
            raise AlreadyExistsError(f"a sandbox named {name!r} is running in app {app_name!r} already; "
                                     "pick another name, or terminate that one first")
        sid = "sb-" + os.urandom(6).hex()
        ctl, run = root / sid, root / sid / "run"
        if len(str(run / agent.SOCKET)) > MAX_SOCKET_PATH:
            raise InvalidError(f"RUNNER_HOME={home()} is too long for a unix socket: sandbox sockets go under it, and "
                               f"{run / agent.SOCKET} has {len(str(run / agent.SOCKET))} characters (at most "
                               f"{MAX_SOCKET_PATH}); set RUNNER_HOME to a shorter directory")
        if provider.name == "embedded" and any(s.kind != "env" for s in image.steps):
            from ._output import output

            output().notice("runner: embedded mode does not apply image build steps; the sandbox runs in this "
                            "host's environment. Use --provider docker to build images.")
        prepared = backend.prepare(image)
        storage_env, binds = storage_access(dict(volumes), provider.name)
        host_env = {**(image.env_vars() if provider.name == "embedded" else {}), **storage_env}
        ctl.mkdir(mode=0o700)
        run.mkdir()
        os.chmod(run, 0o777)  # the image's user (maybe not root) writes here; the 0700 directory above guards it
        now = time.time()
        meta = {"id": sid, "provider": provider.name, "run": str(run), "app_id": app_id, "app_name": app_name,
                "name": name, "created": now, "deadline": now + timeout, "timeout": timeout}
        try:
            agent.write_json(str(ctl / "meta.json"), meta)
            agent.write_json(str(ctl / "tags.json"), tags)
            agent.write_json(str(run / agent.SPEC), {"cmd": cmd, "timeout": timeout, "idle_timeout": idle_timeout,
                                                     "workdir": workdir})
            agent.write_json(str(run / agent.ENV), env)  # secrets too: never in the container's config
            req = SandboxRequest(sid, app_id or app_name or "", str(run), host_env, workdir, cpu, memory, gpu,
                                 block_network, ports, binds, meta["deadline"])
            meta.update(provider.sandbox_start(req, prepared))
            agent.write_json(str(ctl / "meta.json"), meta)
            sb = Sandbox(sid, meta)
            sb._channel()
            if sb._result is not None and sb._result["reason"] == "error":
                raise ExecutionError(f"sandbox {sid} could not start: {sb._result.get('message')}")
            if app is not None and app._session is not None:
                app._session.on_close(sb._end_with_app)  # ends with the run, as on Modal
        except BaseException:
            if "pid" in meta or "container" in meta:
                provider.sandbox_remove(meta)
            shutil.rmtree(ctl, ignore_errors=True)
            raise
        return sb

    @blocking
    @staticmethod
    def from_id(sandbox_id: str) -> Sandbox:
        """The sandbox with this id, from any process on this host, running or recently ended."""
        if not isinstance(sandbox_id, str) or not ID.match(sandbox_id):
            raise InvalidError(f"{sandbox_id!r} is not a sandbox id; they look like 'sb-0123456789ab'")
        root = subdir("sb")
        meta = _read_json(root / sandbox_id / "meta.json")
        if meta is None:
            raise NotFoundError(f"no sandbox {sandbox_id} on this host (under {root}): it was terminated, ended "
                                f"more than {GRACE / 60:g} minutes ago, or was created with another RUNNER_HOME")
        _backend(meta["provider"]).sweep(root)
        sb = Sandbox(sandbox_id, meta)
        sb._load_exit()
        return sb

    @blocking
    @staticmethod
    def from_name(app_name: str, name: str) -> Sandbox:
        """The running sandbox created with `name=` in the app named `app_name`."""
        for sid, meta in _live(subdir("sb")).items():
            if meta.get("app_name") == app_name and meta.get("name") == name:
                return Sandbox(sid, meta)
        raise NotFoundError(f"no running sandbox named {name!r} in app {app_name!r}")

    @staticmethod
    def _list(*, app_id: str | None = None, tags: dict[str, str] | None = None) -> Iterator[Sandbox]:
        tags = _check_tags(tags, "Sandbox.list(tags=...)")
        root = subdir("sb")
        found = []
        for sid, meta in sorted(_live(root).items(), key=lambda item: -item[1]["created"]):
            if app_id is not None and meta.get("app_id") != app_id:
                continue
            have = _read_json(root / sid / "tags.json") or {}
            if all(have.get(k) == v for k, v in tags.items()):
                found.append(Sandbox(sid, meta))
        return iter(found)

    @staticmethod
    async def _list_aio(*, app_id: str | None = None, tags: dict[str, str] | None = None):
        for sb in await asyncio.to_thread(Sandbox._list, app_id=app_id, tags=tags):
            yield sb

    # `Sandbox.list(...)` and `async for sb in Sandbox.list.aio(...)`: running sandboxes, newest
    # first, of one app (by app_id) and with at least the given tags.
    list = _Aio(_list, _list_aio)

    @blocking
    def set_tags(self, tags: dict[str, str]) -> None:
        """Replace the sandbox's tags (which `Sandbox.list(tags=...)` filters on)."""
        self._check_attached()
        tags = _check_tags(tags, "set_tags")
        if not self._ctl.is_dir():
            raise self._finished("set tags on")
        agent.write_json(str(self._ctl / "tags.json"), tags)

    @blocking
    def get_tags(self) -> dict[str, str]:
        self._check_attached()
        return _read_json(self._ctl / "tags.json") or {}

    @blocking
    def tunnels(self, timeout: int = 50) -> dict[int, Tunnel]:
        """{container port: Tunnel} for the ports it was created with, published on 127.0.0.1 only."""
        self._check_attached()
        return {int(port): Tunnel("127.0.0.1", host, "127.0.0.1", host)
                for port, host in (self._meta.get("ports") or {}).items()}

    # ---- running commands ------------------------------------------------------------------
    @blocking
    def exec(self, *args: str, workdir: str | None = None, env: dict[str, str | None] | None = None,
             secrets: Any = None, timeout: float | None = None, text: bool = True, bufsize: int = -1) -> ContainerProcess:
        """Run a command in the sandbox; its output streams back while it runs."""
        cmd = _check_cmd(args, "exec")
        if not cmd:
            raise InvalidError("exec needs a command, e.g. sb.exec('ls', '-l')")
        workdir = _check_workdir(workdir, "exec")
        env = {**_secret_env(secrets, "exec"), **_check_env(env, "exec(env=...)")}
        timeout = None if timeout is None else _check_seconds("exec(timeout=...)", timeout)
        if not isinstance(text, bool):
            raise InvalidError(f"exec(text=...) must be True or False, got {text!r}")
        if bufsize not in (-1, 1):
            raise InvalidError(f"exec(bufsize=...) must be -1 or 1, got {bufsize!r}")
        chan = self._channel()
        if chan is None:
            raise self._finished("exec in")
        proc = ContainerProcess(self, next(chan.ids), text)
        try:
            reply, _ = chan.call({"op": "exec", "eid": proc._eid, "args": cmd, "env": env, "workdir": workdir,
                                  "timeout": timeout}, proc=proc)
        except ConnectionError:
            self._wait_closed(chan)
            raise self._finished("exec in") from None
        if not reply["ok"]:
            raise ExecutionError(f"sandbox {self._id}: {reply['error']}")
        return proc

    @blocking
    def wait(self, raise_on_termination: bool = True) -> None:
        """Wait until the sandbox ends; raise if it timed out, or (unless told not to) was terminated."""
        while self._result is None:
            chan = self._channel()
            if chan is not None:
                chan.closed.wait()
        reason = self._result["reason"]
        if reason == "timeout":
            raise SandboxTimeoutError(f"sandbox {self._id} ran past its timeout of {self._meta['timeout']:g}s")
        if raise_on_termination and reason in ("terminated", "idle", "lost"):
            raise SandboxTerminatedError(f"sandbox {self._id} was terminated"
                                         + (" after its idle_timeout" if reason == "idle" else ""))

    @blocking
    def poll(self) -> int | None:
        """The return code if it has ended, else None; never blocks for long."""
        if self._result is None:
            self._channel(wait=False)
        return self.returncode

    @blocking
    def terminate(self, *, wait: bool = False) -> int | None:
        """End the sandbox now: its container (or process) and its control directory are removed."""
        self._check_attached()
        with self._lock:
            if self._result is None and not self._load_exit():
                self._result = {"reason": "terminated", "code": 137}
            chan = self._chan
        self._backend().provider.sandbox_remove(self._meta)
        if chan is not None:
            chan.close()
            self._wait_closed(chan)
        shutil.rmtree(self._ctl, ignore_errors=True)
        return self.returncode if wait else None

    @blocking
    def detach(self) -> None:
        """Close this object's connection; the sandbox runs on (`Sandbox.from_id` reaches it again)."""
        with self._lock:
            self._detached, chan = True, self._chan
        if chan is not None:
            chan.close()
            self._wait_closed(chan)

    def _end_with_app(self) -> None:
        """The app run this sandbox was created in is ending."""
        if not self._detached:
            self.terminate()

    # ---- files -----------------------------------------------------------------------------
    @blocking
    def open(self, path: str, mode: str = "r") -> FileIO:
        """Open a file in the sandbox (modes as open(): r, w, a, x, with b and +)."""
        if not isinstance(mode, str) or not mode or set(mode) - set("rwaxb+") or len(set(mode)) != len(mode) \
                or sum(c in mode for c in "rwax") != 1:
            raise InvalidError(f"invalid file mode {mode!r}: use one of r, w, a, x, optionally with b and/or +")
        full = self._path(path)
        return FileIO(self, self._fs("open", path=full, mode=mode)[0], full, mode)

    @blocking
    def ls(self, path: str) -> list[str]:
        """The names in a directory of the sandbox."""
        return self._fs("ls", path=self._path(path))[0]

    @blocking
    def mkdir(self, path: str, parents: bool = False) -> None:
        """Make a directory; with parents=True, also its missing parents (and no error if it exists)."""
        self._fs("mkdir", path=self._path(path), parents=bool(parents))

    @blocking
    def rm(self, path: str, recursive: bool = False) -> None:
        """Remove a file, or an empty directory; with recursive=True, a directory and all in it."""
        self._fs("rm", path=self._path(path), recursive=bool(recursive))

    def _path(self, path: Any) -> str:
        """An absolute, normalized path in the sandbox; relative paths start at its workdir."""
        if not isinstance(path, str) or not path:
            raise InvalidError(f"a sandbox path must be a non-empty string, got {path!r}")
        if "\0" in path:
            raise InvalidError(f"sandbox path {path!r} contains a NUL byte")
        chan = self._channel()
        if chan is None:
            raise self._finished("use files in")
        parts: list[str] = []
        for part in (path if path.startswith("/") else f"{chan.workdir}/{path}").split("/"):
            if part == "..":
                if not parts:
                    raise InvalidError(f"sandbox path {path!r} climbs above / with '..'")
                parts.pop()
            elif part not in ("", "."):
                parts.append(part)
        full = "/" + "/".join(parts)
        if full == chan.private or full.startswith(chan.private.rstrip("/") + "/"):
            raise InvalidError(f"{path} is inside the sandbox's private control directory {chan.private}; use another path")
        return full

    def _fs(self, call: str, body: bytes = b"", **fields) -> tuple[Any, bytes]:
        chan = self._channel()
        if chan is None:
            raise self._finished("use files in")
        try:
            reply, data = chan.call({"op": "fs", "call": call, **fields}, body)
        except ConnectionError:
            self._wait_closed(chan)
            raise self._finished("use files in") from None
        if reply["ok"]:
            return reply.get("value"), data
        if reply.get("errno"):  # OSError picks the subclass: FileNotFoundError, IsADirectoryError, ...
            raise OSError(reply["errno"], reply.get("error"), reply.get("path"))
        raise InvalidError(f"sandbox {self._id}: {reply.get('error')}")

    # ---- the connection, and how the sandbox ended -----------------------------------------
    def _backend(self) -> _Backend:
        return _backend(self._meta["provider"])

    def _check_attached(self) -> None:
        if self._detached:
            raise ClientClosed(f"this Sandbox object was detached from {self._id}; "
                               f"use Sandbox.from_id({self._id!r}) to reach it again")

    def _finished(self, what: str) -> ConflictError:
        return ConflictError(f"sandbox {self._id} has finished (return code {self.returncode}), so there is nothing "
                             f"to {what} any more; create a new sandbox")

    def _send(self, header: dict, body: bytes) -> None:
        chan = self._channel()
        try:
            if chan is None:
                raise ConnectionError
            chan.send(header, body)
        except ConnectionError:
            raise self._finished("write to") from None

    def _channel(self, wait: bool = True) -> _Channel | None:
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
            started = time.monotonic()
            check_at = started + 0.25
            while True:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    sock.settimeout(10)
                    sock.connect(path)
                    self._chan = _Channel(sock, self)
                    return self._chan
                except (OSError, EOFError, ValueError, KeyError):
                    sock.close()
                if self._load_exit():
                    return None
                now = time.monotonic()
                if not wait or now >= check_at:
                    if not self._backend().provider.sandbox_alive(self._meta):
                        self._result = self._result or {"reason": "lost", "code": 137}
                        return None
                    if not wait:
                        return None
                    check_at = now + 0.25
                if now - started > START_TIMEOUT:
                    raise ExecutionError(f"sandbox {self._id}'s supervisor did not answer within {START_TIMEOUT:g}s"
                                         f"{_log_tail(self._run)}")
                time.sleep(0.002)

    def _load_exit(self) -> bool:
        """Take the end from the `exit` file, or from a control directory removed by terminate()."""
        info = _read_json(self._run / agent.EXIT)
        if info is None and not self._ctl.is_dir():
            info = {"reason": "terminated", "code": 137}
        if info is not None:
            self._result = self._result or info
        return info is not None

    def _channel_closed(self, chan: _Channel, execs: list[ContainerProcess]) -> None:
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
            if self._result is None and chan.ended is not None:
                self._result = {"reason": chan.ended["reason"], "code": chan.ended["code"]}
            if self._result is None and not self._load_exit() and not self._backend().provider.sandbox_alive(self._meta):
                self._result = {"reason": "lost", "code": 137}
            for proc in execs:
                proc._lost(137)  # killed with the sandbox
            for fd in self._following:
                self._main_from_file(fd)

    def _wait_closed(self, chan: _Channel) -> None:
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


# ---- state on disk ---------------------------------------------------------------------------------
def _read_json(path: pathlib.Path) -> Any:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _log_tail(run: pathlib.Path) -> str:
    try:
        text = (run / agent.LOG).read_text(errors="replace").strip()
    except OSError:
        return ""
    return f"; its log ends:\n{text[-2000:]}" if text else ""


def _live(root: pathlib.Path) -> dict[str, dict]:
    """{id: meta} of the sandboxes under `root` that are running."""
    by_provider: dict[str, dict[str, dict]] = {}
    for ctl in root.iterdir():
        meta = _read_json(ctl / "meta.json")
        if meta is not None and not (ctl / "run" / agent.EXIT).exists():
            by_provider.setdefault(meta["provider"], {})[ctl.name] = meta
    live = {}
    for name, metas in by_provider.items():
        try:
            backend = _backend(name)
        except ProviderError:  # e.g. no Docker daemon now: its sandboxes cannot be reached, so none is listed
            continue
        backend.sweep(root)
        running = backend.provider.sandbox_running(metas)
        live.update({sid: meta for sid, meta in metas.items() if sid in running})
    return live


def _sweep(root: pathlib.Path) -> None:
    """Remove what sandboxes left behind: control directories GRACE seconds after their sandbox
    ended (or, if it died without saying so, after its deadline), and sandboxes still running
    OVERDUE seconds past their deadline, which their supervisor failed to end."""
    try:
        now = time.time()
        by_provider: dict[str, dict[str, dict]] = {}
        for ctl in root.iterdir():
            ended = ctl / "run" / agent.EXIT
            meta = _read_json(ctl / "meta.json")
            try:
                if ended.exists() or meta is None:
                    if now - (ended if ended.exists() else ctl).stat().st_mtime > GRACE:
                        shutil.rmtree(ctl, ignore_errors=True)
                    continue
            except OSError:
                continue
            by_provider.setdefault(meta["provider"], {})[ctl.name] = meta
        for name, metas in by_provider.items():
            provider = _backend(name).provider
            running = provider.sandbox_running(metas)
            for sid, meta in metas.items():
                if sid not in running and now > meta["deadline"] + GRACE:
                    shutil.rmtree(root / sid, ignore_errors=True)
            for handle in running.values():
                if handle["deadline"] + OVERDUE < now:
                    provider.sandbox_remove(handle)
    except Exception:  # noqa: BLE001 - best effort in the background; the next client tries again
        pass


# ---- checks ------------------------------------------------------------------------------------------
def _check_cmd(args: tuple, what: str) -> list[str]:
    bad = [a for a in args if not isinstance(a, str)]
    if bad:
        raise InvalidError(f"{what}: every argument of the command must be a string, got {bad[0]!r}")
    if any("\0" in a for a in args):
        raise InvalidError(f"{what}: an argument of the command contains a NUL byte")
    if sum(len(a.encode()) for a in args) > ARG_MAX:
        raise InvalidError(f"{what}: the command is over {ARG_MAX} bytes long; pass large data through stdin or a file")
    return list(args)


def _check_seconds(what: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= MAX_TIMEOUT:
        raise InvalidError(f"{what} must be a number of seconds above 0 and at most {MAX_TIMEOUT} (24 hours), got {value!r}")
    return float(value)


def _check_workdir(workdir: Any, what: str) -> str | None:
    if workdir is not None and (not isinstance(workdir, str) or not workdir.startswith("/") or "\0" in workdir):
        raise InvalidError(f"{what}(workdir=...) must be an absolute path such as '/tmp', got {workdir!r}")
    return workdir


def _check_env(env: Any, what: str) -> dict[str, str]:
    if env is None:
        return {}
    if not isinstance(env, dict) or not all(isinstance(k, str) and k and "=" not in k and "\0" not in k
                                            and (v is None or isinstance(v, str) and "\0" not in v)
                                            for k, v in env.items()):
        raise InvalidError(f"{what} must be a dict of variable names to str (or None to leave one out)")
    return {k: v for k, v in env.items() if v is not None}


def _secret_env(secrets: Any, what: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for secret in secrets or ():
        if not isinstance(secret, Secret):
            raise InvalidError(f"{what}(secrets=...) takes runner.Secret objects, got {type(secret).__name__}")
        values.update(secret.env())
    return values


def _check_tags(tags: Any, what: str) -> dict[str, str]:
    if tags is None:
        return {}
    if not isinstance(tags, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in tags.items()):
        raise InvalidError(f"{what} must be a dict of str to str, got {tags!r}")
    return dict(tags)


def _check_ports(*groups: Any) -> tuple[int, ...]:
    ports: list[int] = []
    for group in groups:
        for port in group or ():
            if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
                raise InvalidError(f"Sandbox.create: port {port!r} must be an integer from 1 to 65535")
            if port in ports:
                raise InvalidError(f"Sandbox.create: port {port} is given twice")
            ports.append(port)
    return tuple(ports)
