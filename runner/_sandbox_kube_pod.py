"""Inside a sandbox's pod (the kubernetes provider): the pod's first process, and the bridge that
each client connection runs through pods/exec.

A docker sandbox shares its run directory with the host, so the client reads the supervisor's
socket, `exit` file and output files directly. A pod shares nothing with the client, which
reaches it only through the Kubernetes API, so two small commands stand in for that directory.
Both run by path under the image's python3 with `-I -S`, as the supervisor does, so they need
only the standard library (Python 3.8 and later) and load nothing of the image's site-packages:

    _sandbox_kube_pod.py supervise RUN SPEC   the pod's main command (PID 1)
    _sandbox_kube_pod.py bridge RUN           one client connection, run by pods/exec

`supervise` writes the supervisor's `spec.json` (SPEC, a JSON object: cmd, timeout, idle_timeout,
workdir, and `deadline`, the wall-clock time the client gave the sandbox to end by) and an empty
`env.json` (env values are the pod's own env, secrets its envFrom) into RUN, an emptyDir; starts
the supervisor (`runner._sandbox_agent`), which, not being PID 1, makes itself the subreaper of
what it runs; passes it the signals the kubelet sends; and reaps whatever else is left to PID 1.
Once the supervisor has exited it prints, to the pod's log, the main command's stdout and
stderr and the supervisor's own log as `runner-sandbox NAME BASE64` lines and then the `exit`
record as `runner-sandbox exit JSON`, and exits with the sandbox's exit code. So how a sandbox
ended and what its command printed outlive the pod's containers, as the files of a docker
sandbox's run directory outlive its container; the client copies them into its control
directory when it finds the pod ended (`runner._sandbox_kube`).

`bridge` connects to the supervisor's socket (waiting for it while the supervisor starts, giving
up at once if the sandbox has ended) and copies its stdin to the socket and the socket to its
stdout, byte for byte, until either side closes: one exec stream then carries the supervisor's
own frames, and everything a Sandbox object does goes over it.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import signal
import socket
import sys
import threading
import time

MARK = "runner-sandbox"  # the first word of every line `supervise` prints to the pod's log
CHUNK = 8192  # bytes per log line, before base64: well under the 16 KiB at which runtimes split lines
BRIDGE_WAIT = 30.0  # seconds the bridge waits for the supervisor's socket


def _agent():
    """runner._sandbox_agent, loaded by path (under -I the script's directory is not on sys.path)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_sandbox_agent.py")
    spec = importlib.util.spec_from_file_location("_sandbox_agent", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, path


def supervise(run: str, spec_text: str) -> None:
    agent, path = _agent()
    spec = json.loads(spec_text)
    deadline = spec.pop("deadline", None)
    if deadline:  # the timeout counts from Sandbox.create, not from when the pod got here
        spec["timeout"] = max(0.001, min(float(spec["timeout"]), deadline - time.time()))
    os.makedirs(run, exist_ok=True)  # an emptyDir: already there, and writable by any user
    agent.write_json(os.path.join(run, agent.SPEC), spec)
    agent.write_json(os.path.join(run, agent.ENV), {})
    pid = os.fork()
    if pid == 0:
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(null, 1)  # the pod's log carries only what this process prints
        os.execv(sys.executable, [sys.executable, "-I", "-S", path, run])

    def forward(sig, _frame):
        try:
            os.kill(pid, sig)
        except OSError:
            pass

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    while True:
        try:
            if os.waitpid(-1, 0)[0] == pid:
                break
        except ChildProcessError:
            break
    try:
        with open(os.path.join(run, agent.EXIT)) as f:
            info = json.load(f)
    except (OSError, ValueError):
        info = None
    out = sys.stdout.buffer
    for name in (*agent.STREAMS, agent.LOG):
        try:
            with open(os.path.join(run, name), "rb") as f:
                for chunk in iter(lambda: f.read(CHUNK), b""):
                    out.write(f"{MARK} {name} ".encode() + base64.b64encode(chunk) + b"\n")
        except OSError:
            pass
    if info is not None:
        out.write(f"{MARK} exit {json.dumps(info)}\n".encode())
    out.flush()
    os._exit(min(255, max(0, int(info["code"])) if info else 137))


def bridge(run: str) -> None:
    agent, _ = _agent()
    end = time.monotonic() + BRIDGE_WAIT
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(os.path.join(run, agent.SOCKET))
            break
        except OSError:
            sock.close()
        if os.path.exists(os.path.join(run, agent.EXIT)) or time.monotonic() > end:
            sys.stderr.write("runner-sandbox: the sandbox's supervisor is not there\n")
            os._exit(3)
        time.sleep(0.01)

    def up() -> None:
        try:
            while True:
                data = os.read(0, 65536)
                if not data:
                    break
                sock.sendall(data)
        except OSError:
            pass
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    threading.Thread(target=up, daemon=True).start()
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                break
            view = memoryview(data)
            while view:
                view = view[os.write(1, view):]
    except OSError:
        pass
    os._exit(0)


if __name__ == "__main__":
    if sys.argv[1:2] == ["supervise"] and len(sys.argv) == 4:
        supervise(sys.argv[2], sys.argv[3])
    elif sys.argv[1:2] == ["bridge"] and len(sys.argv) == 3:
        bridge(sys.argv[2])
    else:
        sys.exit("usage: _sandbox_kube_pod.py supervise RUN SPEC | bridge RUN")
