"""The store behind `Dict` and `Queue`: one small set of primitives, on Redis or on SQLite.

Which store, by one rule whatever the provider: `RUNNER_STORE_URL` if set (`redis://host:port/db`,
`unix:///path/redis.sock?db=N`, `sqlite:///abs/path`); else a redis-server that runner manages
itself, when `redis-server` is on PATH; else a SQLite file under `RUNNER_HOME`. Both backends keep
the same semantics, so code never branches on the store.

The managed server is started by the first client that needs it and then left running, so named
objects outlive a run (it writes an append-only file, so they outlive the server too). It listens
only on a unix socket in a directory of its own: containers get that directory bind-mounted and
reach nothing else of the host. Two clients starting it at once serialize on a lock file; a
socket or pidfile left by a crashed server is cleaned up by the next start.

Every object is a marker (its kind, its name or its owner) plus its data. Operations check the
marker in the same atomic step (a Lua script on Redis, a transaction on SQLite), so a deleted
object reports `Gone` instead of being silently recreated by a late writer. Ephemeral objects
record their owner as `host:pid`; a client sweeps those whose owner on its host is dead when it
connects, so a killed program leaves nothing behind for long.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import fcntl
import functools
import io
import ipaddress
import os
import pickle
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import types
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any

import cloudpickle

from ._aio import _Aio
from ._context import is_local, pid_alive
from ._home import subdir
from .exception import DeserializationError, ExecutionError, InvalidError, NotFoundError, ProviderError

URL_ENV = "RUNNER_STORE_URL"
CONTAINER_DIR = "/run/runner-store"  # where containers see the store's socket or SQLite directory
DEPS_DIR = "/opt/runner-deps"  # where containers see the client's redis package
START_TIMEOUT = 15.0
_WAIT_STEP = 1.0  # the longest single wait of a blocking pop, so Ctrl-C and cancellation act quickly


class Gone(Exception):
    """The object was deleted (or swept) after this handle found it."""


# ---- the primitives ----------------------------------------------------------------------------
class Backend(abc.ABC):
    """What Dict and Queue are built on. Keys and values are bytes; `oid` is an object id.
    Every method taking an `oid` raises `Gone` when that object no longer exists."""

    url: str

    @abc.abstractmethod
    def lookup(self, kind: str, name: str, create: bool) -> str | None:
        """The id of the named object, created atomically if asked; None if missing."""

    @abc.abstractmethod
    def create_ephemeral(self, kind: str, owner: str) -> str: ...

    @abc.abstractmethod
    def drop(self, oid: str) -> bool:
        """Delete the object and its data; False if it did not exist."""

    @abc.abstractmethod
    def owners(self) -> list[tuple[str, str]]:
        """(id, owner) of every ephemeral object."""

    @abc.abstractmethod
    def d_get(self, oid: str, key: bytes) -> bytes | None: ...

    @abc.abstractmethod
    def d_put(self, oid: str, items: list[tuple[bytes, bytes]], only_new: bool) -> bool:
        """Store the items; with only_new (one item), only if the key is absent; True if stored."""

    @abc.abstractmethod
    def d_pop(self, oid: str, key: bytes) -> bytes | None: ...

    @abc.abstractmethod
    def d_contains(self, oid: str, key: bytes) -> bool: ...

    @abc.abstractmethod
    def d_len(self, oid: str) -> int: ...

    @abc.abstractmethod
    def d_scan(self, oid: str) -> Iterator[tuple[bytes, bytes]]:
        """Every item once, in no particular order."""

    @abc.abstractmethod
    def d_clear(self, oid: str) -> None: ...

    @abc.abstractmethod
    def q_push(self, oid: str, part: bytes, values: list[bytes], ttl: int, limit: int) -> bool:
        """Append to the partition unless it would then hold more than `limit`; renew its ttl."""

    @abc.abstractmethod
    def q_push_front(self, oid: str, part: bytes, values: list[bytes]) -> None:
        """Put values back at the head, in their order (what a cancelled get had taken)."""

    @abc.abstractmethod
    def q_pop(self, oid: str, part: bytes, n: int, wait: float) -> list[bytes]:
        """Take up to n values from the head, waiting at most `wait` (<= 1s) for the first."""

    @abc.abstractmethod
    def q_len(self, oid: str, part: bytes | None) -> int:
        """Values in the partition; in all partitions when `part` is None."""

    @abc.abstractmethod
    def q_range(self, oid: str, part: bytes, start: int, count: int) -> list[bytes]: ...

    @abc.abstractmethod
    def q_clear(self, oid: str, part: bytes | None) -> None:
        """Empty the partition; every partition when `part` is None."""

    def sweep(self) -> None:
        """Delete the ephemeral objects whose owning process on this host has ended."""
        host = socket.gethostname()
        for oid, owner in self.owners():
            owner_host, _, pid = owner.rpartition(":")
            if owner_host == host and pid.isdigit() and not pid_alive(int(pid)):
                self.drop(oid)


def new_id(kind: str) -> str:
    return f"{kind[:2]}-{secrets.token_hex(11)}"


def owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


# ---- Redis ------------------------------------------------------------------------------------
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
                if self._managed and attempt == 1 and _ping(socket_path()) == "down":
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


# ---- SQLite -----------------------------------------------------------------------------------
_SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (id TEXT PRIMARY KEY, kind TEXT NOT NULL, name TEXT, owner TEXT);
CREATE UNIQUE INDEX IF NOT EXISTS objects_by_name ON objects (kind, name) WHERE name IS NOT NULL;
CREATE TABLE IF NOT EXISTS dict_items (obj TEXT, key BLOB, value BLOB, PRIMARY KEY (obj, key)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS queue_items (obj TEXT, part BLOB, seq INTEGER, value BLOB,
                                        PRIMARY KEY (obj, part, seq)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS queue_parts (obj TEXT, part BLOB, expires REAL, PRIMARY KEY (obj, part)) WITHOUT ROWID;
"""


class SqliteBackend(Backend):
    """One file, shared safely by processes on the host and in containers that bind its directory
    (WAL, and a busy timeout so writers queue rather than fail). A blocking pop polls."""

    def __init__(self, path: str):
        self.url = f"sqlite://{path}"
        self.path = path
        self._local = threading.local()  # a connection per thread: sqlite3 connections are not shared
        with self._tx(None, write=True) as db:
            for statement in filter(str.strip, _SCHEMA.split(";")):
                db.execute(statement)

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            db.execute("PRAGMA busy_timeout = 30000")
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = NORMAL")
            self._local.db = db
        return db

    @contextlib.contextmanager
    def _tx(self, oid: str | None, write: bool = False, expire: bool = False):
        try:
            db = self._db()
            db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                if oid is not None and db.execute("SELECT 1 FROM objects WHERE id = ?", (oid,)).fetchone() is None:
                    raise Gone
                if expire:  # a queue's partitions past their ttl go first
                    now = time.time()
                    db.execute("DELETE FROM queue_items WHERE obj = ? AND part IN "
                               "(SELECT part FROM queue_parts WHERE obj = ? AND expires < ?)", (oid, oid, now))
                    db.execute("DELETE FROM queue_parts WHERE obj = ? AND expires < ?", (oid, now))
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise ExecutionError(f"the store at {self.path} failed: {exc}") from None

    def lookup(self, kind, name, create):
        with self._tx(None, write=create) as db:
            row = db.execute("SELECT id FROM objects WHERE kind = ? AND name = ?", (kind, name)).fetchone()
            if row or not create:
                return row[0] if row else None
            oid = new_id(kind)
            db.execute("INSERT INTO objects (id, kind, name) VALUES (?, ?, ?)", (oid, kind, name))
            return oid

    def create_ephemeral(self, kind, owner):
        oid = new_id(kind)
        with self._tx(None, write=True) as db:
            db.execute("INSERT INTO objects (id, kind, owner) VALUES (?, ?, ?)", (oid, kind, owner))
        return oid

    def drop(self, oid):
        with self._tx(None, write=True) as db:
            existed = db.execute("DELETE FROM objects WHERE id = ?", (oid,)).rowcount
            for table in ("dict_items", "queue_items", "queue_parts"):
                db.execute(f"DELETE FROM {table} WHERE obj = ?", (oid,))
        return bool(existed)

    def owners(self):
        with self._tx(None) as db:
            return db.execute("SELECT id, owner FROM objects WHERE owner IS NOT NULL").fetchall()

    def d_get(self, oid, key):
        with self._tx(oid) as db:
            row = db.execute("SELECT value FROM dict_items WHERE obj = ? AND key = ?", (oid, key)).fetchone()
        return row[0] if row else None

    def d_put(self, oid, items, only_new):
        with self._tx(oid, write=True) as db:
            if only_new:
                return db.execute("INSERT OR IGNORE INTO dict_items VALUES (?, ?, ?)", (oid, *items[0])).rowcount == 1
            db.executemany("INSERT OR REPLACE INTO dict_items VALUES (?, ?, ?)", [(oid, k, v) for k, v in items])
        return True

    def d_pop(self, oid, key):
        with self._tx(oid, write=True) as db:
            row = db.execute("DELETE FROM dict_items WHERE obj = ? AND key = ? RETURNING value", (oid, key)).fetchone()
        return row[0] if row else None

    def d_contains(self, oid, key):
        return self.d_get(oid, key) is not None

    def d_len(self, oid):
        with self._tx(oid) as db:
            return db.execute("SELECT COUNT(*) FROM dict_items WHERE obj = ?", (oid,)).fetchone()[0]

    def d_scan(self, oid):
        last = b""  # pages in key order: nothing repeats, however the dict changes meanwhile
        while True:
            with self._tx(oid) as db:
                page = db.execute("SELECT key, value FROM dict_items WHERE obj = ? AND key > ? ORDER BY key LIMIT 500",
                                  (oid, last)).fetchall()
            yield from page
            if len(page) < 500:
                return
            last = page[-1][0]

    def d_clear(self, oid):
        with self._tx(oid, write=True) as db:
            db.execute("DELETE FROM dict_items WHERE obj = ?", (oid,))

    def q_push(self, oid, part, values, ttl, limit):
        with self._tx(oid, write=True, expire=True) as db:
            count, top = db.execute("SELECT COUNT(*), COALESCE(MAX(seq), 0) FROM queue_items WHERE obj = ? AND part = ?",
                                    (oid, part)).fetchone()
            if count + len(values) > limit:
                return False
            db.executemany("INSERT INTO queue_items VALUES (?, ?, ?, ?)",
                           [(oid, part, top + i + 1, v) for i, v in enumerate(values)])
            db.execute("INSERT OR REPLACE INTO queue_parts VALUES (?, ?, ?)", (oid, part, time.time() + ttl))
        return True

    def q_push_front(self, oid, part, values):
        with self._tx(oid, write=True, expire=True) as db:
            low = db.execute("SELECT COALESCE(MIN(seq), 1) FROM queue_items WHERE obj = ? AND part = ?",
                             (oid, part)).fetchone()[0]
            db.executemany("INSERT INTO queue_items VALUES (?, ?, ?, ?)",
                           [(oid, part, low - len(values) + i, v) for i, v in enumerate(values)])

    def q_pop(self, oid, part, n, wait):
        deadline, delay = time.monotonic() + wait, 0.005
        while True:
            rows = []
            with self._tx(oid) as db:  # a read first: waiting consumers do not queue for the write lock
                ready = db.execute("SELECT 1 FROM queue_items WHERE obj = ? AND part = ? LIMIT 1", (oid, part)).fetchone()
            if ready:
                with self._tx(oid, write=True, expire=True) as db:
                    rows = db.execute("DELETE FROM queue_items WHERE obj = ? AND part = ? AND seq IN (SELECT seq FROM "
                                      "queue_items WHERE obj = ? AND part = ? ORDER BY seq LIMIT ?) RETURNING seq, value",
                                      (oid, part, oid, part, n)).fetchall()
            left = deadline - time.monotonic()
            if rows or left <= 0:
                return [value for _, value in sorted(rows)]
            time.sleep(min(delay, left))
            delay = min(delay * 2, 0.1)

    def q_len(self, oid, part):
        with self._tx(oid, write=True, expire=True) as db:
            if part is None:
                return db.execute("SELECT COUNT(*) FROM queue_items WHERE obj = ?", (oid,)).fetchone()[0]
            return db.execute("SELECT COUNT(*) FROM queue_items WHERE obj = ? AND part = ?", (oid, part)).fetchone()[0]

    def q_range(self, oid, part, start, count):
        with self._tx(oid, write=True, expire=True) as db:
            return [row[0] for row in db.execute(
                "SELECT value FROM queue_items WHERE obj = ? AND part = ? ORDER BY seq LIMIT ? OFFSET ?",
                (oid, part, count, start))]

    def q_clear(self, oid, part):
        where, args = ("obj = ?", (oid,)) if part is None else ("obj = ? AND part = ?", (oid, part))
        with self._tx(oid, write=True) as db:
            db.execute(f"DELETE FROM queue_items WHERE {where}", args)
            db.execute(f"DELETE FROM queue_parts WHERE {where}", args)


# ---- choosing the store -----------------------------------------------------------------------
def socket_path() -> str:
    subdir("store")  # first, so it is made owner-only too (parents made on the way are not)
    return str(subdir("store", "sock") / "redis.sock")


def managed_url() -> str:
    return f"unix://{socket_path()}?db=0"


def selected() -> tuple[str, bool]:
    """(URL of the store in use, whether it is the server runner manages)."""
    url = os.environ.get(URL_ENV)
    if not url and not is_local():
        raise ExecutionError(f"this container was started without the store's address ({URL_ENV}); "
                             "the provider passes it to every container it starts")
    if not url:
        if shutil.which("redis-server"):
            return managed_url(), True
        url = f"sqlite://{subdir('store') / 'store.sqlite3'}"
    return url, is_local() and url.startswith("unix://") and url == managed_url()


def current() -> Backend:
    """The backend for the selected store, connected once per process."""
    url, managed = selected()
    return _connect(url, managed, os.getpid())


@functools.cache
def _connect(url: str, managed: bool, pid: int) -> Backend:
    scheme = url.partition("://")[0]
    if scheme == "sqlite":
        path = url[len("sqlite://"):]
        if not os.path.isabs(path):
            raise InvalidError(f"{URL_ENV}={url}: a SQLite store needs an absolute path, as in sqlite:///abs/store.sqlite3")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        backend: Backend = SqliteBackend(path)
    elif scheme in ("redis", "rediss", "unix"):
        if managed:
            ensure_server()
        backend = RedisBackend(url, managed)
    else:
        raise InvalidError(f"{URL_ENV}={url} is not a store URL; use redis://host:port/db, "
                           "unix:///path/redis.sock?db=N or sqlite:///abs/path")
    backend.sweep()
    return backend


def container_access(provider_name: str) -> tuple[dict[str, str], list[tuple[str, str, bool]]]:
    """The env and (host path, container path, read-only) binds a container needs to reach the store."""
    url, managed = selected()
    if managed:
        ensure_server()
    if provider_name == "embedded":  # containers are host processes: the same URL works
        return {URL_ENV: url}, []
    if provider_name != "docker":
        raise InvalidError(f"no store access is defined for the {provider_name!r} provider")
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme == "sqlite":
        path = url[len("sqlite://"):]
        return {URL_ENV: f"sqlite://{CONTAINER_DIR}/{os.path.basename(path)}"}, [(os.path.dirname(path), CONTAINER_DIR, False)]
    redis = _import_redis()
    deps = [(os.path.dirname(os.path.abspath(redis.__file__)), f"{DEPS_DIR}/redis", True)]
    if parsed.scheme == "unix":
        inside = f"unix://{CONTAINER_DIR}/{os.path.basename(parsed.path)}" + (f"?{parsed.query}" if parsed.query else "")
        return {URL_ENV: inside}, [(os.path.dirname(parsed.path), CONTAINER_DIR, False), *deps]
    if _loopback(parsed.hostname):
        raise ProviderError(f"{URL_ENV}={url} points at this host's loopback, which Docker containers cannot reach; "
                            "use a unix socket URL (unix:///path/redis.sock?db=0) or an address the containers can reach")
    return {URL_ENV: url}, deps


def _loopback(host: str | None) -> bool:
    try:
        return host in (None, "", "localhost") or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# ---- the managed redis-server -------------------------------------------------------------------
@contextlib.contextmanager
def _server_lock():
    """Held while the managed server is started or stopped, by any process of this RUNNER_HOME."""
    with open(subdir("store") / "server.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _ping(sock: str) -> str:
    """'up', 'loading' (answering, still reading its data) or 'down'."""
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(2)
            s.connect(sock)
            s.sendall(b"PING\r\n")
            reply = s.recv(64)
    except OSError:
        return "down"
    return "up" if reply.startswith(b"+PONG") else "loading" if reply.startswith(b"-LOADING") else "down"


def _paths() -> dict[str, str]:
    data = subdir("store")
    return {"dir": str(data), "sock": socket_path(), "pid": str(data / "redis.pid"), "log": str(data / "redis.log")}


def _server_pid() -> int | None:
    """The pid in the pidfile, if that process is alive and is a redis-server."""
    try:
        with open(_paths()["pid"]) as f:
            pid = int(f.read().strip())
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return pid if b"redis-server" in f.read() else None
    except (OSError, ValueError):
        return None


def ensure_server() -> str:
    """Start the managed redis-server unless it answers; return its URL."""
    paths = _paths()
    if _ping(paths["sock"]) == "up":
        return managed_url()
    if len(paths["sock"].encode()) > 100:
        raise InvalidError(f"the store's socket path {paths['sock']} is too long for a unix socket; "
                           "set RUNNER_HOME to a shorter directory")
    exe = shutil.which("redis-server")
    if not exe:
        raise NotFoundError(f"redis-server is not on PATH; install it, or set {URL_ENV}")
    with _server_lock():  # one starter at a time; the others find it up
        if _server_pid() is None and _ping(paths["sock"]) == "down":
            for stale in (paths["sock"], paths["pid"]):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(stale)
            proc = subprocess.run(
                [exe, "--port", "0", "--unixsocket", paths["sock"], "--unixsocketperm", "770", "--daemonize", "yes",
                 "--pidfile", paths["pid"], "--dir", paths["dir"], "--logfile", paths["log"], "--appendonly", "yes",
                 "--save", ""],
                stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=START_TIMEOUT)
            if proc.returncode != 0:
                raise ExecutionError(f"redis-server did not start: {(proc.stderr or proc.stdout).strip()[-500:]}")
        deadline = time.monotonic() + START_TIMEOUT
        while _ping(paths["sock"]) != "up":
            if time.monotonic() > deadline:
                raise ExecutionError(f"the store's redis-server did not answer within {START_TIMEOUT:g}s; "
                                     f"its log {paths['log']} ends:\n{_tail(paths['log'])}")
            time.sleep(0.02)
    return managed_url()


def stop_managed_server() -> int | None:
    """Stop the managed server (its data stays on disk); the pid it had, or None if none ran."""
    paths = _paths()
    with _server_lock():
        pid = _server_pid()
        if pid is None and _ping(paths["sock"]) == "down":
            return None
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as s:
            s.settimeout(10)
            s.connect(paths["sock"])
            s.sendall(b"SHUTDOWN\r\n")  # writes the append-only file out, then exits
            s.recv(64)
        deadline = time.monotonic() + 10
        while pid is not None and _server_pid() == pid:
            if time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                deadline = float("inf")
            time.sleep(0.02)
        for leftover in (paths["sock"], paths["pid"]):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(leftover)
        return pid


def server_status() -> dict[str, Any]:
    """What `runner store status` shows: the store in use and, for the managed server, its state."""
    url, managed = selected()
    if url.startswith("sqlite://"):
        return {"kind": "sqlite", "url": url, "path": url[len("sqlite://"):]}
    if not managed:
        return {"kind": "redis", "url": url}
    paths = _paths()
    return {"kind": "managed redis", "url": url, "running": _ping(paths["sock"]) == "up", "pid": _server_pid(),
            "data": paths["dir"], "log": paths["log"]}


def _tail(path: str, lines: int = 20) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return "(no log)"


# ---- what Dict and Queue share ------------------------------------------------------------------
_KEY_TYPES = (str, bytes, int, float, bool, type(None))
_PLAIN = "store plain data (numbers, strings, bytes, lists, dicts, dataclasses), not locks, sockets, open files or clients"


def _plain_key(key: Any) -> bool:
    return isinstance(key, _KEY_TYPES) or isinstance(key, tuple) and all(map(_plain_key, key))


def dump_key(key: Any, what: str) -> bytes:
    """A deterministic encoding, so equal keys are equal bytes in every process (a set's order, or
    an object's pickle, could differ between processes: such keys are refused)."""
    if not _plain_key(key):
        raise InvalidError(f"{what} key of type {type(key).__name__} is not supported; "
                           "use str, bytes, int, float, bool, None or tuples of them")
    buf = io.BytesIO()
    pickler = pickle.Pickler(buf, protocol=4)
    pickler.fast = True  # no memo: the bytes depend on the value only, not on object identity
    pickler.dump(key)
    return buf.getvalue()


def dump_value(value: Any, what: str) -> bytes:
    try:
        return cloudpickle.dumps(value)
    except Exception as exc:  # noqa: BLE001 - name the culprit, never a raw PicklingError
        raise InvalidError(f"{what} of type {type(value).__name__} cannot be serialized "
                           f"({type(exc).__name__}: {exc}); {_PLAIN}") from None


def load(blob: bytes, what: str) -> Any:
    try:
        return cloudpickle.loads(blob)
    except Exception as exc:  # noqa: BLE001
        raise DeserializationError(f"{what} cannot be deserialized here: {type(exc).__name__}: {exc}") from None


class twin:
    """A method with an `.aio` form that is another method of the object (named `aio`)."""

    def __init__(self, aio: str):
        self.aio = aio

    def __call__(self, fn: Callable) -> twin:
        self.fn = fn
        self.__doc__ = fn.__doc__
        return self

    def __get__(self, obj: Any, owner: type | None = None):
        if obj is None:
            return self
        return _Aio(self.fn.__get__(obj, owner), getattr(obj, self.aio))


async def iterate_in_thread(it: Iterator) -> Any:
    """An async iterator over a blocking one, each step taken in a worker thread."""
    done = object()
    while (item := await asyncio.to_thread(next, it, done)) is not done:
        yield item


class Ephemeral:
    """`with X.ephemeral() as x:` (or `async with`): a new anonymous object, deleted on exit."""

    def __init__(self, cls: type, fill: Callable[[Any], None] | None = None):
        self._cls, self._fill, self._obj = cls, fill, None

    def __enter__(self):
        backend = current()
        self._obj = self._cls._bind(backend, backend.create_ephemeral(self._cls._kind, owner()))
        if self._fill:
            try:
                self._fill(self._obj)
            except BaseException:
                backend.drop(self._obj._resolved[1])
                raise
        return self._obj

    def __exit__(self, *exc_info) -> None:
        backend, oid = self._obj._resolved
        backend.drop(oid)

    async def __aenter__(self):
        return await asyncio.to_thread(self.__enter__)

    async def __aexit__(self, *exc_info) -> None:
        await asyncio.to_thread(self.__exit__, *exc_info)


class StoreObject:
    """A handle on a Dict or Queue of the store: found by name lazily, on first use, as in Modal
    (so `Dict.from_name` at module level connects to nothing at import), or bound to an ephemeral
    object's id. Pickles as that reference, so a container gets a handle on the same object."""

    _kind = ""  # "dict" or "queue"

    def __init__(self, *args, **kwargs):
        kind = type(self).__name__
        raise InvalidError(f"{kind}() does not make one: use {kind}.from_name(name, create_if_missing=True), "
                           f"or `with {kind}.ephemeral() as x:`")

    @classmethod
    def _make(cls, name: str | None, create: bool, object_id: str | None):
        obj = cls.__new__(cls)
        obj._name, obj._create, obj._id = name, create, object_id
        obj._resolved = None
        return obj

    @classmethod
    def from_name(cls, name: str, *, create_if_missing: bool = False):
        """A handle on the named object; the store is first asked when the handle is first used."""
        return cls._make(check_name(cls, name), bool(create_if_missing), None)

    @classmethod
    def _bind(cls, backend: Backend, oid: str):
        obj = cls._make(None, False, oid)
        obj._resolved = (backend, oid)
        return obj

    def _target(self) -> tuple[Backend, str]:
        backend = current()
        resolved = self._resolved
        if resolved is not None and resolved[0] is backend:
            return resolved
        oid = self._id or backend.lookup(self._kind, self._name, self._create)
        if oid is None:
            kind = type(self).__name__
            raise NotFoundError(f"{kind} {self._name!r} not found; create it with "
                                f"{kind}.from_name({self._name!r}, create_if_missing=True)")
        self._resolved = (backend, oid)
        return self._resolved

    def _do(self, op: str, *args) -> Any:
        backend, oid = self._target()
        try:
            return getattr(backend, op)(oid, *args)
        except Gone:
            raise self._gone() from None

    def _each(self, op: str, *args) -> Iterator:
        backend, oid = self._target()
        try:
            yield from getattr(backend, op)(oid, *args)
        except Gone:
            raise self._gone() from None

    def _gone(self) -> NotFoundError:
        why = "it was deleted" if self._name else "it was deleted, or the program that created it ended"
        return NotFoundError(f"{self!r} no longer exists: {why}")

    @property
    def name(self) -> str | None:
        return self._name

    @property
    def object_id(self) -> str:
        return self._target()[1]

    def __repr__(self) -> str:
        kind = type(self).__name__
        return f"{kind}.from_name({self._name!r})" if self._name else f"{kind}(ephemeral {self._id})"

    def __reduce__(self):
        return type(self)._make, (self._name, self._create, self._id)

    @classmethod
    def _delete(cls, name: str, allow_missing: bool) -> None:
        backend = current()
        oid = backend.lookup(cls._kind, check_name(cls, name), False)
        if (oid is None or not backend.drop(oid)) and not allow_missing:
            raise NotFoundError(f"{cls.__name__} {name!r} not found, so there is nothing to delete")


def check_name(cls: type, name: Any) -> str:
    ok = isinstance(name, str) and 0 < len(name) <= 64 and all(c.isascii() and (c.isalnum() or c in "-_.") for c in name)
    if not ok:
        raise InvalidError(f"invalid {cls.__name__} name {name!r}: use 1 to 64 letters, digits, dashes, "
                           "periods and underscores")
    return name
