"""The front door: one local reverse proxy per app run, in front of that run's web endpoints.

A web function's containers come and go (started by the first request, scaled by load, stopped
after their scaledown window), each on a port of its own. Users get one stable address per run,
`http://127.0.0.1:PORT/<label>/...`: the door routes each request by its first path segment to a
backend that the router hands out, and strips that segment, so an app sees the paths it would see
at its own root; `X-Forwarded-Prefix: /<label>` says where it is mounted.

Why it is shaped like this:

- Only request heads are parsed (to route, rewrite the path and find the body's end). Responses are
  not: a pump copies the backend's bytes to the client as they arrive, so streaming, server-sent
  events, `100 Continue` and WebSocket upgrades need no special case, and nothing is buffered.
- A client connection holds one backend connection at a time, kept alive across its requests to
  the same label. That is also the unit the router counts: `acquire(label)` when the connection's
  first request for a label arrives, `release()` when the connection closes or its next request goes
  to another label. So a keep-alive client is one request in flight for as long as it is connected.
- The backend decides how long a connection lives: when it closes its side (`Connection: close`,
  its idle timeout), the door closes the client's. When the client closes or half-closes, the door
  closes the backend's, as nginx does by default.
- Pipelined requests to one label are answered in order by the backend. Pipelining across labels is
  not supported: the door switches backend when the next head arrives, dropping any answer still
  owed by the previous one. Clients do not pipeline unless told to.
- Standard library only, on an event loop of its own in a daemon thread: callers are plain threads.
  `Router.acquire` runs on that loop and must not block it (await, or hand blocking waits to an
  executor); `release` is called on it too and must return quickly.
- Protocols, not streams: bytes are forwarded from `data_received` callbacks, with no task wakeup
  per request, which makes the door cost a fraction of what the app behind it does (see
  bench/web.py). Flow control is the transports': when one side's write buffer fills, the door
  stops reading the other side until it drains. asyncio sets TCP_NODELAY on every TCP transport,
  so small answers are not held back by Nagle.

Answers the door gives itself (text, then the connection is closed): 400 for a malformed head,
404 for a path without a known label (listing the labels), 431 for a head over 64 KiB, 502 when the
backend cannot be reached or closes without answering, 503 with the router's message when it could
not provide a backend (a runner Error), 500 when the router fails otherwise.
"""

from __future__ import annotations

import asyncio
import ipaddress
import threading
import time
from collections.abc import Callable
from typing import Protocol

from .exception import Error, InvalidError

__all__ = ["FrontDoor", "Router"]

HEAD_LIMIT = 64 * 1024
CONNECT_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0
_SET_BY_DOOR = frozenset((b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"x-forwarded-prefix"))
_REASONS = {400: b"Bad Request", 404: b"Not Found", 431: b"Request Header Fields Too Large",
            500: b"Internal Server Error", 502: b"Bad Gateway", 503: b"Service Unavailable"}


class Router(Protocol):
    """What the door asks for a backend. `acquire` may wait while a container starts; it raises
    KeyError for an unknown label (404) or a runner Error when it cannot provide one (503)."""

    async def acquire(self, label: str) -> tuple[str, int, Callable[[], None]]: ...

    def labels(self) -> list[str]: ...


class _Refused(Exception):
    """Answer the client with this status and text, then close."""

    def __init__(self, status: int, text: str):
        super().__init__(text)
        self.status, self.text = status, text


class _Broken(Exception):
    """Close the client connection without an answer: part of the request went to the backend already."""


def _parse(head: bytes, peer: bytes) -> tuple[bytes, bytes, int, bool, bool]:
    """A request head -> (label, the head to forward, Content-Length, chunked, upgrade)."""
    lines = head[:-4].split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        raise _Refused(400, f"malformed request line {lines[0][:100]!r}; expected 'METHOD /<label>/path HTTP/1.1'")
    method, target, version = parts
    if not target.startswith(b"/"):
        raise _Refused(400, f"the request target must be a path, like /<label>/..., not {target[:100]!r}")
    path, qmark, query = target.partition(b"?")
    label, slash, rest = path[1:].partition(b"/")
    out = [b"%s %s%s%s %s" % (method, slash + rest or b"/", qmark, query, version)]
    length, chunked, upgrade, host, forwarded_for = 0, False, False, b"", b""
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon:
            raise _Refused(400, f"malformed header line {line[:100]!r}")
        name = name.lower()
        if name == b"content-length":
            value = value.strip()
            if not value.isdigit():
                raise _Refused(400, f"bad Content-Length {value[:40]!r}; it must be a number of bytes")
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
        elif name == b"upgrade":
            upgrade = True
        elif name == b"host":
            host = value.strip()
        elif name in _SET_BY_DOOR:
            if name == b"x-forwarded-for":
                forwarded_for = value.strip() + b", "
            continue
        out.append(line)
    out.append(b"X-Forwarded-For: " + forwarded_for + peer)
    out.append(b"X-Forwarded-Proto: http")
    if host:
        out.append(b"X-Forwarded-Host: " + host)
    out.append(b"X-Forwarded-Prefix: /" + label)
    out.append(b"\r\n")
    return label, b"\r\n".join(out), length, chunked, upgrade


_HEAD, _BODY, _CHUNK_SIZE, _CHUNK_DATA, _TRAILER, _TUNNEL, _SWITCHING, _CLOSED = range(8)


class _Client(asyncio.Protocol):
    """One client connection, and the backend connection it holds for its current label.

    A small state machine fed by `data_received`: a request head, then its body by Content-Length,
    by chunks, or none; after an upgrade, a tunnel. A head for another label pauses reading while
    `_switch` acquires and connects (a task: the only await on the way)."""

    def __init__(self, door: FrontDoor):
        self.door = door
        self.buf = b""  # bytes received and not yet forwarded
        self.state, self.remaining = _HEAD, 0
        self.label: bytes | None = None
        self.backend: _Backend | None = None
        self.release: Callable[[], None] | None = None
        self.switching: asyncio.Task | None = None
        self.waiting = False  # a request went to the backend, which has not sent a byte since
        self.closed = False

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.peer = str((transport.get_extra_info("peername") or ("",))[0]).encode()
        self.door._conns.add(self)

    def data_received(self, data: bytes) -> None:
        if self.state == _TUNNEL:
            self.backend.transport.write(data)
            return
        self.buf = self.buf + data if self.buf else data
        self._feed()

    def _feed(self) -> None:
        try:
            self._process()
        except _Refused as exc:
            self._answer(exc.status, exc.text)
        except _Broken:
            self.transport.close()

    def _process(self) -> None:
        while self.buf and self.state < _SWITCHING:
            buf, state = self.buf, self.state
            if state == _HEAD:
                end = buf.find(b"\r\n\r\n")
                if end < 0 and len(buf) <= HEAD_LIMIT:
                    return
                if end < 0 or end + 4 > HEAD_LIMIT:
                    raise _Refused(431, f"request head over {HEAD_LIMIT // 1024} KiB")
                self.buf = buf[end + 4:]
                label, head, length, chunked, upgrade = _parse(buf[:end + 4], self.peer)
                after = _TUNNEL if upgrade else _CHUNK_SIZE if chunked else _BODY if length else _HEAD
                if label == self.label:
                    self._forward_head(head, after, length)
                else:
                    self.state = _SWITCHING
                    self.transport.pause_reading()
                    self.switching = asyncio.get_running_loop().create_task(self._switch(label, head, after, length))
            elif state == _BODY or state == _CHUNK_DATA:
                n = self.remaining
                if len(buf) <= n:
                    self.backend.transport.write(buf)
                    self.buf, n = b"", n - len(buf)
                else:
                    self.backend.transport.write(buf[:n])
                    self.buf, n = buf[n:], 0
                self.remaining = n
                if not n:
                    self.state = _HEAD if state == _BODY else _CHUNK_SIZE
            elif state == _TUNNEL:
                self.backend.transport.write(buf)
                self.buf = b""
            else:  # a chunk-size line, or a trailer line (up to the empty one)
                end = buf.find(b"\r\n")
                if end < 0:
                    if len(buf) > HEAD_LIMIT:
                        raise _Broken()
                    return
                line, self.buf = buf[:end + 2], buf[end + 2:]
                self.backend.transport.write(line)
                if state == _TRAILER:
                    if end == 0:
                        self.state = _HEAD
                    continue
                try:
                    size = int(line.split(b";", 1)[0], 16)
                except ValueError:
                    raise _Broken() from None
                self.state, self.remaining = (_CHUNK_DATA, size + 2) if size else (_TRAILER, 0)

    def _forward_head(self, head: bytes, after: int, length: int) -> None:
        self.waiting = True
        self.backend.transport.write(head)
        self.state, self.remaining = after, length

    async def _switch(self, label: bytes, head: bytes, after: int, length: int) -> None:
        self._drop_backend()
        name = label.decode("latin-1")
        try:
            if not label:
                raise _Refused(404, self.door.not_found("the path has no label"))
            try:
                host, port, self.release = await self.door.router.acquire(name)
            except KeyError:
                raise _Refused(404, self.door.not_found(f"no web endpoint is labelled {name!r}")) from None
            except Error as exc:
                raise _Refused(503, f"{name}: {exc}") from None
            except Exception as exc:  # noqa: BLE001 - a broken router answers 500, the door keeps serving
                raise _Refused(500, f"{name}: the router failed: {type(exc).__name__}: {exc}") from None
            loop = asyncio.get_running_loop()
            try:
                _, self.backend = await asyncio.wait_for(
                    loop.create_connection(lambda: _Backend(self), host, port), CONNECT_TIMEOUT)
            except (OSError, asyncio.TimeoutError) as exc:
                why = getattr(exc, "strerror", None) or f"no answer within {CONNECT_TIMEOUT:g} s"
                raise _Refused(502, f"{name}: cannot connect to its container at {host}:{port}: {why}") from None
        except _Refused as exc:
            if not self.closed:
                self._answer(exc.status, exc.text)
            return
        finally:
            if self.closed:  # the client left meanwhile
                self._drop_backend()
        if self.closed:
            return
        self.label = label
        self._forward_head(head, after, length)
        self.transport.resume_reading()
        self._feed()

    def backend_lost(self, backend: _Backend) -> None:
        """The backend closed its connection: so does the door, with a 502 if a request got no answer."""
        if backend is not self.backend:
            return
        self.backend = None
        if self.waiting:
            self._answer(502, f"{self.label.decode('latin-1')}: its container closed the connection without answering")
        else:
            self.transport.close()

    def _answer(self, status: int, text: str) -> None:
        body = text.encode() + b"\n"
        self.transport.write(b"HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n"
                             b"Connection: close\r\n\r\n%s" % (status, _REASONS[status], len(body), body))
        self.transport.close()
        self.state, self.buf = _CLOSED, b""

    def _drop_backend(self) -> None:
        if self.backend is not None:
            backend, self.backend = self.backend, None
            backend.transport.close()
        self.label = None
        if self.release is not None:
            release, self.release = self.release, None
            release()

    def pause_writing(self) -> None:  # the client reads slower than the backend answers
        if self.backend is not None:
            self.backend.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.backend is not None:
            self.backend.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.state = _CLOSED
        self.door._conns.discard(self)
        if self.switching is not None and not self.switching.done():
            self.switching.cancel()
        self._drop_backend()

    def abort(self) -> None:
        if self.backend is not None:
            self.backend.transport.abort()
        self.transport.abort()


class _Backend(asyncio.Protocol):
    """The door's connection to a container: what arrives goes to the client as it is."""

    def __init__(self, client: _Client):
        self.client = client

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        client = self.client
        client.waiting = False
        client.transport.write(data)

    def pause_writing(self) -> None:  # the backend reads slower than the client sends
        self.client.transport.pause_reading()

    def resume_writing(self) -> None:
        self.client.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.backend_lost(self)


class FrontDoor:
    """`FrontDoor(router).start()` serves `http://HOST:PORT/<label>/...` until `stop()`."""

    def __init__(self, router: Router, host: str = "127.0.0.1", port: int = 0, sock=None):
        if sock is not None:  # a listening socket handed over by the previous version of a deployed app
            host, port = sock.getsockname()[:2]
        try:
            self._ip = ipaddress.ip_address(host)
        except ValueError:
            raise InvalidError(
                f"the front door's host must be an IP address like 127.0.0.1 or ::1, not {host!r}") from None
        if not isinstance(port, int) or not 0 <= port <= 65535:
            raise InvalidError(f"the front door's port must be 0 (any free port) to 65535, not {port!r}")
        self.router, self.host, self.port, self._sock = router, host, port, sock
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._conns: set[_Client] = set()
        self._lock = threading.Lock()
        self._stopped = False

    @property
    def url(self) -> str:
        if self._thread is None:
            raise InvalidError("the front door has no URL before start()")
        return f"http://{self.host if self._ip.version == 4 else f'[{self.host}]'}:{self.port}"

    def start(self, serving: bool = True) -> int:
        """Listen, serve on an event loop in a daemon thread, and return the bound port. With
        `serving=False` the socket is bound but no connection is accepted until `open()`."""
        with self._lock:
            if self._thread is not None or self._stopped:
                raise InvalidError("this front door was started already; make a new FrontDoor")
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=loop.run_forever, name="runner-frontdoor", daemon=True)
            thread.start()
            try:
                self._server = asyncio.run_coroutine_threadsafe(self._listen(serving), loop).result()
            except OSError as exc:
                loop.call_soon_threadsafe(loop.stop)
                thread.join()
                loop.close()
                raise InvalidError(f"the front door cannot listen on {self.host}:{self.port}: {exc.strerror or exc}; "
                                   "choose another port, or 0 for any free one") from None
            self._loop, self._thread = loop, thread
            self.port = self._server.sockets[0].getsockname()[1]
            return self.port

    def stop(self) -> None:
        """Close the listener and every connection (each holder's `release` is called), then end the
        thread. Idempotent."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            loop, thread = self._loop, self._thread
            if loop is None:
                return
            try:
                asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(STOP_TIMEOUT)
            finally:
                loop.call_soon_threadsafe(loop.stop)
                thread.join(STOP_TIMEOUT)
                if not thread.is_alive():
                    loop.close()

    async def _listen(self, serving: bool) -> asyncio.Server:
        loop = asyncio.get_running_loop()
        where = {"sock": self._sock} if self._sock is not None else {"host": self.host, "port": self.port}
        return await loop.create_server(lambda: _Client(self), backlog=1024, start_serving=serving, **where)

    def open(self) -> None:
        """Start accepting connections (after `start(serving=False)`)."""

        async def serve() -> None:
            await self._server.start_serving()

        asyncio.run_coroutine_threadsafe(serve(), self._loop).result(STOP_TIMEOUT)

    def listening_socket(self):
        """The listening socket, to hand to the next version of a deployed app (it shares the
        accept queue, so no connection is refused or dropped in between)."""
        return self._server.sockets[0]

    def drain(self, timeout: float) -> None:
        """Stop accepting, and wait up to `timeout` seconds for the open connections to finish:
        requests accepted before keep their answers. Then `stop()` ends the rest."""
        with self._lock:
            loop = self._loop
        if loop is None or self._stopped:
            return

        async def close_listener() -> None:
            self._server.close()
            # Connections accepted just before are still being set up (their protocol is made in a
            # task); let those tasks run, so they count as open connections below.
            for _ in range(10):
                await asyncio.sleep(0.01)

        asyncio.run_coroutine_threadsafe(close_listener(), loop).result(STOP_TIMEOUT)
        deadline = time.monotonic() + timeout
        while self._conns and time.monotonic() < deadline:
            time.sleep(0.05)

    async def _shutdown(self) -> None:
        self._server.close()
        for conn in list(self._conns):
            conn.abort()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.sleep(0)  # the aborted transports close their sockets and call connection_lost

    def not_found(self, why: str) -> str:
        labels = self.router.labels()
        where = ", ".join(f"{self.url}/{label}" for label in labels) if labels else "none in this app"
        return f"{why}; web endpoints: {where}"
