"""Key names and entry encodings shared by the client and the worker (standard library only: the
worker imports this inside user images).

Every key of one function lives under `rq:f:{function key}:`; a caller's results under
`rq:out:{caller id}`; a spawned call's record under `rq:call:{call id}`.
"""

from __future__ import annotations

import pickle
import struct

GROUP = "workers"  # the one consumer group on every input stream
CALL_TTL = 24 * 3600  # seconds a spawned call's record (and result) is kept
CANCEL_TTL = 24 * 3600
REPLY_TTL = 120  # a caller's result stream expires unless its owner refreshes it
MAX_DELIVERIES = 5  # a worker died this many times holding an input: it is failed, not sent again
URL_ENV = "RUNNER_PLANE_URL"
FUNCTION_ENV = "RUNNER_PLANE_FUNCTION"
MODE_ENV = "RUNNER_WORKER_MODE"  # queue (default) | web
POD_URL_ENV, POD_PASSWORD_ENV = "RUNNER_QUEUE_URL", "RUNNER_QUEUE_PASSWORD"  # in a Kubernetes pod

# Statuses the plane adds to the agent's (runner._protocol): a chunk the worker could not finish
# as a whole (a timeout or a crash in one of its items); the caller runs its items one by one.
SPLIT = "split"
EXPIRED = "expired"  # not started before its deadline


def with_password(url: str, password: str) -> str:
    """`url` (redis://HOST:PORT/DB, rediss://..., unix:///PATH?db=N) authenticating with `password`."""
    import urllib.parse

    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "unix":  # (urlunsplit would drop the empty authority: unix:/path)
        return url + ("&" if parts.query else "?") + urllib.parse.urlencode({"password": password})
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parts._replace(netloc=f":{urllib.parse.quote(password, safe='')}@{host}"))


class Keys:
    """The Redis keys of one function."""

    __slots__ = ("cancel", "delayed", "ended", "fn", "inputs", "ready", "spec", "workers")

    def __init__(self, fn: str):
        self.fn = fn
        base = f"rq:f:{fn}:"
        self.spec = base + "spec"  # hash: spec, blobs, retries, lease
        self.inputs = base + "in"  # stream of inputs, consumer group GROUP
        self.delayed = base + "delayed"  # zset: retries waiting for their delay, scored by due time
        self.cancel = base + "cancel"  # hash: input id -> "soft" | "hard"
        self.workers = base + "workers"  # hash: consumer name -> last heartbeat (wall clock)
        self.ready = base + "ready"  # hash: pod name -> time its web server came up (mode "web")
        self.ended = base + "ended"  # set once the function's run ended: late workers exit


def reply_key(caller: str) -> str:
    return f"rq:out:{caller}"


def call_key(call_id: str) -> str:
    return f"rq:call:{call_id}"


def call_done_key(call_id: str) -> str:
    return f"rq:call:{call_id}:done"


# An input entry: fields h (header) and b (the args blob, as runner._serialization makes it).
# Header: (input id, reply key, method, kind, weight, retries used, store, enqueued at, deadline)
def input_header(input_id: str, reply: str, method: str | None, kind: str, weight: int, retries: int, store: bool,
                 enqueued: float, deadline: float | None) -> bytes:
    return pickle.dumps((input_id, reply, method, kind, weight, retries, store, enqueued, deadline), protocol=5)


# An output entry on a reply stream: fields h and b (the result, exception or chunk outcomes).
# Header: (input id, status, traceback, generator item number, seconds per item on the worker)
def output_header(input_id: str, status: str, tb: str | None, seq: int, per_item: float) -> bytes:
    return pickle.dumps((input_id, status, tb, seq, per_item), protocol=5)


_LEN = struct.Struct("!I")


def pack(header: bytes, blob: bytes) -> bytes:
    """One value holding a header and a blob (a zset member, a stored result): Lua can split it."""
    return b"%08x" % len(header) + header + blob


def unpack(value: bytes) -> tuple[bytes, bytes]:
    n = int(value[:8], 16)
    return value[8 : 8 + n], value[8 + n :]


# KEYS: delayed zset, input stream; ARGV: now, max: move due retries to the stream, atomically.
PROMOTE_LUA = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, m in ipairs(due) do
  local n = tonumber(string.sub(m, 1, 8), 16)
  redis.call('XADD', KEYS[2], '*', 'h', string.sub(m, 9, 8 + n), 'b', string.sub(m, 9 + n))
  redis.call('ZREM', KEYS[1], m)
end
return #due
"""
