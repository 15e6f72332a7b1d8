"""The framing spoken between a client and the agent in each container.

A frame is a fixed prefix, a small pickled header and a body:

    !IQ (header length, body length) | header (pickle of a dict) | body (blobs, back to back)

The header holds `op` and, where the frame carries payloads, `sizes`: the length of each blob
in the body. Payloads (arguments, results, exceptions) are cloudpickle bytes made by the sender
and kept opaque here, so a 100 MB argument is written once and read into one buffer, and many
small inputs or outputs travel in one frame.

The transport is a stream socket: a unix socket the client listens on for local providers.
Everything here is standard library only because the agent imports it inside user images.
"""

from __future__ import annotations

import pickle
import socket
import struct
import threading
from typing import Sequence

PREFIX = struct.Struct("!IQ")
MAX_HEADER = 64 * 1024 * 1024

# Operations. Agent to client:
HELLO = "hello"  # {token, python, pid}
READY = "ready"  # the function is loaded and @enter hooks ran
INIT_FAILED = "init_failed"  # {tb}; blob 0: the pickled exception
OUTPUTS = "outputs"  # {items: [(input_id, status, tb)]}; one blob per item
DYING = "dying"  # {reason, input_id}: the agent exits on purpose, e.g. after a timeout
# Client to agent:
INIT = "init"  # {spec}; blob 0: cloudpickled function spec payload
INPUTS = "inputs"  # {items: [(input_id, method, kind)]}; one blob per item: pickled (args, kwargs)
CANCEL = "cancel"  # {input_id}
SHUTDOWN = "shutdown"  # run @exit hooks and stop

# Output statuses.
OK = "ok"
ERR = "err"
GEN_ITEM = "gen"  # one item of a generator; more follow
GEN_DONE = "gen_done"
TIMEOUT = "timeout"
CANCELLED = "cancelled"


class ConnectionClosed(Exception):
    """The peer went away."""


class Connection:
    """A framed, thread-safe (for senders) connection over a stream socket."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self._send_lock = threading.Lock()
        self._rfile = sock.makefile("rb", buffering=256 * 1024)

    def send(self, header: dict, blobs: Sequence[bytes | memoryview] = ()) -> None:
        if blobs:
            header["sizes"] = [len(b) for b in blobs]
        head = pickle.dumps(header, protocol=pickle.HIGHEST_PROTOCOL)
        body_len = sum(len(b) for b in blobs)
        prefix = PREFIX.pack(len(head), body_len)
        try:
            with self._send_lock:
                if body_len < 256 * 1024:
                    self.sock.sendall(b"".join([prefix, head, *blobs]))
                else:
                    self.sock.sendall(prefix + head)
                    for blob in blobs:
                        self.sock.sendall(blob)
        except OSError as exc:
            raise ConnectionClosed(str(exc)) from exc

    def _read_exact(self, n: int) -> bytearray:
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        while got < n:
            try:
                k = self._rfile.readinto(view[got:])
            except OSError as exc:
                raise ConnectionClosed(str(exc)) from exc
            if not k:
                raise ConnectionClosed("connection closed")
            got += k
        return buf

    def recv(self) -> tuple[dict, list[memoryview]]:
        head_len, body_len = PREFIX.unpack(self._read_exact(PREFIX.size))
        if head_len > MAX_HEADER:
            raise ConnectionClosed(f"corrupt frame: header of {head_len} bytes")
        header = pickle.loads(self._read_exact(head_len))
        body = memoryview(self._read_exact(body_len)) if body_len else memoryview(b"")
        blobs: list[memoryview] = []
        at = 0
        for size in header.get("sizes", ()):
            blobs.append(body[at : at + size])
            at += size
        return header, blobs

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
