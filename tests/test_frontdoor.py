"""The front door (runner._frontdoor), against real backends on 127.0.0.1: uvicorn serving small
ASGI apps in threads, and raw asyncio servers where uvicorn cannot stand in (a WebSocket echo with
no websocket library installed, a backend that hangs up). A test router counts acquire/release."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import http.client
import json
import os
import socket
import struct
import threading
import time
import uuid

import httpx
import pytest
import uvicorn

from runner._frontdoor import FrontDoor
from runner.exception import ExecutionError, InvalidError

GATES: dict[str, list[threading.Event]] = {}  # token -> events a streaming response waits for, one per part


def gates(n: int) -> tuple[str, list[threading.Event]]:
    token = uuid.uuid4().hex
    GATES[token] = [threading.Event() for _ in range(n)]
    return token, GATES[token]


def make_app(name: str):
    """An ASGI app that answers what it saw as JSON; /stream and /sse send parts as the test opens gates."""

    async def app(scope, receive, send):
        body, more = b"", True
        while more:
            msg = await receive()
            body += msg.get("body", b"")
            more = msg.get("more_body", False)
        path, query = scope["path"], scope["query_string"].decode()
        if path in ("/stream", "/sse", "/slow"):
            kind = b"text/event-stream" if path == "/sse" else b"text/plain"
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", kind)]})
            for i, gate in enumerate(GATES[query]):
                part = f"data: {i}\n\n" if path == "/sse" else f"part {i}\n"
                if path != "/slow":
                    await send({"type": "http.response.body", "body": part.encode(), "more_body": True})
                await asyncio.to_thread(gate.wait, 10)
            await send({"type": "http.response.body", "body": b"done\n"})
            return
        data = json.dumps({"app": name, "path": path, "query": query, "client_port": scope["client"][1],
                           "headers": {k.decode(): v.decode() for k, v in scope["headers"]},
                           "body_len": len(body), "body_sha": hashlib.sha256(body).hexdigest()}).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
        await send({"type": "http.response.body", "body": data})

    return app


class Uvicorn:
    def __init__(self, app):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                                timeout_keep_alive=60)  # so only the door closes idle connections
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        eventually(lambda: self.server.started, "uvicorn did not start")

    def close(self):
        self.server.should_exit = True
        self.thread.join(15)
        self.sock.close()


class RawServer:
    """An asyncio server on 127.0.0.1 in a thread of its own, running `handler(reader, writer)`."""

    def __init__(self, handler):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        start = asyncio.start_server(handler, "127.0.0.1", 0)
        self.server = asyncio.run_coroutine_threadsafe(start, self.loop).result(10)
        self.port = self.server.sockets[0].getsockname()[1]

    def close(self):
        async def shut():
            self.server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shut(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class Router:
    def __init__(self, backends: dict[str, tuple[str, int]], delay: float = 0.0, fail: Exception | None = None):
        self.backends, self.delay, self.fail = backends, delay, fail
        self.acquired = self.released = 0
        self.lock = threading.Lock()

    async def acquire(self, label):
        host, port = self.backends[label]
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail:
            raise self.fail
        with self.lock:
            self.acquired += 1
        return host, port, self.release

    def release(self):
        with self.lock:
            self.released += 1

    def labels(self):
        return sorted(self.backends)


def eventually(cond, why: str, seconds: float = 10.0):
    deadline = time.monotonic() + seconds
    while not cond():
        assert time.monotonic() < deadline, why
        time.sleep(0.01)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def backends():
    servers = {name: Uvicorn(make_app(name)) for name in ("alpha", "beta")}
    yield {name: ("127.0.0.1", s.port) for name, s in servers.items()}
    for s in servers.values():
        s.close()


@pytest.fixture
def start_door():
    doors = []

    def start(router):
        door = FrontDoor(router)
        door.start()
        doors.append(door)
        return door

    yield start
    for door in doors:
        door.stop()


@pytest.fixture
def door(backends, start_door):
    return start_door(Router(dict(backends)))


def raw(door, data: bytes) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", door.port), timeout=10)
    s.sendall(data)
    return s


def read_all(s: socket.socket) -> bytes:
    out = b""
    while chunk := s.recv(65536):
        out += chunk
    s.close()
    return out


def read_response(s: socket.socket) -> tuple[bytes, dict]:
    """One response with a Content-Length body from a keep-alive socket: (status line, JSON body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += s.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length"))
    while len(body) < length:
        body += s.recv(65536)
    return head.split(b"\r\n")[0], json.loads(body)


def test_routes_by_label_and_strips_the_prefix(door):
    with httpx.Client(base_url=door.url, timeout=10) as client:
        seen = client.get("/alpha/some/path", params={"x": "1", "y": "a b"},
                          headers={"X-Forwarded-For": "10.1.2.3"}).json()
        assert seen["app"] == "alpha"
        assert seen["path"] == "/some/path"
        assert seen["query"] == "x=1&y=a+b"
        h = seen["headers"]
        assert h["x-forwarded-prefix"] == "/alpha"
        assert h["x-forwarded-proto"] == "http"
        assert h["x-forwarded-host"] == f"127.0.0.1:{door.port}"
        assert h["x-forwarded-for"] == "10.1.2.3, 127.0.0.1"
        assert client.get("/beta").json()["path"] == "/"
        bare = client.get("/beta?q=2").json()
        assert (bare["app"], bare["path"], bare["query"]) == ("beta", "/", "q=2")
    assert door.url == f"http://127.0.0.1:{door.port}"


def test_post_bodies_by_content_length_and_chunked(door):
    payload = os.urandom(1024 * 1024 + 7)
    with httpx.Client(base_url=door.url, timeout=10) as client:
        seen = client.post("/alpha/upload", content=payload).json()
        assert (seen["body_len"], seen["body_sha"]) == (len(payload), hashlib.sha256(payload).hexdigest())
        parts = [os.urandom(n) for n in (1, 70000, 3, 200000)]
        seen = client.post("/alpha/upload", content=iter(parts)).json()
        assert seen["headers"]["transfer-encoding"] == "chunked"
        assert seen["body_sha"] == hashlib.sha256(b"".join(parts)).hexdigest()


def test_chunked_body_with_extensions_and_trailers_then_next_request(door):
    body = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
    s = raw(door, b"POST /alpha/c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + body)
    status, seen = read_response(s)
    assert status == b"HTTP/1.1 200 OK" and seen["body_sha"] == hashlib.sha256(b"hello world").hexdigest()
    s.sendall(b"GET /alpha/after HTTP/1.1\r\nHost: x\r\n\r\n")
    assert read_response(s)[1]["path"] == "/after"
    s.close()


def test_keep_alive_reuses_one_backend_connection(backends, start_door):
    router = Router(dict(backends))
    door = start_door(router)
    conn = http.client.HTTPConnection("127.0.0.1", door.port, timeout=10)
    ports = set()
    for i in range(5):
        conn.request("GET", f"/alpha/n{i}")
        seen = json.loads(conn.getresponse().read())
        assert seen["path"] == f"/n{i}"
        ports.add(seen["client_port"])
    assert len(ports) == 1  # the backend saw one connection
    assert (router.acquired, router.released) == (1, 0)
    conn.close()
    eventually(lambda: router.released == 1, "closing the client connection did not release its backend")


def test_two_labels_on_one_client_connection(backends, start_door):
    router = Router(dict(backends))
    door = start_door(router)
    before = socket_inodes()
    conn = http.client.HTTPConnection("127.0.0.1", door.port, timeout=10)
    apps = []
    for label in ("alpha", "beta", "beta", "alpha"):
        conn.request("GET", f"/{label}/x")
        apps.append(json.loads(conn.getresponse().read())["app"])
    assert apps == ["alpha", "beta", "beta", "alpha"]
    assert (router.acquired, router.released) == (3, 2)
    conn.close()
    eventually(lambda: router.released == 3, "the last backend was not released")
    eventually(lambda: socket_inodes() <= before, "backend connections were left open")


def test_streaming_chunks_arrive_before_the_response_ends(door):
    token, gate = gates(3)
    with httpx.Client(timeout=10) as client, client.stream("GET", f"{door.url}/alpha/stream?{token}") as resp:
        lines = resp.iter_lines()
        for i in range(3):
            assert next(lines) == f"part {i}"
            assert not gate[i].is_set()  # the response cannot have ended: the app waits for this gate
            gate[i].set()
        assert next(lines) == "done"


def test_server_sent_events(door):
    token, gate = gates(3)
    with httpx.Client(timeout=10) as client, client.stream("GET", f"{door.url}/beta/sse?{token}") as resp:
        assert resp.headers["content-type"] == "text/event-stream"
        events = (line for line in resp.iter_lines() if line)
        for i in range(3):
            assert next(events) == f"data: {i}"
            gate[i].set()


def test_expect_100_continue_passes_through(door):
    s = raw(door, b"POST /alpha/up HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
    interim = b""
    while b"\r\n\r\n" not in interim:
        interim += s.recv(1024)
    assert interim.startswith(b"HTTP/1.1 100 Continue\r\n")
    s.sendall(b"hello")
    assert read_response(s)[1]["body_len"] == 5
    s.close()


def test_http_1_0_request(door):
    reply = read_all(raw(door, b"GET /alpha/old HTTP/1.0\r\n\r\n"))
    assert reply.startswith(b"HTTP/1.1 200") and json.loads(reply.partition(b"\r\n\r\n")[2])["path"] == "/old"


WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def ws_frame(opcode: int, payload: bytes, mask: bytes | None) -> bytes:
    n = len(payload)
    head = bytes([0x80 | opcode]) + (bytes([n | (0x80 if mask else 0)]) if n < 126 else
                                     bytes([126 | (0x80 if mask else 0)]) + struct.pack("!H", n))
    if mask:
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        head += mask
    return head + payload


async def ws_read(reader) -> tuple[int, bytes]:
    b1, b2 = await reader.readexactly(2)
    n = b2 & 0x7F
    if n == 126:
        n = struct.unpack("!H", await reader.readexactly(2))[0]
    mask = await reader.readexactly(4) if b2 & 0x80 else b"\0\0\0\0"
    return b1 & 0x0F, bytes(b ^ mask[i % 4] for i, b in enumerate(await reader.readexactly(n)))


def ws_echo_server(seen: list):
    async def handler(reader, writer):
        head = await reader.readuntil(b"\r\n\r\n")
        seen.append(head)
        key = next(line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")
                   if line.lower().startswith(b"sec-websocket-key"))
        accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")
        while True:
            opcode, payload = await ws_read(reader)
            writer.write(ws_frame(opcode, payload, None))
            if opcode == 8:
                await writer.drain()
                writer.close()
                return

    return RawServer(handler)


def test_websocket_echo_through_the_door(start_door):
    seen = []
    server = ws_echo_server(seen)
    try:
        door = start_door(Router({"ws": ("127.0.0.1", server.port)}))
        key = base64.b64encode(os.urandom(16))
        s = raw(door, b"GET /ws/chat HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                      b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + key + b"\r\n\r\n")
        reader = SocketReader(s)
        head = reader.until(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101")
        assert base64.b64encode(hashlib.sha1(key + WS_GUID).digest()) in head
        assert seen[0].startswith(b"GET /chat HTTP/1.1")
        for message in (b"hello", os.urandom(1000)):
            s.sendall(ws_frame(2, message, os.urandom(4)))
            assert asyncio.run(ws_read(reader)) == (2, message)
        s.sendall(ws_frame(8, b"\x03\xe8", os.urandom(4)))
        assert asyncio.run(ws_read(reader))[0] == 8
        assert s.recv(10) == b""  # the backend closed, so did the door
        s.close()
    finally:
        server.close()


class SocketReader:
    """Blocking reads from a socket with the readexactly() of an asyncio StreamReader."""

    def __init__(self, s):
        self.s, self.buf = s, b""

    def until(self, sep: bytes) -> bytes:
        while sep not in self.buf:
            self.buf += self.s.recv(65536)
        head, _, self.buf = self.buf.partition(sep)
        return head

    async def readexactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            self.buf += self.s.recv(65536)
        out, self.buf = self.buf[:n], self.buf[n:]
        return out


def test_unknown_label_and_no_label_are_404_listing_labels(door):
    with httpx.Client(base_url=door.url, timeout=10) as client:
        for path in ("/nope/x", "/"):
            resp = client.get(path)
            assert resp.status_code == 404
            assert f"{door.url}/alpha" in resp.text and f"{door.url}/beta" in resp.text
        assert "no web endpoint is labelled 'nope'" in client.get("/nope").text


def test_backend_down_is_502(start_door):
    port = free_port()
    door = start_door(Router({"gone": ("127.0.0.1", port)}))
    resp = httpx.get(f"{door.url}/gone/x", timeout=10)
    assert resp.status_code == 502
    assert f"gone: cannot connect to its container at 127.0.0.1:{port}" in resp.text


def test_backend_closing_without_an_answer_is_502(start_door):
    async def hang_up(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.close()

    server = RawServer(hang_up)
    try:
        door = start_door(Router({"rude": ("127.0.0.1", server.port)}))
        resp = httpx.get(f"{door.url}/rude/", timeout=10)
        assert resp.status_code == 502 and "closed the connection without answering" in resp.text
    finally:
        server.close()


def test_acquire_error_is_503_with_its_message(backends, start_door):
    door = start_door(Router(dict(backends), fail=ExecutionError("container for alpha exited with code 1")))
    resp = httpx.get(f"{door.url}/alpha/x", timeout=10)
    assert resp.status_code == 503
    assert resp.text.strip() == "alpha: container for alpha exited with code 1"


def test_broken_router_is_500_and_the_door_keeps_serving(backends, start_door):
    router = Router(dict(backends), fail=RuntimeError("bug"))
    door = start_door(router)
    resp = httpx.get(f"{door.url}/alpha/x", timeout=10)
    assert resp.status_code == 500 and "RuntimeError: bug" in resp.text
    router.fail = None
    assert httpx.get(f"{door.url}/alpha/x", timeout=10).json()["app"] == "alpha"


def test_request_waits_while_acquire_waits(backends, start_door):
    router = Router(dict(backends), delay=0.5)
    door = start_door(router)
    resp = httpx.get(f"{door.url}/beta/held", timeout=10)
    assert resp.status_code == 200 and resp.json()["path"] == "/held"
    assert router.acquired == 1


def test_malformed_and_oversized_heads(door):
    assert read_all(raw(door, b"NONSENSE\r\n\r\n")).startswith(b"HTTP/1.1 400 Bad Request")
    assert read_all(raw(door, b"GET http://x/alpha HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 400")
    assert read_all(raw(door, b"POST /alpha HTTP/1.1\r\nContent-Length: -3\r\n\r\n")).startswith(b"HTTP/1.1 400")
    huge = b"GET /alpha/ HTTP/1.1\r\nX-Big: " + b"a" * (70 * 1024) + b"\r\n\r\n"
    assert read_all(raw(door, huge)).startswith(b"HTTP/1.1 431")


def test_a_slow_backend_does_not_block_others(door):
    token, gate = gates(1)
    with httpx.Client(timeout=10) as slow_client, slow_client.stream("GET", f"{door.url}/alpha/slow?{token}") as slow:
        assert slow.status_code == 200
        for label in ("alpha", "beta"):  # answered while the slow one still waits for its gate
            assert httpx.get(f"{door.url}/{label}/fast", timeout=10).json()["app"] == label
        assert not gate[0].is_set()
        gate[0].set()
        assert slow.read() == b"done\n"


def test_many_concurrent_requests(backends, start_door):
    router = Router(dict(backends))
    door = start_door(router)
    errors = []

    def client(i: int):
        label = ("alpha", "beta")[i % 2]
        conn = http.client.HTTPConnection("127.0.0.1", door.port, timeout=20)
        try:
            for j in range(10):
                conn.request("POST", f"/{label}/c{i}?j={j}", body=b"x" * j)
                seen = json.loads(conn.getresponse().read())
                if (seen["app"], seen["path"], seen["query"], seen["body_len"]) != (label, f"/c{i}", f"j={j}", j):
                    errors.append(seen)
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(repr(exc))
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == [] and not any(t.is_alive() for t in threads)
    assert router.acquired == 20
    eventually(lambda: router.released == 20, "backends were not all released")


def socket_inodes() -> set[str]:
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:"):
            out.add(target)
    return out


def test_stop_closes_everything(backends):
    before = socket_inodes()
    router = Router(dict(backends))
    door = FrontDoor(router)
    port = door.start()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/alpha/x")
    assert json.loads(conn.getresponse().read())["app"] == "alpha"
    door.stop()
    door.stop()  # idempotent
    assert conn.sock.recv(10) == b""  # the open client connection was closed
    conn.close()
    assert router.released == router.acquired == 1
    assert not [t for t in threading.enumerate() if t.name == "runner-frontdoor"]
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=10)
    eventually(lambda: socket_inodes() <= before, "sockets were left open after stop()")
    with pytest.raises(InvalidError, match="make a new FrontDoor"):
        door.start()


def test_bad_arguments():
    router = Router({})
    with pytest.raises(InvalidError, match="must be an IP address"):
        FrontDoor(router, host="localhost")
    with pytest.raises(InvalidError, match="port must be"):
        FrontDoor(router, port=70000)
    with pytest.raises(InvalidError, match="no URL before start"):
        _ = FrontDoor(router).url
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(InvalidError, match="cannot listen on 127.0.0.1"):
            FrontDoor(router, port=taken.getsockname()[1]).start()
