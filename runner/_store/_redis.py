"""The store on a Redis server: the managed one, or any the user names in RUNNER_STORE_URL.

Every operation that touches an object runs as one Lua script that first checks the object's
marker, so a deleted object reports `Gone` instead of being recreated by a late writer, and a
queue's capacity check and push are one atomic step. redis-py is imported only here and only when
the store is Redis (importing runner stays stdlib + cloudpickle); in a container without it, the
client's own copy is mounted read-only and used as a last resort. A managed server found stopped
mid-run is started again once, transparently.
"""

from __future__ import annotations

import asyncio
import os
import sys
import types
from collections.abc import Callable
from typing import Any

from ..exception import ExecutionError, InvalidError
from ._backend import URL_ENV, Backend, Gone, new_id
from ._server import ensure_server, ping, socket_path

DEPS_DIR = "/opt/runner-deps"  # where containers see the client's redis package
_P = "runner:"
_GONE = "RUNNER_GONE"
_GUARD = f"if redis.call('EXISTS', KEYS[1]) == 0 then return redis.error_reply('{_GONE}') end\n"
_LUA = {
    # KEYS: marker, data key; ARGV: command, args...: one command on the object's data, if it exists
    "guarded": _GUARD + "return redis.call(ARGV[1], KEYS[2], unpack(ARGV, 2))",
    "hpop": _GUARD + "local v = redis.call('HGET', KEYS[2], ARGV[1])\n"
    "if v then redis.call('HDEL', KEYS[2], ARGV[1]) end\nreturn v",
    "push": _GUARD + "if redis.call('LLEN', KEYS[2]) + #ARGV - 2 > tonumber(ARGV[1]) then return 0 end\n"
    "redis.call('RPUSH', KEYS[2], unpack(ARGV, 3))\nredis.call('EXPIRE', KEYS[2], ARGV[2])\nreturn 1",
    # KEYS: names hash, marker of the new id; ARGV: name, new id, kind, create
    "named": "local id = redis.call('HGET', KEYS[1], ARGV[1])\nif id then return id end\n"
    "if ARGV[4] == '0' then return false end\nredis.call('HSET', KEYS[1], ARGV[1], ARGV[2])\n"
    "redis.call('HSET', KEYS[2], 'kind', ARGV[3], 'name', ARGV[1])\nreturn ARGV[2]",
    # KEYS: marker, dict data; ARGV: id
    "drop": "local kind = redis.call('HGET', KEYS[1], 'kind')\nif not kind then return 0 end\n"
    "local name = redis.call('HGET', KEYS[1], 'name')\n"
    f"if name and redis.call('HGET', '{_P}names:' .. kind, name) == ARGV[1] then "
    f"redis.call('HDEL', '{_P}names:' .. kind, name) end\n"
    f"redis.call('SREM', '{_P}ephemeral', ARGV[1])\nredis.call('DEL', KEYS[1], KEYS[2])\nreturn 1",
}


def _import_redis():
    """redis-py: the user's own if importable, else (in a container) the client's, mounted by runner."""
    try:
        import redis
    except ImportError:
        if not os.path.isdir(os.path.join(DEPS_DIR, "redis")):
            raise InvalidError("the store is a Redis server, and reaching it needs the redis package: pip install redis") from None
        if DEPS_DIR not in sys.path:
            sys.path.append(DEPS_DIR)  # last: never shadows a package of the image
        if sys.version_info < (3, 11, 3) and "async_timeout" not in sys.modules:
            # redis-py imports async_timeout below Python 3.11.3 (its asyncio half, unused here).
            try:
                import async_timeout  # noqa: F401
            except ImportError:
                shim = types.ModuleType("async_timeout")
                shim.timeout = getattr(asyncio, "timeout", None)
                sys.modules["async_timeout"] = shim
        try:
            import redis
        except ImportError as exc:
            raise ExecutionError(f"the redis package mounted at {DEPS_DIR} cannot be imported here ({exc}); "
                                 "install redis in the image") from None
    return redis


class RedisBackend(Backend):
    def __init__(self, url: str, managed: bool):
        redis = _import_redis()
        self.url = url
        self._managed = managed
        self._r = redis.Redis.from_url(url, socket_timeout=30, socket_connect_timeout=5)
        self._down = (redis.ConnectionError, redis.TimeoutError)
        self._refused = redis.ResponseError
        self._lua = {name: self._r.register_script(src) for name, src in _LUA.items()}

    def _run(self, fn: Callable, *args, **kwargs):
        for attempt in (1, 2):
            try:
                return fn(*args, **kwargs)
            except self._refused as exc:
                if _GONE in str(exc):
                    raise Gone from None
                raise ExecutionError(f"the store at {self.url} refused a command: {exc}") from None
            except self._down as exc:
                if self._managed and attempt == 1 and ping(socket_path()) == "down":
                    ensure_server()  # stopped since we connected: start it again
                    continue
                hint = "`runner store status` shows it" if self._managed else f"check {URL_ENV}"
                raise ExecutionError(f"the store at {self.url} does not answer ({exc}); {hint}") from None

    def _script(self, name: str, keys: list[str], args: list) -> Any:
        return self._run(self._lua[name], keys=keys, args=args)

    def _on(self, oid: str, data_key: str, command: str, *args) -> Any:
        return self._script("guarded", [f"{_P}obj:{oid}", data_key], [command, *args])

    def lookup(self, kind, name, create):
        oid = new_id(kind)
        found = self._script("named", [f"{_P}names:{kind}", f"{_P}obj:{oid}"], [name, oid, kind, int(create)])
        return found.decode() if found else None

    def create_ephemeral(self, kind, owner):
        oid = new_id(kind)

        def create():  # a fresh pipeline on every attempt: a failed one is emptied
            pipe = self._r.pipeline(transaction=True)
            pipe.hset(f"{_P}obj:{oid}", mapping={"kind": kind, "owner": owner})
            pipe.sadd(f"{_P}ephemeral", oid)
            pipe.execute()

        self._run(create)
        return oid

    def drop(self, oid):
        existed = self._script("drop", [f"{_P}obj:{oid}", f"{_P}d:{oid}"], [oid])
        for key in self._run(lambda: list(self._r.scan_iter(match=f"{_P}q:{oid}:*", count=1000))):
            self._run(self._r.delete, key)  # no new partition can appear: the marker is gone
        return bool(existed)

    def owners(self):
        ids = sorted(i.decode() for i in self._run(self._r.smembers, f"{_P}ephemeral"))

        def read():
            pipe = self._r.pipeline(transaction=False)
            for oid in ids:
                pipe.hget(f"{_P}obj:{oid}", "owner")
            return pipe.execute()

        return [(oid, (o or b"").decode()) for oid, o in zip(ids, self._run(read))]

    def d_get(self, oid, key):
        return self._on(oid, f"{_P}d:{oid}", "HGET", key)

    def d_put(self, oid, items, only_new):
        if only_new:
            return bool(self._on(oid, f"{_P}d:{oid}", "HSETNX", *items[0]))
        for i in range(0, len(items), 1000):  # Lua takes a few thousand arguments at most
            self._on(oid, f"{_P}d:{oid}", "HSET", *[part for item in items[i:i + 1000] for part in item])
        return True

    def d_pop(self, oid, key):
        return self._script("hpop", [f"{_P}obj:{oid}", f"{_P}d:{oid}"], [key])

    def d_contains(self, oid, key):
        return bool(self._on(oid, f"{_P}d:{oid}", "HEXISTS", key))

    def d_len(self, oid):
        return int(self._on(oid, f"{_P}d:{oid}", "HLEN"))

    def d_scan(self, oid):
        self._on(oid, f"{_P}d:{oid}", "EXISTS")
        cursor, seen = 0, set()  # HSCAN may repeat a field while the hash grows
        while True:
            cursor, page = self._run(self._r.hscan, f"{_P}d:{oid}", cursor, count=500)
            for key, value in page.items():
                if key not in seen:
                    seen.add(key)
                    yield key, value
            if cursor == 0:
                return

    def d_clear(self, oid):
        self._on(oid, f"{_P}d:{oid}", "DEL")

    def _q(self, oid: str, part: bytes) -> bytes:
        return f"{_P}q:{oid}:".encode() + part

    def q_push(self, oid, part, values, ttl, limit):
        return bool(self._script("push", [f"{_P}obj:{oid}", self._q(oid, part)], [limit, ttl, *values]))

    def q_push_front(self, oid, part, values):
        self._on(oid, self._q(oid, part), "LPUSH", *reversed(values))

    def q_pop(self, oid, part, n, wait):
        key = self._q(oid, part)
        got = self._on(oid, key, "LPOP", n)
        if got or wait <= 0:
            return list(got or [])
        first = self._run(self._r.blpop, [key], timeout=max(wait, 0.01))  # 0 would mean forever
        if not first:
            return []
        rest = self._on(oid, key, "LPOP", n - 1) if n > 1 else None
        return [first[1], *(rest or [])]

    def _partitions(self, oid: str) -> list[bytes]:
        self._on(oid, f"{_P}obj:{oid}", "EXISTS")
        return self._run(lambda: list(self._r.scan_iter(match=f"{_P}q:{oid}:*", count=1000)))

    def q_len(self, oid, part):
        if part is not None:
            return int(self._on(oid, self._q(oid, part), "LLEN"))
        return sum(int(self._run(self._r.llen, key)) for key in self._partitions(oid))

    def q_range(self, oid, part, start, count):
        return list(self._on(oid, self._q(oid, part), "LRANGE", start, start + count - 1))

    def q_clear(self, oid, part):
        for key in [self._q(oid, part)] if part is not None else self._partitions(oid):
            self._on(oid, key, "DEL")
