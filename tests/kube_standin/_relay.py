"""The stand-in's in-pod relay: run as `python3 -c <this file> MODE ...` inside a pod's pause container.

It runs there, not on the host, because the pause container holds the pod's network namespace:
its 127.0.0.1 is the pod's loopback, so neither a port-forward nor a loopback service ever needs
a container's bridge address. Standard library only (it runs on the pod's python3).

    connect PORT [announce]
        pods/portforward: one TCP connection to 127.0.0.1:PORT carried over stdin and stdout. A
        failed connect is one line on stderr and exit status 1; stdin's end half-closes the
        connection (the forwarding client went away), the connection's end ends the relay. With
        `announce`, a made connection is first said on stderr (CONNECTED), so a caller knows
        before it sends anything (the stand-in's HTTP add-on retries refused connects).
    serve ADDR:PORT=SOCKET ...
        loopback services: listen on each ADDR:PORT (a 127.x address: the Service's "cluster IP"
        in this pod) and carry every connection to the unix socket SOCKET, which the stand-in
        bind-mounts into the pause container. Prints READY once every listener is bound.
"""

import os
import socket
import sys
import threading

READY = "kube-standin: loopback services ready"
CONNECTED = "kube-standin: connected"


def _write_all(fd, data):
    while data:
        data = data[os.write(fd, data):]


def _connect(port, announce=False):
    try:
        conn = socket.create_connection(("127.0.0.1", port), timeout=5)
    except OSError as e:
        sys.stderr.write(f"failed to connect to localhost:{port} inside the pod: {e.strerror or e}\n")
        return 1
    conn.settimeout(None)
    if announce:
        sys.stderr.write(CONNECTED + "\n")
        sys.stderr.flush()

    def upstream():
        try:
            while data := os.read(0, 65536):
                conn.sendall(data)
            conn.shutdown(socket.SHUT_WR)
        except OSError:
            pass
    threading.Thread(target=upstream, daemon=True).start()
    try:
        while data := conn.recv(65536):
            _write_all(1, data)
    except OSError:  # reset by the pod's server, or stdout gone with the client
        pass
    return 0


def _splice(src, dst, done):
    """Copies src to dst until src ends, then half-closes dst: a request-then-answer protocol keeps working."""
    try:
        while data := src.recv(65536):
            dst.sendall(data)
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    if done.acquire(blocking=False):  # the first direction to end only says so; the second closes both
        return
    src.close()
    dst.close()


def _carry(conn, path):
    upstream = socket.socket(socket.AF_UNIX)
    try:
        upstream.connect(path)
    except OSError as e:
        sys.stderr.write(f"loopback service {path}: {e.strerror or e}\n")
        conn.close()
        return
    done = threading.Lock()
    threading.Thread(target=_splice, args=(conn, upstream, done), daemon=True).start()
    _splice(upstream, conn, done)


def _accept(listener, path):
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=_carry, args=(conn, path), daemon=True).start()


def _serve(specs):
    listeners = []
    for spec in specs:
        address, _, path = spec.partition("=")
        host, _, port = address.rpartition(":")
        listeners.append((socket.create_server((host, int(port))), path))
    for listener, path in listeners:
        threading.Thread(target=_accept, args=(listener, path), daemon=True).start()
    print(READY, flush=True)
    threading.Event().wait()


def main(argv):
    if argv[:1] == ["connect"] and len(argv) in (2, 3) and argv[2:] in ([], ["announce"]):
        return _connect(int(argv[1]), announce=len(argv) == 3)
    if argv[:1] == ["serve"]:
        return _serve(argv[1:])
    sys.stderr.write("usage: connect PORT [announce] | serve ADDR:PORT=SOCKET ...\n")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
