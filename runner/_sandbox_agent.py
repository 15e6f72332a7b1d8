"""The sandbox supervisor: the one process that owns a sandbox from the inside.

It is PID 1 of a sandbox's container (docker), or a detached host process (embedded), and it:

* runs the sandbox's main command, and every command `Sandbox.exec` asks for, each in a session
  of its own so a timeout can kill all it started;
* reaps every child in one reaper thread (as PID 1 it inherits orphans too, and on the host it
  asks to be their subreaper). Nothing else ever waits for a pid, so no `Popen.wait` races the
  reaper for an exit status; a child that exits before its spawner has registered it is held
  until it is claimed;
* ends the sandbox when its main command exits, at its `timeout`, after `idle_timeout` with no
  exec running and no client request, or on SIGTERM: it kills what runs, writes why and the exit
  code to `exit`, tells every client, and exits (a container then removes itself);
* serves clients on a unix socket in its run directory. One connection per Sandbox object carries
  everything, multiplexed: exec, stdin, output streamed back as it is produced, file operations.

It runs under the image's own python3, started by path (`python3 -I -S .../_sandbox_agent.py
RUN_DIR`), so it needs nothing but the standard library (Python 3.8 and later) and nothing of
runner, site-packages or the image's PYTHON* variables is loaded on the way up.

The run directory (bind-mounted at /run/runner-sb in a container) holds `spec.json` (what to
run, written by the client), `env.json` (the sandbox's env and secret values, kept out of the
container's config where `docker inspect` would show them; deleted once read), the socket `s`, the main command's `stdout` and `stderr` (appended as
they come, so they stay readable after the end), `exit` and `supervisor.log` (this process's own
stderr). File operations refuse paths inside the sandbox's private control directory.

Frames, both ways: struct "!II" (header length, body length), a JSON header, then the body bytes.
JSON and never pickle: the client reads what a sandbox sends without having to trust it.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import struct
import sys
import threading
import time

PREFIX = struct.Struct("!II")
MAX_HEADER = 1 << 24
SOCKET, SPEC, ENV, EXIT, LOG = "s", "spec.json", "env.json", "exit", "supervisor.log"
STREAMS = ("stdout", "stderr")
CODES = {"timeout": 124, "idle": 137, "terminated": 137}  # Modal's return codes for a sandbox it ended
DRAIN_GRACE = 2.0  # seconds a finished process's pipes may stay open (held by a grandchild) before its exit is told
_PR_SET_CHILD_SUBREAPER = 36


def write_json(path: str, obj) -> None:
    """Write a whole file at once: a reader never sees half of it, and a symlink planted at `path`
    is replaced, never followed."""
    tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f)
    os.chmod(tmp, 0o644)  # whatever the umask: a non-root image user reads it; the host directory above is 0700
    os.replace(tmp, path)


def pack(header: dict, body: bytes = b"") -> bytes:
    head = json.dumps(header).encode()
    return b"".join((PREFIX.pack(len(head), len(body)), head, body))


def read_frame(rfile) -> tuple:
    """One frame from a buffered binary file; EOFError when the peer is gone or speaks nonsense."""
    prefix = rfile.read(PREFIX.size)
    if len(prefix) < PREFIX.size:
        raise EOFError("connection closed")
    head_len, body_len = PREFIX.unpack(prefix)
    if head_len > MAX_HEADER:
        raise EOFError("corrupt frame")
    head = rfile.read(head_len)
    body = rfile.read(body_len) if body_len else b""
    if len(head) < head_len or len(body) < body_len:
        raise EOFError("connection closed")
    return json.loads(head), body


def exit_code(status: int) -> int:
    """A wait status as a shell reports it: the exit code, or 128 + the signal that killed it."""
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


class BadPath(Exception):
    """A file operation aimed at the supervisor's private directory."""


class Proc:
    """One running command: the main one (conn is None) or an exec of one client connection."""

    def __init__(self, sup: Supervisor, popen, conn, eid, timeout):
        self.sup, self.popen, self.conn, self.eid = sup, popen, conn, eid
        self.deadline = time.monotonic() + timeout if timeout else None
        self.open_pipes = 2
        self.status = None  # the raw wait status, once reaped
        self.timed_out = False
        self.told = False
        self.stdin: queue.SimpleQueue | None = None
        self.lock = threading.Lock()

    def start_pumps(self) -> None:
        for fd, pipe in zip(STREAMS, (self.popen.stdout, self.popen.stderr)):
            threading.Thread(target=self._pump, args=(fd, pipe), daemon=True).start()

    def _pump(self, fd: str, pipe) -> None:
        try:
            while True:
                data = os.read(pipe.fileno(), 65536)
                if not data:
                    break
                if self.conn is None:
                    self.sup.main_output(fd, data)
                else:
                    self.conn.send({"op": "out", "eid": self.eid, "fd": fd}, data)
        except OSError:
            pass
        pipe.close()
        if self.conn is None:
            self.sup.main_output(fd, None)
        else:
            self.conn.send({"op": "eof", "eid": self.eid, "fd": fd})
        with self.lock:
            self.open_pipes -= 1
            done = self.open_pipes == 0 and self.status is not None
        if done:
            self._tell()

    def reaped(self, status: int) -> None:
        with self.lock:
            self.status = status
            done = self.open_pipes == 0
        if done:
            self._tell()
        else:
            timer = threading.Timer(DRAIN_GRACE, self._tell)
            timer.daemon = True
            timer.start()

    def _tell(self) -> None:
        """Report the exit once, after its output (or after DRAIN_GRACE, if a grandchild holds the pipes)."""
        with self.lock:
            if self.told:
                return
            self.told = True
        code = -1 if self.timed_out else exit_code(self.status)  # Modal reports an exec timeout as -1
        if self.conn is None:
            self.sup.finish("exit", code)
        else:
            self.conn.execs.pop(self.eid, None)
            self.conn.send({"op": "exit", "eid": self.eid, "code": code})
            self.sup.exec_done()

    def feed(self, data: bytes, eof: bool) -> None:
        """Queue stdin for a writer thread of its own, so a process that does not read never blocks the connection."""
        with self.lock:
            if self.stdin is None:
                self.stdin = queue.SimpleQueue()
                threading.Thread(target=self._write_stdin, daemon=True).start()
        if data:
            self.stdin.put(data)
        if eof:
            self.stdin.put(None)

    def _write_stdin(self) -> None:
        pipe = self.popen.stdin
        while True:
            data = self.stdin.get()
            if data is None:
                break
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(pipe.fileno(), view):]
            except OSError:  # it exited or closed its stdin: what is left goes nowhere, as with a pipe
                break
        try:
            pipe.close()
        except OSError:
            pass

    def kill(self) -> None:
        with self.lock:
            if self.status is not None:
                return
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except OSError:
            pass


class Conn:
    """One client connection: its execs, its open files, and its requests, answered in order."""

    def __init__(self, sup: Supervisor, sock: socket.socket):
        self.sup, self.sock = sup, sock
        self.lock = threading.Lock()
        self.execs: dict = {}
        self.files: dict = {}
        self.fids = 0

    def send(self, header: dict, body: bytes = b"") -> None:
        data = pack(header, body)
        try:
            with self.lock:
                self.sock.sendall(data)
        except OSError:
            pass  # the client went away; what it ran keeps running until done or the sandbox ends

    def serve(self) -> None:
        self.send({"op": "hello", "workdir": os.getcwd(), "private": self.sup.private, "pid": os.getpid()})
        rfile = self.sock.makefile("rb")
        try:
            while True:
                header, body = read_frame(rfile)
                self.sup.touch()
                self.handle(header, body)
        except (EOFError, OSError, ValueError):
            pass
        finally:
            for f in self.files.values():
                try:
                    f.close()
                except OSError:
                    pass
            self.sup.forget(self)
            self.sock.close()

    def handle(self, h: dict, body: bytes) -> None:
        op = h.get("op")
        if op == "exec":
            self.sup.exec(self, h)
        elif op == "stdin":
            proc = self.sup.main if h.get("eid") == "main" else self.execs.get(h.get("eid"))
            if proc is not None:
                proc.feed(body, bool(h.get("eof")))
        elif op == "subscribe":
            self.sup.subscribe(self, h.get("fd"), int(h.get("offset") or 0))
        elif op == "fs":
            self.fs(h, body)

    def reply(self, rid, ok: bool, body: bytes = b"", **fields) -> None:
        self.send({"op": "reply", "rid": rid, "ok": ok, **fields}, body)

    def fs(self, h: dict, body: bytes) -> None:
        try:
            value, data = self.fs_call(h, body)
        except BadPath as exc:
            self.reply(h.get("rid"), False, kind="invalid", error=str(exc))
        except OSError as exc:
            self.reply(h.get("rid"), False, errno=exc.errno, error=exc.strerror or str(exc), path=h.get("path"))
        except (ValueError, KeyError, TypeError) as exc:
            self.reply(h.get("rid"), False, kind="invalid", error=str(exc))
        else:
            self.reply(h.get("rid"), True, data, value=value)

    def fs_call(self, h: dict, body: bytes) -> tuple:
        call = h["call"]
        if call in ("open", "ls", "mkdir", "rm"):
            path = self.sup.check_path(h["path"], removing=call == "rm" and h.get("recursive"))
            if call == "ls":
                return sorted(os.listdir(path)), b""
            if call == "mkdir":
                os.makedirs(path, exist_ok=True) if h.get("parents") else os.mkdir(path)
                return None, b""
            if call == "rm":
                if os.path.isdir(path) and not os.path.islink(path):
                    import shutil

                    shutil.rmtree(path) if h.get("recursive") else os.rmdir(path)
                else:
                    os.unlink(path)
                return None, b""
            mode = h["mode"]
            f = open(path, mode if "b" in mode else mode + "b")
            self.fids += 1
            self.files[self.fids] = f
            return self.fids, b""
        f = self.files[h["fid"]]
        if call == "read":
            n = h.get("n")
            data = f.read() if n is None or n < 0 else f.read(n)
            return None, _whole_chars(f, data) if h.get("text") and n else data
        if call == "readline":
            return None, f.readline()
        if call == "write":
            return f.write(body), b""
        if call == "seek":
            return f.seek(h["offset"], h.get("whence", 0)), b""
        if call == "tell":
            return f.tell(), b""
        if call == "flush":
            f.flush()
            return None, b""
        if call == "close":
            self.files.pop(h["fid"]).close()
            return None, b""
        raise ValueError(f"unknown file operation {call!r}")


def _whole_chars(f, data: bytes) -> bytes:
    """Text reads count bytes, as Modal's do; finish a UTF-8 character cut at the end."""
    tail = 0
    while tail < min(len(data), 4) and data[-1 - tail] & 0xC0 == 0x80:
        tail += 1
    if tail == len(data):
        return data
    lead = data[-1 - tail]
    need = 2 if lead >> 5 == 0b110 else 3 if lead >> 4 == 0b1110 else 4 if lead >> 3 == 0b11110 else 1
    return data + f.read(need - tail - 1) if need > tail + 1 else data


class Supervisor:
    def __init__(self, run: str, spec: dict, host: dict):
        self.run, self.spec = run, spec
        self.private = os.path.realpath(run)  # file operations keep out of it
        self.memory = host.get("memory")  # embedded: RLIMIT_AS for each command; docker limits by cgroup
        self.lock = threading.Lock()
        self.wake = threading.Condition(self.lock)
        self.procs: dict = {}  # pid -> Proc, registered and not yet reaped
        self.spawning = 0
        self.early: dict = {}  # pid -> status, reaped while a spawn was in flight
        self.children = threading.Event()
        self.conns: set = set()
        self.running_execs = 0
        self.timed: list = []  # execs with a timeout
        self.last_active = time.monotonic()
        self.deadline = self.last_active + float(spec["timeout"])
        self.finished = False
        self.main: Proc | None = None
        self.main_lock = threading.Lock()
        self.main_files = {fd: open(os.path.join(run, fd), "ab", buffering=0) for fd in STREAMS}
        self.main_sizes = dict.fromkeys(STREAMS, 0)
        self.main_eof = dict.fromkeys(STREAMS, False)
        self.subscribers: dict = {fd: set() for fd in STREAMS}

    # ---- children ------------------------------------------------------------------------
    def _preexec(self) -> None:
        import resource

        limit = int(self.memory)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    def spawn(self, args, env, cwd, conn, eid, timeout) -> Proc:
        import subprocess  # here, not at the top: the socket is listening before this import is paid

        with self.lock:
            self.spawning += 1
        popen = None
        try:
            popen = subprocess.Popen(
                args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0, env=env,
                cwd=cwd, start_new_session=True, preexec_fn=self._preexec if self.memory else None,
            )
        finally:
            with self.lock:
                self.spawning -= 1
                status = self.early.pop(popen.pid, None) if popen else None
                if not self.spawning:
                    self.early.clear()  # every spawn has claimed its own: the rest were orphans
                if popen:
                    proc = Proc(self, popen, conn, eid, timeout)
                    if status is None:
                        self.procs[popen.pid] = proc
                    if conn is not None:
                        self.running_execs += 1
                        if proc.deadline:
                            self.timed.append(proc)
                            self.wake.notify_all()
        self.children.set()
        proc.start_pumps()
        if status is not None:
            proc.reaped(status)
        return proc

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                self.children.wait()
                self.children.clear()
                continue
            with self.lock:
                proc = self.procs.pop(pid, None)
                if proc is None and self.spawning:
                    self.early[pid] = status
            if proc is not None:
                proc.reaped(status)

    def exec(self, conn: Conn, h: dict) -> None:
        rid, eid, args = h.get("rid"), h.get("eid"), h.get("args") or []
        env = dict(os.environ)
        env.update(h.get("env") or {})
        cwd = h.get("workdir") or os.getcwd()
        if not os.path.isdir(cwd):
            conn.reply(rid, False, error=f"workdir {cwd} does not exist in the sandbox")
            return
        try:
            conn.execs[eid] = self.spawn(args, env, cwd, conn, eid, h.get("timeout"))
        except OSError as exc:
            conn.reply(rid, False, error=f"cannot run {args[0]!r}: {exc.strerror or exc}")
            return
        conn.reply(rid, True)

    def exec_done(self) -> None:
        with self.lock:
            self.running_execs -= 1
            self.last_active = time.monotonic()
            self.wake.notify_all()

    def touch(self) -> None:
        self.last_active = time.monotonic()

    # ---- the main command's output: a file each, and the connections following it ------------
    def main_output(self, fd: str, data: bytes | None) -> None:
        with self.main_lock:
            if data is None:
                self.main_eof[fd] = True
                frame = {"op": "main_eof", "fd": fd}
            else:
                self.main_files[fd].write(data)
                self.main_sizes[fd] += len(data)
                frame = {"op": "main", "fd": fd}
            for conn in list(self.subscribers[fd]):
                conn.send(frame, data or b"")

    def subscribe(self, conn: Conn, fd: str, offset: int) -> None:
        if fd not in STREAMS:
            return
        with self.main_lock:
            if offset < self.main_sizes[fd]:
                with open(os.path.join(self.run, fd), "rb") as f:
                    f.seek(offset)
                    conn.send({"op": "main", "fd": fd}, f.read(self.main_sizes[fd] - offset))
            if self.main_eof[fd]:
                conn.send({"op": "main_eof", "fd": fd})
            else:
                self.subscribers[fd].add(conn)

    def forget(self, conn: Conn) -> None:
        with self.main_lock:
            for subs in self.subscribers.values():
                subs.discard(conn)
        with self.lock:
            self.conns.discard(conn)

    # ---- files -----------------------------------------------------------------------------
    def check_path(self, path, removing=False) -> str:
        if not isinstance(path, str) or not path.startswith("/") or "\0" in path:
            raise BadPath(f"{path!r} is not an absolute path")
        real = os.path.realpath(path)
        inside = real == self.private or real.startswith(self.private + "/")
        if inside or (removing and (self.private + "/").startswith(real.rstrip("/") + "/")):
            raise BadPath(f"{path} is the sandbox's private control directory ({self.private}); use another path")
        return path

    # ---- the end ---------------------------------------------------------------------------
    def tick(self) -> None:
        """End the sandbox at its deadline or when idle; kill execs past their own timeout."""
        idle = self.spec.get("idle_timeout")
        with self.lock:
            while True:
                now = time.monotonic()
                if now >= self.deadline:
                    reason = "timeout"
                    break
                due = self.deadline
                if idle and not self.running_execs:
                    if now - self.last_active >= idle:
                        reason = "idle"
                        break
                    due = min(due, self.last_active + idle)
                for proc in list(self.timed):
                    if proc.told:
                        self.timed.remove(proc)
                    elif now >= proc.deadline:
                        proc.timed_out = True
                        proc.kill()
                        self.timed.remove(proc)
                    else:
                        due = min(due, proc.deadline)
                self.wake.wait(max(0.005, due - now))
        self.finish(reason)

    def finish(self, reason: str, code: int | None = None) -> None:
        with self.lock:
            if self.finished:
                return
            self.finished = True
            procs, conns = list(self.procs.values()), list(self.conns)
        code = CODES[reason] if code is None else code
        for proc in procs:
            proc.kill()
        if os.getpid() != 1:
            _kill_children()
        write_json(os.path.join(self.run, EXIT), {"reason": reason, "code": code})
        for conn in conns:
            conn.send({"op": "ended", "reason": reason, "code": code})
        os._exit(0)

    def fail(self, message: str) -> None:
        write_json(os.path.join(self.run, EXIT), {"reason": "error", "code": 127, "message": message})
        os._exit(1)

    # ---- the whole life --------------------------------------------------------------------
    def serve(self) -> None:
        threading.Thread(target=self.reap, daemon=True).start()
        workdir = self.spec.get("workdir")
        if workdir:
            try:
                os.makedirs(workdir, exist_ok=True)
                os.chdir(workdir)
            except OSError as exc:
                self.fail(f"cannot use workdir {workdir}: {exc.strerror or exc}")
        path = os.path.join(self.run, SOCKET)
        if os.path.lexists(path):
            os.unlink(path)
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(path)
        os.chmod(path, 0o666)  # a non-root image user must reach it too; the host directory above is 0700
        server.listen(64)  # clients may connect now; their hello waits until the main command has started
        cmd = self.spec.get("cmd") or []
        if cmd:
            try:
                self.main = self.spawn(cmd, dict(os.environ), os.getcwd(), None, "main", None)
            except OSError as exc:
                self.fail(f"cannot run {cmd[0]!r}: {exc.strerror or exc}")
        else:
            threading.Thread(target=__import__, args=("subprocess",), daemon=True).start()  # ready for the first exec
        threading.Thread(target=self.tick, daemon=True).start()
        while True:
            sock, _ = server.accept()
            conn = Conn(self, sock)
            with self.lock:
                if self.finished:
                    sock.close()
                    continue
                self.conns.add(conn)
            threading.Thread(target=conn.serve, daemon=True).start()


def _kill_children() -> None:
    """On the host, kill what is left of ours: orphans we took in as subreaper, and their groups."""
    me = str(os.getpid())
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = f.read().rpartition(")")[2].split()[1]
        except (OSError, IndexError):
            continue
        if ppid == me:
            for kill in (os.killpg, os.kill):
                try:
                    kill(int(entry), signal.SIGKILL)
                except OSError:
                    pass


def main(argv: list) -> None:
    run = argv[1]
    host = json.loads(argv[2]) if len(argv) > 2 else {}
    log = os.open(os.path.join(run, LOG), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 2)
    os.close(log)
    with open(os.path.join(run, SPEC)) as f:
        spec = json.load(f)
    with open(os.path.join(run, ENV)) as f:  # env and secret values: read, then gone before anything runs
        os.environ.update(json.load(f))
    os.unlink(os.path.join(run, ENV))
    if host.get("cpus"):
        os.sched_setaffinity(0, host["cpus"])
    if os.getpid() != 1:
        import ctypes

        ctypes.CDLL(None).prctl(_PR_SET_CHILD_SUBREAPER, 1)
    sup = Supervisor(run, spec, host)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: sup.finish("terminated"))
    sup.serve()


if __name__ == "__main__":
    main(sys.argv)
