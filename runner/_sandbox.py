"""Sandboxes: Modal's `Sandbox` API, containers to start, exec into, and read and write files in.

A sandbox is a container (docker), a Pod (kubernetes) or a detached host process (embedded) whose
first process is the supervisor in `runner._sandbox_agent` (on kubernetes, its child: see
`runner._sandbox_kube`). A Sandbox object keeps one connection to it, over a unix socket (on
kubernetes, one pods/exec stream bridged to that socket in the pod), and multiplexes everything on
it: exec, stdin, output streamed back as it is produced, and file operations. So an exec starts no
process on the host (no `docker exec`), and output arrives while commands run.

`$RUNNER_HOME/sb/<id>/` holds `meta.json` (provider, container, pid or pod, tunnels, app, deadline)
and `tags.json`, written by clients only. Its `run/` directory is what the supervisor sees
(bind-mounted at /run/runner-sb in a container): the socket, the spec, the main command's output
and the `exit` file. A pod's supervisor has its own run directory, and the client copies its
`exit` file and output here from the pod's log once the pod has ended. Exit code and output being
files, `wait()`, `returncode` and `sb.stdout` work after a container or pod has been removed, and
`Sandbox.from_id` works from any process on this host.

Lifetimes follow Modal: a sandbox outlives the client that created it and ends when its command
exits, at `timeout`, after `idle_timeout`, or on `terminate()`; one created with an app inside
`with app.run():` ends with that run. Nothing is left behind: `terminate()` removes the container
and the control directory. The supervisor ends its sandbox at the deadline itself, and a docker
label holding the deadline lets any later client remove a sandbox whose supervisor could not
(OVERDUE seconds past it). Control directories of sandboxes that ended on their own are kept for
GRACE seconds, so other processes can still read how they ended, then swept (in the background, once
per process) by the next client process that creates, lists or looks up a sandbox.

Differences from Modal, by necessity: tunnels are plain TCP on 127.0.0.1 (no TLS, no public URL),
for `encrypted_ports` too, and there are none yet on the kubernetes provider. On the embedded
provider there is no image and no filesystem isolation (the sandbox is a process of this host),
`memory` limits each process's address space, and `block_network` needs root (a private network
namespace).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import time
from collections.abc import Iterator
from typing import Any

from . import _sandbox_agent as agent
from ._aio import _Aio, blocking
from ._home import check_name, home, subdir
from ._image import Image
from ._resources import _pair, check_volumes, parse_gpu
from ._sandbox_channel import SupervisorLink
from ._sandbox_checks import check_cmd, check_env, check_ports, check_seconds, check_tags, check_workdir, secret_env
from ._sandbox_host import GRACE, SandboxRequest, get_backend, live_sandboxes, provider_name, read_json
from ._sandbox_io import ContainerProcess, FileIO, StreamReader, StreamWriter, Tunnel
from .exception import (
    AlreadyExistsError,
    ConflictError,
    ExecutionError,
    InvalidError,
    NotFoundError,
    SandboxTerminatedError,
    SandboxTimeoutError,
)

ID = re.compile(r"^sb-[0-9a-f]{12}$")
MAX_SOCKET_PATH = 100  # a unix socket path must fit in sun_path (108 bytes on Linux)


class Sandbox(SupervisorLink):
    """A sandbox: `Sandbox.create(...)`, then `exec`, files, `wait`, `terminate`. Like Modal's, it
    mirrors asyncio.subprocess.Process, and every blocking call has an `.aio` twin."""

    def __init__(self, sandbox_id: str, meta: dict):
        super().__init__(sandbox_id, meta)
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

        cmd = check_cmd(args, "Sandbox.create")
        if app is not None and not isinstance(app, App):
            raise InvalidError(f"Sandbox.create(app=...) takes a runner.App, got {type(app).__name__}")
        if image is not None and not isinstance(image, Image):
            raise InvalidError(f"Sandbox.create(image=...) takes a runner.Image, got {type(image).__name__}")
        if name is not None:
            check_name(name, "sandbox")
        tags = check_tags(tags, "Sandbox.create(tags=...)")
        user_env = check_env(env, "Sandbox.create(env=...)")
        env = {**secret_env(secrets, "Sandbox.create"), **user_env}
        volumes = check_volumes(volumes or {}, "Sandbox.create(volumes=...)")
        workdir = check_workdir(workdir, "Sandbox.create")
        timeout = check_seconds("Sandbox.create(timeout=...)", timeout)
        idle_timeout = None if idle_timeout is None else check_seconds("Sandbox.create(idle_timeout=...)", idle_timeout)
        if isinstance(gpu, (list, tuple)):
            raise InvalidError("Sandbox.create(gpu=...) takes one GPU type such as 'H100' or 'A100:2', not a list")
        gpu, cpu, memory = parse_gpu(gpu), _pair("cpu", cpu, float), _pair("memory", memory, int)
        if not isinstance(block_network, bool):
            raise InvalidError(f"Sandbox.create(block_network=...) must be True or False, got {block_network!r}")
        ports = check_ports(encrypted_ports, unencrypted_ports)
        if block_network and ports:
            raise InvalidError("Sandbox.create: ports cannot be opened with block_network=True, which leaves the "
                               "sandbox no network to publish them on; drop the ports or block_network")
        image = image or Image.debian_slim()
        backend = get_backend(provider_name())
        provider = backend.provider
        provider.validate(image, gpu, cpu, memory, "Sandbox.create")
        app_id, app_name = (app.app_id, app.name) if app is not None else (None, None)
        root = subdir("sb")
        backend.sweep(root)
        if name is not None and any(m.get("app_name") == app_name and m.get("name") == name for m in live_sandboxes(root).values()):
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
        # A remote sandbox (kubernetes) gets its volumes from the cluster's bucket and no store: its
        # provider takes the volumes, secrets and spec themselves (SandboxRequest), not binds and files.
        storage_env, binds = ({}, []) if backend.remote else storage_access(dict(volumes), provider.name)
        host_env = {**(image.env_vars() if provider.name == "embedded" else {}), **storage_env}
        ctl.mkdir(mode=0o700)
        run.mkdir()
        os.chmod(run, 0o777)  # the image's user (maybe not root) writes here; the 0700 directory above guards it
        now = time.time()
        meta = {"id": sid, "provider": provider.name, "run": str(run), "app_id": app_id, "app_name": app_name,
                "name": name, "created": now, "deadline": now + timeout, "timeout": timeout}
        session = app._session if app is not None else None
        spec = {"cmd": cmd, "timeout": timeout, "idle_timeout": idle_timeout, "workdir": workdir}
        try:
            agent.write_json(str(ctl / "meta.json"), meta)
            agent.write_json(str(ctl / "tags.json"), tags)
            agent.write_json(str(run / agent.SPEC), spec)
            if not backend.remote:  # secrets too: never in the container's config (a pod reads Secrets by reference)
                agent.write_json(str(run / agent.ENV), env)
            req = SandboxRequest(sid, app_id or app_name or "", str(run), host_env, workdir, cpu, memory, gpu,
                                 block_network, ports, binds, meta["deadline"], spec=spec, user_env=user_env,
                                 secrets=tuple(secrets or ()), volumes=volumes, app_name=app_name, session=session)
            meta.update(provider.sandbox_start(req, prepared))
            agent.write_json(str(ctl / "meta.json"), meta)
            sb = Sandbox(sid, meta)
            sb._channel()
            if sb._result is not None and sb._result["reason"] == "error":
                raise ExecutionError(f"sandbox {sid} could not start: {sb._result.get('message')}")
            if session is not None:
                session.on_close(sb._end_with_app)  # ends with the run, as on Modal
        except BaseException:
            if "pid" in meta or "container" in meta or "pod" in meta:
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
        meta = read_json(root / sandbox_id / "meta.json")
        if meta is None:
            raise NotFoundError(f"no sandbox {sandbox_id} on this host (under {root}): it was terminated, ended "
                                f"more than {GRACE / 60:g} minutes ago, or was created with another RUNNER_HOME")
        get_backend(meta["provider"]).sweep(root)
        sb = Sandbox(sandbox_id, meta)
        sb._load_exit()
        return sb

    @blocking
    @staticmethod
    def from_name(app_name: str, name: str) -> Sandbox:
        """The running sandbox created with `name=` in the app named `app_name`."""
        for sid, meta in live_sandboxes(subdir("sb")).items():
            if meta.get("app_name") == app_name and meta.get("name") == name:
                return Sandbox(sid, meta)
        raise NotFoundError(f"no running sandbox named {name!r} in app {app_name!r}")

    @staticmethod
    def _list(*, app_id: str | None = None, tags: dict[str, str] | None = None) -> Iterator[Sandbox]:
        tags = check_tags(tags, "Sandbox.list(tags=...)")
        root = subdir("sb")
        found = []
        for sid, meta in sorted(live_sandboxes(root).items(), key=lambda item: -item[1]["created"]):
            if app_id is not None and meta.get("app_id") != app_id:
                continue
            have = read_json(root / sid / "tags.json") or {}
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
        tags = check_tags(tags, "set_tags")
        if not self._ctl.is_dir():
            raise self._finished("set tags on")
        agent.write_json(str(self._ctl / "tags.json"), tags)

    @blocking
    def get_tags(self) -> dict[str, str]:
        self._check_attached()
        return read_json(self._ctl / "tags.json") or {}

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
        cmd = check_cmd(args, "exec")
        if not cmd:
            raise InvalidError("exec needs a command, e.g. sb.exec('ls', '-l')")
        workdir = check_workdir(workdir, "exec")
        env = {**secret_env(secrets, "exec"), **check_env(env, "exec(env=...)")}
        timeout = None if timeout is None else check_seconds("exec(timeout=...)", timeout)
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

    # ---- stdin, and the error for what is asked after the end -----------------------------
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
