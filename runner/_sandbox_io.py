"""What a Sandbox hands out: exec'd processes, their streams, open files and tunnels.

These objects hold no connection of their own. Each goes through the Sandbox it came from
(`sandbox._send` for stdin, `sandbox._fs` for files), so they share its one multiplexed connection
to the supervisor and fail, as it does, with one clear error once the sandbox has ended. Output
arrives in a `Buffer` filled by the connection's reader thread, which is what lets a caller read
a command's stdout line by line while the command still runs, from sync or async code.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from ._aio import blocking
from ._sandbox_agent import STREAMS
from .exception import InvalidError

if TYPE_CHECKING:
    from ._sandbox import Sandbox


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
class Buffer:
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

    def __init__(self, buf: Buffer, text: bool):
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
        self._buffers = {fd: Buffer() for fd in STREAMS}
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
