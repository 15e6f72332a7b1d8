"""The embedded provider: containers are worker subprocesses of this same interpreter.

Nothing to install and nothing to start, so it is the default on a fresh machine and the fast
test double. Environment, secrets, timeouts, retries and concurrency behave as in containers.
Image build steps are not applied (a notice says so). Resources are enforced as far as a plain
process allows: a `cpu` limit pins the worker to that many cores, a `memory` limit caps its address space
(Modal's semantics: `cpu=2` / `memory=512` are requests, `(request, limit)` pairs add the limit).
Workers die with the client (PR_SET_PDEATHSIG) and exit on their own when the client's socket
closes, so nothing outlives a client, however it ends.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import json
import math
import os
import queue
import resource
import signal
import socket
import subprocess
import sys
import threading

from .._agent import ADDR_ENV, TOKEN_ENV
from .._context import pid_alive
from .._home import subdir
from .._mounts import bind_in_namespace, prepare_mount_points, remove_mount_points
from .._output import output
from ..exception import ProviderError
from . import ContainerRequest, Provider, wait_interactive

_PR_SET_PDEATHSIG = 1


def _package_root() -> str:
    import runner

    return os.path.dirname(os.path.dirname(os.path.abspath(runner.__file__)))


class EmbeddedProvider(Provider):
    name = "embedded"
    default_max_containers = max(4, 2 * (os.cpu_count() or 1))

    def __init__(self):
        self._procs: set[subprocess.Popen] = set()
        self._lock = threading.Lock()
        self._created: list[str] = []  # mount points this provider made on the host
        self._record = subdir("embedded") / f"mount-points-{socket.gethostname()}-{os.getpid()}.json"
        _sweep_mount_points()
        # PR_SET_PDEATHSIG fires when the *thread* that forked the child ends, so every worker is
        # forked by this one long-lived thread rather than by the short-lived start threads.
        self._spawns: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=self._spawner, name="runner-embedded-spawner", daemon=True).start()

    def _spawner(self) -> None:
        while True:
            kwargs, done = self._spawns.get()
            try:
                done.set_result(subprocess.Popen(**kwargs))
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                done.set_exception(exc)

    def start(self, req: ContainerRequest, prepared) -> subprocess.Popen:
        env = dict(os.environ)
        env.update(req.env)
        env[ADDR_ENV] = "unix:" + os.path.join(req.socket_dir, req.socket_name)
        env[TOKEN_ENV] = req.token
        path = [_package_root()] + [p for p in sys.path if p]
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(path))
        cpus, memory = _host_limits(req)
        binds = req.binds
        self._mount_points(binds)

        def preexec():
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
            os.setpgrp()
            if binds:
                bind_in_namespace(binds)
            if cpus:
                os.sched_setaffinity(0, cpus)
            if memory is not None:
                resource.setrlimit(resource.RLIMIT_AS, (memory, memory))

        done: concurrent.futures.Future = concurrent.futures.Future()
        self._spawns.put((dict(
            args=[sys.executable, "-m", "runner._agent"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            preexec_fn=preexec,
        ), done))
        try:
            proc = done.result()
        except subprocess.SubprocessError as exc:  # the preexec step failed: the namespace or a bind
            raise ProviderError(f"the embedded provider could not mount volumes for {req.name}: {exc}") from None
        for src, dst in ((proc.stdout, "stdout"), (proc.stderr, "stderr")):
            threading.Thread(target=_forward, args=(src, dst), daemon=True).start()
        with self._lock:
            self._procs.add(proc)
        return proc

    def alive(self, handle: subprocess.Popen) -> bool:
        return handle.poll() is None

    def exit_info(self, handle: subprocess.Popen) -> str:
        try:
            code = handle.wait(timeout=2)
        except subprocess.TimeoutExpired:
            return "still running"
        if code < 0:
            return f"killed by signal {signal.Signals(-code).name}"
        return f"exit code {code}"

    def stop(self, handle: subprocess.Popen) -> None:
        if handle.poll() is None:
            try:
                os.killpg(handle.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        handle.wait()
        with self._lock:
            self._procs.discard(handle)

    def container_path(self, host_path: str) -> str:
        return host_path

    def shell(self, req: ContainerRequest, prepared, command: str | None) -> int:
        """The user's shell on this host, with the function's environment, in the app's directory, and
        its volumes bound in a private mount namespace."""
        shell = os.environ.get("SHELL") or "/bin/sh"
        binds = req.binds
        self._mount_points(binds)
        proc = subprocess.Popen([shell, "-c", command] if command else [shell], env={**os.environ, **req.env},
                                cwd=req.app_root or None, preexec_fn=(lambda: bind_in_namespace(binds)) if binds else None)
        return wait_interactive(proc)

    def _mount_points(self, binds: list) -> None:
        """Make the volumes' mount points before forking; note them (on disk too) to remove later."""
        if not binds:
            return
        with self._lock:
            created = prepare_mount_points(binds)
            if created:
                self._created.extend(created)
                self._record.write_text(json.dumps(self._created))

    def close(self) -> None:
        with self._lock:
            procs = list(self._procs)
        for proc in procs:
            self.stop(proc)
        if self._created:
            remove_mount_points(self._created)
            self._record.unlink(missing_ok=True)

    # ---- sandboxes -------------------------------------------------------------------------
    # A sandbox is runner's supervisor (runner._sandbox_agent) as a host process in a session of
    # its own and without PR_SET_PDEATHSIG: sandboxes outlive their creator, as on Modal, and end
    # at their timeout by themselves. A thread reaps it while this process lives. Volumes and
    # block_network (a private network namespace) are set up between fork and exec, which needs root.
    def sandbox_start(self, req, prepared) -> dict:
        from .. import _sandbox_agent

        if req.block_network and os.geteuid() != 0:
            raise ProviderError("block_network=True on the embedded provider needs root (a private network "
                                "namespace); run as root or use --provider docker")
        self._mount_points(req.binds)
        env = dict(os.environ)
        env.update(req.env)
        cpus, memory = _host_limits(req)
        host = {"cpus": sorted(cpus or ()), "memory": memory}
        binds, block = req.binds, req.block_network

        def preexec():
            if binds:
                bind_in_namespace(binds)
            if block and ctypes.CDLL(None, use_errno=True).unshare(0x40000000) != 0:  # CLONE_NEWNET
                raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET)")

        try:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-S", _sandbox_agent.__file__, req.run_dir, json.dumps(host)],
                env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True, preexec_fn=preexec if binds or block else None,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise ProviderError(f"the embedded provider could not start sandbox {req.id}: {exc}") from None
        threading.Thread(target=proc.wait, daemon=True).start()
        return {"pid": proc.pid, "ports": {str(port): port for port in req.ports}}

    @staticmethod
    def _sandbox_pid(handle: dict) -> int | None:
        """The supervisor's pid while it runs. A pid alone may have been reused, so its command line
        must name the sandbox's run directory; a zombie has ended."""
        pid = handle.get("pid")
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rpartition(")")[2].split()[0]
        except (OSError, IndexError):
            return None
        return pid if handle["run"].encode() in cmdline and state != "Z" else None

    def sandbox_alive(self, handle: dict) -> bool:
        return self._sandbox_pid(handle) is not None

    def sandbox_running(self, metas: dict) -> dict:
        return {sid: meta for sid, meta in metas.items() if self._sandbox_pid(meta)}

    def sandbox_remove(self, handle: dict) -> None:
        """SIGTERM: the supervisor kills what runs in the sandbox, notes the end and exits; SIGKILL after 5 s."""
        import time

        pid = self._sandbox_pid(handle)
        for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            if pid is None:
                return
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                return
            deadline = time.monotonic() + wait
            while self._sandbox_pid(handle) and time.monotonic() < deadline:
                time.sleep(0.005)
            pid = self._sandbox_pid(handle)


def _sweep_mount_points() -> None:
    """Remove the (empty) mount points that embedded clients on this host made and left when they died."""
    host = socket.gethostname()
    for record in subdir("embedded").glob(f"mount-points-{host}-*.json"):
        pid = record.stem.rpartition("-")[2]
        if pid.isdigit() and not pid_alive(int(pid)):
            remove_mount_points(json.loads(record.read_text() or "[]"))
            record.unlink(missing_ok=True)


def _host_limits(req) -> tuple[set[int] | None, int | None]:
    """The cores to pin a process to and the bytes of address space to allow it (for a function
    container and a sandbox's processes alike), or None for no such limit."""
    memory = req.memory[1] if req.memory else None
    return _cpu_set(req.cpu), int(memory * 1024 * 1024) if memory else None


def _cpu_set(cpu) -> set[int] | None:
    if not cpu or cpu[1] is None:
        return None  # a request alone is a scheduling hint, as on Modal; the limit is what binds
    want = math.ceil(cpu[1])
    have = sorted(os.sched_getaffinity(0))
    return set(have[:want]) if want < len(have) else None


def _forward(src, name: str) -> None:
    """Copy a worker's output to ours, line by line, as it comes."""
    for raw in iter(src.readline, b""):
        output().log_line(getattr(sys, name), raw.decode(errors="replace"))
    src.close()
