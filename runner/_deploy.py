"""Deployed apps on this host: `runner deploy`, `runner app list|stop|logs`, and the daemon that
keeps a deployed app running after the client that deployed it exits.

A deployed app is one daemon process (`python -m runner._deploy`) that imports the app's file and
runs it the way `runner run` does, without calling an entrypoint, until it is stopped or replaced.
It serves the app's web functions behind its front door, calls from other processes on a control
socket (`Function.from_name`, `Cls.from_name`, see `runner._deployed`), and the app's schedules.

Everything about a deployed app lives in `$RUNNER_HOME/apps/<name>/`:

    state.json     what the running version is (pid, control socket, URLs, functions); written
                   atomically by the daemon once it serves, so a reader sees a whole version or none
    ctl-<pid>.sock that daemon's control socket
    app.log        the daemon's output and its containers', appended across versions
    calls/         results of spawned calls, so `FunctionCall.from_id` works from any process
    deploy.lock    held (flock) by `runner deploy` while it deploys: a second deploy of the same
                   name waits for the first to finish, then replaces it

Redeploying replaces the running version without dropping what it accepted:

1. the new daemon loads the app and builds its images while the old one keeps serving;
2. it asks the old one for its front door's listening socket (passed with SCM_RIGHTS), so both
   serve the same port and accept queue: no connection is refused in between;
3. once its containers can start, it writes state.json (new callers now reach it) and tells the
   old one to retire;
4. the old one stops accepting, tells its control clients to send new work elsewhere, finishes the
   requests and calls it accepted, and exits.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from typing import Any, Iterator

from ._context import pid_alive
from ._home import check_name, subdir
from .exception import ExecutionError, InvalidError, NotFoundError

LOCK_TIMEOUT = 300.0  # how long a deploy waits for another deploy of the same name
READY_TIMEOUT = float(os.environ.get("RUNNER_DEPLOY_TIMEOUT", "600"))  # loading and image builds included
HANDOVER_TIMEOUT = 10.0
SNAPSHOT_LIMIT = 5000  # Python files copied at most
_SKIP_DIRS = {"__pycache__", "node_modules", "site-packages"}
DRAIN_GRACE = 30.0  # beyond the longest function timeout, how long a retiring version may take
STOP_TIMEOUT = 60.0
LOG_LIMIT = 16 * 1024 * 1024  # app.log is rotated at a deploy once it is larger


# ---- state on disk ----------------------------------------------------------------------------
def app_dir(name: str, create: bool = True) -> pathlib.Path:
    check_name(name, "app")
    if create:
        return subdir("apps", name)
    return subdir("apps") / name


def read_state(name: str) -> dict | None:
    """The state of the app's running version, or None (never deployed, stopped, or its daemon died)."""
    try:
        state = json.loads((app_dir(name, create=False) / "state.json").read_text())
    except (OSError, ValueError):
        return None
    if state.get("pid") and not pid_alive(int(state["pid"])):
        return None
    return state


def write_state(name: str, state: dict) -> None:
    path = app_dir(name) / "state.json"
    tmp = path.with_name(f".state.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(state, indent=1))
    os.replace(tmp, path)


def remove_state(name: str, pid: int | None) -> None:
    """Remove state.json if it still names `pid` (None: whatever it names)."""
    path = app_dir(name, create=False) / "state.json"
    try:
        current = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    if pid is None or current.get("pid") == pid:
        with contextlib.suppress(OSError):
            path.unlink()


def deployed_apps() -> dict[str, dict]:
    """Every app with a state record: name -> state, with "alive" set."""
    out = {}
    for d in sorted(subdir("apps").iterdir()):
        try:
            state = json.loads((d / "state.json").read_text())
        except (OSError, ValueError):
            continue
        pid = state.get("pid")
        state["alive"] = bool(pid) and pid_alive(int(pid))
        out[d.name] = state
    return out


def unknown_app(name: str) -> NotFoundError:
    names = [n for n, s in deployed_apps().items() if s["alive"] or not s.get("pid")]
    return NotFoundError(f"no deployed app named {name!r}; deploy it with `runner deploy FILE` "
                         f"(deployed apps: {', '.join(names) or 'none'})")


def create_empty(name: str) -> dict:
    """`App.lookup(name, create_if_missing=True)` for an app never deployed: a record with no daemon."""
    import secrets

    with _deploy_lock(name):
        state = read_state(name)
        if state is None:
            state = {"name": name, "id": f"ap-{secrets.token_hex(6)}", "pid": None, "version": 0,
                     "deployed_at": _now(), "functions": {}, "classes": {}, "web": {}, "url": None}
            write_state(name, state)
        return state


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@contextlib.contextmanager
def _deploy_lock(name: str, wait_note: str | None = None) -> Iterator[None]:
    fd = os.open(app_dir(name) / "deploy.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if wait_note:
                print(wait_note, file=sys.stderr, flush=True)
            deadline = time.monotonic() + LOCK_TIMEOUT
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise ExecutionError(f"another deploy of {name!r} has held its lock for {LOCK_TIMEOUT:g} s; "
                                             "try again when it finishes") from None
                    time.sleep(0.1)
        yield
    finally:
        os.close(fd)


# ---- runner deploy (the client side) ------------------------------------------------------------
def deploy(target: str, as_module: bool, name: str | None, port: int | None) -> dict:
    """Start the app's new version as a daemon, replacing the running one; return its state."""
    from ._serve import load_app

    if port is not None and not 0 <= port <= 65535:
        raise InvalidError(f"--port must be 0 (any free port) to 65535, not {port}")
    app, _ = load_app(target, as_module)  # a broken file fails here, with its own error
    name = name or app.name
    if not name:
        raise InvalidError(f"{target}: the App has no name; give it one (modal.App('name')) or pass --name")
    check_name(name, "app")
    directory = app_dir(name)
    with _deploy_lock(name, wait_note=f"waiting for another deploy of {name!r} to finish"):
        source = snapshot_source(target, as_module, directory)
        log_path = directory / "app.log"
        with contextlib.suppress(OSError):
            if log_path.stat().st_size > LOG_LIMIT:  # one older log is kept, as app.log.1
                os.replace(log_path, directory / "app.log.1")
        log = open(log_path, "ab")
        start = log.tell()
        read_fd, write_fd = os.pipe()
        spec = {"target": target, "module": as_module, "name": name, "port": port, "cwd": os.getcwd(),
                "ready_fd": write_fd, "source": str(source)}
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        try:
            proc = subprocess.Popen([sys.executable, "-m", "runner._deploy", json.dumps(spec)], env=env,
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=log, pass_fds=(write_fd,),
                                    start_new_session=True)
        finally:
            os.close(write_fd)
            log.close()
        reply = _await_ready(proc, read_fd, log_path, start)
        if not reply.get("ok"):
            proc.wait(30)
            shutil.rmtree(source, ignore_errors=True)
    if not reply.get("ok"):
        raise ExecutionError(f"deploying {name!r} failed: {reply.get('error') or 'see the log above'}")
    return reply["state"]


def snapshot_source(target: str, as_module: bool, directory: pathlib.Path) -> pathlib.Path:
    """A copy of the app's Python files, which this version runs from: editing the files after a
    deploy changes nothing until the next deploy, as on Modal. Returns the copy's root."""
    ref = target.partition("::")[0]
    root = pathlib.Path(os.getcwd() if as_module else ref).resolve()
    root = root if as_module else root.parent
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and d not in _SKIP_DIRS
                       and not os.path.exists(os.path.join(dirpath, d, "pyvenv.cfg"))]
        files += [os.path.join(dirpath, f) for f in filenames if f.endswith(".py")]
        if len(files) > SNAPSHOT_LIMIT:
            raise InvalidError(f"{root} holds over {SNAPSHOT_LIMIT} Python files to deploy; deploy from the "
                               "app's own directory (or a smaller package)")
    import secrets

    _sweep_sources(directory / "src")
    dest = directory / "src" / secrets.token_hex(4)
    for file in files:
        rel = os.path.relpath(file, root)
        os.makedirs(dest / os.path.dirname(rel), exist_ok=True)
        shutil.copy2(file, dest / rel)
    dest.mkdir(parents=True, exist_ok=True)
    return dest


def _sweep_sources(src: pathlib.Path) -> None:
    """Remove source copies whose daemon is gone (it was killed before it could remove its own)."""
    if not src.is_dir():
        return
    for copy in src.iterdir():
        try:
            pid = int((copy / ".owner").read_text())
            gone = not pid_alive(pid)
        except (OSError, ValueError):
            gone = time.time() - copy.stat().st_mtime > 3600
        if gone:
            shutil.rmtree(copy, ignore_errors=True)


def _await_ready(proc: subprocess.Popen, read_fd: int, log_path: pathlib.Path, offset: int) -> dict:
    """Show the daemon's log as it loads and builds; return its ready message."""
    chunks: list[bytes] = []
    deadline = time.monotonic() + READY_TIMEOUT
    with open(log_path, "rb") as log:
        log.seek(offset)
        os.set_blocking(read_fd, False)
        try:
            while True:
                _copy_new(log)
                try:
                    data = os.read(read_fd, 65536)
                except BlockingIOError:
                    data = None
                if data == b"":  # the daemon closed its end: ready, failed, or dead
                    break
                if data:
                    chunks.append(data)
                    continue
                if time.monotonic() > deadline:
                    os.killpg(proc.pid, signal.SIGTERM)
                    return {"ok": False, "error": f"it was not ready within {READY_TIMEOUT:g} s"}
                time.sleep(0.05)
        finally:
            os.close(read_fd)
        _copy_new(log)
    try:
        return json.loads(b"".join(chunks).decode())
    except ValueError:
        proc.wait(10)
        return {"ok": False, "error": f"its daemon exited with code {proc.returncode} before it was ready"}


def _copy_new(log) -> None:
    data = log.read()
    if data:
        sys.stderr.write(data.decode(errors="replace"))
        sys.stderr.flush()


def stop(name: str) -> None:
    """Stop the running version (after any deploy of the name under way, so none outlives the stop)."""
    if not (app_dir(name, create=False)).is_dir():
        raise unknown_app(name)
    with _deploy_lock(name, wait_note=f"waiting for a deploy of {name!r} to finish before stopping it"):
        _stop(name)


def _stop(name: str) -> None:
    state = read_state(name)
    if state is None:
        if (app_dir(name, create=False) / "state.json").exists():
            remove_state(name, None)  # a dead daemon's, or an empty app's record
            return
        raise unknown_app(name)
    pid = state.get("pid")
    if pid:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
    remove_state(name, pid)


def follow_logs(name: str, follow: bool, out=None) -> None:
    out = out or sys.stdout
    path = app_dir(name, create=False) / "app.log"
    if not path.exists():
        raise unknown_app(name)
    with open(path, "rb") as log:
        while True:
            data = log.read()
            if data:
                out.write(data.decode(errors="replace"))
                out.flush()
            if not follow:
                return
            if read_state(name) is None and not data:
                return  # stopped, and nothing more will be written
            time.sleep(0.2)


# ---- the daemon ---------------------------------------------------------------------------------
def log(message: str) -> None:
    print(f"[{_now()}] {message}", flush=True)


class _Daemon:
    def __init__(self, spec: dict):
        self.spec = spec
        self.name = spec["name"]
        self.dir = app_dir(self.name)
        self.retire = threading.Event()  # a newer version took over, or SIGTERM: stop
        self.replaced = False

    def run(self) -> int:
        from ._output import enable_output
        from ._serve import load_app

        ready = os.fdopen(self.spec["ready_fd"], "w")
        source = self.spec["source"]
        try:
            ref, sep, which = self.spec["target"].partition("::")
            pathlib.Path(source, ".owner").write_text(str(os.getpid()))
            if self.spec["module"]:
                app, _ = load_app(self.spec["target"], True, path_root=source)
            else:
                app, _ = load_app(os.path.join(source, os.path.basename(ref)) + sep + which, False)
            old = read_state(self.name)
            if old is not None and old.get("pid") == os.getpid():
                old = None
            sock = _request_socket(old) if old and old.get("url") else None
            app._door_socket = sock
            app._door_port = self.spec.get("port") or 0
            app._hold_door = True
            with enable_output(show_progress=False), app.run():
                signal.signal(signal.SIGTERM, lambda *_: self.retire.set())  # `runner app stop`: a clean stop
                session = app._session
                for image in {id(o.image): o.image for o in _options(app) if o.image is not None}.values():
                    session.prepare(image)  # images are built now: a broken one fails the deploy
                session.warm_up([f._target() for f in app._functions.values() if f._web_label() is None])
                if session.front_door is not None:
                    session.front_door.open()  # both versions accept from here until the old one retires
                from ._deployed import ControlServer

                control = ControlServer(self, app, str(self.dir / f"ctl-{os.getpid()}.sock"))
                state = self._state(app, old, control.path)
                write_state(self.name, state)
                if old and old.get("pid"):
                    _tell_retire(old)
                ready.write(json.dumps({"ok": True, "state": state}))
                ready.close()
                ready = None
                log(f"version {state['version']} of {self.name} is serving ({state['id']})")
                from ._scheduler import Scheduler

                scheduler = Scheduler(app, log)
                scheduler.start()
                self.retire.wait()
                scheduler.stop()
                if self.replaced:
                    self._drain(app, control)
                control.close()
                log(f"version {state['version']} of {self.name} stopped" + (" (replaced)" if self.replaced else ""))
            return 0
        except BaseException as exc:  # noqa: BLE001 - reported to the deploying client, then exit
            from ._entrypoint import UserCodeError

            cause = exc.__cause__ if isinstance(exc, UserCodeError) and exc.__cause__ else exc
            if ready is not None:
                if not _is_runner_error(cause) or os.environ.get("RUNNER_VERBOSE"):
                    traceback.print_exception(type(cause), cause, cause.__traceback__)
                text = f"{type(cause).__name__}: {cause}" if not _is_runner_error(cause) else str(cause)
                ready.write(json.dumps({"ok": False, "error": text.splitlines()[0] if text else repr(cause)}))
                ready.close()
                return 1
            log(f"{self.name} stopped on an error: {type(exc).__name__}: {exc}")
            return 1
        finally:
            if not self.replaced:
                remove_state(self.name, os.getpid())
            if ready is None:  # it served: its source copy goes with it (a failed start's, with the deploy)
                shutil.rmtree(source, ignore_errors=True)
            with contextlib.suppress(OSError):
                (self.dir / f"ctl-{os.getpid()}.sock").unlink()

    def _state(self, app: Any, old: dict | None, control_path: str) -> dict:
        import secrets

        from ._function import is_generator

        session = app._session
        door = session.front_door
        functions, classes = {}, {}
        for fname, f in app._functions.items():
            schedule = getattr(f, "_schedule", None)
            functions[fname] = {"gen": f._is_gen(), "web": f._web_label() is not None,
                                "schedule": schedule.describe() if schedule is not None else None}
        for cname, c in app._classes.items():
            classes[cname] = {"methods": {m: {"gen": is_generator(raw)} for m, raw in c._methods.items()},
                              "params": list(c._params)}
        return {
            "name": self.name, "id": (old or {}).get("id") or f"ap-{secrets.token_hex(6)}",
            "version": int((old or {}).get("version") or 0) + 1, "pid": os.getpid(), "control": control_path,
            "target": self.spec["target"], "cwd": self.spec["cwd"], "provider": session.provider.name,
            "deployed_at": _now(), "url": door.url if door is not None else None,
            "web": app._web_urls(),
            "functions": functions, "classes": classes,
        }

    def _drain(self, app: Any, control: Any) -> None:
        """Finish what this version accepted: open HTTP connections and calls in flight."""
        timeouts = [o.timeout or 0 for o in _options(app)]
        deadline = time.monotonic() + max(timeouts or [0]) + DRAIN_GRACE
        door = app._session.front_door
        control.retire()  # clients send new work to the new version from now on
        if door is not None:
            door.drain(max(0.0, deadline - time.monotonic()))
        control.wait_idle(deadline)

    def handover(self, app: Any) -> socket.socket | None:
        """The front door's listening socket, for the version taking over."""
        session = app._session
        door = session.front_door if session is not None else None
        return door.listening_socket() if door is not None else None

    def on_retire(self) -> None:
        self.replaced = True
        self.retire.set()


def _is_runner_error(exc: BaseException) -> bool:
    from .exception import Error

    return isinstance(exc, Error)


def _options(app: Any) -> list[Any]:
    """The options of every function and class of the app."""
    return [f._options for f in app._functions.values()] + [c._options for c in app._classes.values()]


def _control(old: dict, op: str) -> Any:
    """A connection to the running version's control socket, with `op` sent on it."""
    from . import _protocol as P

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(HANDOVER_TIMEOUT)
    try:
        sock.connect(old["control"])
        conn = P.Connection(sock)
        conn.send({"op": op})
    except BaseException:
        sock.close()
        raise
    return conn


def _request_socket(old: dict) -> socket.socket | None:
    """Ask the running version for its front door's listening socket."""
    from . import _protocol as P

    try:
        conn = _control(old, "handover")
        _, fds, _, _ = socket.recv_fds(conn.sock, 16, 1)
        conn.close()
    except (OSError, P.ConnectionClosed) as exc:
        raise ExecutionError(f"the running version of {old['name']!r} (pid {old.get('pid')}) does not hand over its "
                             f"port ({exc}); stop it with `runner app stop {old['name']}`, then deploy again") from None
    if not fds:
        return None
    return socket.socket(fileno=fds[0])


def _tell_retire(old: dict) -> None:
    from . import _protocol as P

    with contextlib.suppress(OSError, P.ConnectionClosed):
        conn = _control(old, "retire")
        conn.recv()
        conn.close()


def main() -> None:
    spec = json.loads(sys.argv[1])
    os.chdir(spec["cwd"])
    sys.exit(_Daemon(spec).run())


if __name__ == "__main__":
    main()
