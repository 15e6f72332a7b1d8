"""The redis-server runner manages for the store when none is configured and one is installed.

It is started by the first client that needs it and then left running, so named objects outlive a
run (it writes an append-only file, so they outlive the server too). It listens only on a unix
socket in a directory of its own: containers get that directory bind-mounted and reach nothing
else of the host. Two clients starting (or stopping) it at once serialize on a lock file; a socket
or pidfile left by a crashed server is cleaned up by the next start. It speaks to the server with
bare RESP over the socket, so starting, stopping and probing need no redis package.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import time
from typing import Any

from .._home import subdir
from ..exception import ExecutionError, InvalidError, NotFoundError
from ._backend import URL_ENV

START_TIMEOUT = 15.0


def socket_path() -> str:
    subdir("store")  # first, so it is made owner-only too (parents made on the way are not)
    return str(subdir("store", "sock") / "redis.sock")


def managed_url() -> str:
    return f"unix://{socket_path()}?db=0"


@contextlib.contextmanager
def _server_lock():
    """Held while the managed server is started or stopped, by any process of this RUNNER_HOME."""
    with open(subdir("store") / "server.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def ping(sock: str) -> str:
    """'up', 'loading' (answering, still reading its data) or 'down'."""
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(2)
            s.connect(sock)
            s.sendall(b"PING\r\n")
            reply = s.recv(64)
    except OSError:
        return "down"
    return "up" if reply.startswith(b"+PONG") else "loading" if reply.startswith(b"-LOADING") else "down"


def _paths() -> dict[str, str]:
    data = subdir("store")
    return {"dir": str(data), "sock": socket_path(), "pid": str(data / "redis.pid"), "log": str(data / "redis.log")}


def _server_pid() -> int | None:
    """The pid in the pidfile, if that process is alive and is a redis-server."""
    try:
        with open(_paths()["pid"]) as f:
            pid = int(f.read().strip())
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return pid if b"redis-server" in f.read() else None
    except (OSError, ValueError):
        return None


def ensure_server() -> str:
    """Start the managed redis-server unless it answers; return its URL."""
    paths = _paths()
    if ping(paths["sock"]) == "up":
        return managed_url()
    if len(paths["sock"].encode()) > 100:
        raise InvalidError(f"the store's socket path {paths['sock']} is too long for a unix socket; "
                           "set RUNNER_HOME to a shorter directory")
    exe = shutil.which("redis-server")
    if not exe:
        raise NotFoundError(f"redis-server is not on PATH; install it, or set {URL_ENV}")
    with _server_lock():  # one starter at a time; the others find it up
        if _server_pid() is None and ping(paths["sock"]) == "down":
            for stale in (paths["sock"], paths["pid"]):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(stale)
            proc = subprocess.run(
                [exe, "--port", "0", "--unixsocket", paths["sock"], "--unixsocketperm", "770", "--daemonize", "yes",
                 "--pidfile", paths["pid"], "--dir", paths["dir"], "--logfile", paths["log"], "--appendonly", "yes",
                 "--save", ""],
                stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=START_TIMEOUT)
            if proc.returncode != 0:
                raise ExecutionError(f"redis-server did not start: {(proc.stderr or proc.stdout).strip()[-500:]}")
        deadline = time.monotonic() + START_TIMEOUT
        while ping(paths["sock"]) != "up":
            if time.monotonic() > deadline:
                raise ExecutionError(f"the store's redis-server did not answer within {START_TIMEOUT:g}s; "
                                     f"its log {paths['log']} ends:\n{_tail(paths['log'])}")
            time.sleep(0.02)
    return managed_url()


def stop_managed_server() -> int | None:
    """Stop the managed server (its data stays on disk); the pid it had, or None if none ran."""
    paths = _paths()
    with _server_lock():
        pid = _server_pid()
        if pid is None and ping(paths["sock"]) == "down":
            return None
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as s:
            s.settimeout(10)
            s.connect(paths["sock"])
            s.sendall(b"SHUTDOWN\r\n")  # writes the append-only file out, then exits
            s.recv(64)
        deadline = time.monotonic() + 10
        while pid is not None and _server_pid() == pid:
            if time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                deadline = float("inf")
            time.sleep(0.02)
        for leftover in (paths["sock"], paths["pid"]):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(leftover)
        return pid


def managed_state() -> dict[str, Any]:
    """What `runner store status` shows of the managed server; looks only, never starts it."""
    paths = _paths()
    return {"running": ping(paths["sock"]) == "up", "pid": _server_pid(), "data": paths["dir"], "log": paths["log"]}


def _tail(path: str, lines: int = 20) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return "(no log)"
