"""The store behind `Dict` and `Queue`: one small set of primitives, on Redis or on SQLite.

Which store, by one rule whatever the provider: `RUNNER_STORE_URL` if set (`redis://host:port/db`,
`unix:///path/redis.sock?db=N`, `sqlite:///abs/path`); else a redis-server that runner manages
itself, when `redis-server` is on PATH; else a SQLite file under `RUNNER_HOME`. Both backends keep
the same semantics, so code never branches on the store.

The managed server is left running between programs, so named objects outlive a run, and is
reached only through a unix socket whose directory containers get bind-mounted (`_server`).

Every object is a marker (its kind, its name or its owner) plus its data. Operations check the
marker in the same atomic step (a Lua script on Redis, a transaction on SQLite), so a deleted
object reports `Gone` instead of being silently recreated by a late writer. Ephemeral objects
record their owner as `host:pid`; a client sweeps those whose owner on its host is dead when it
connects, so a killed program leaves nothing behind for long.

This module chooses the store and gives containers access to it; `_backend` is the interface
both stores implement, `_redis` and `_sqlite` the stores, `_server` the managed redis-server,
and `_objects` what Dict and Queue share.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import shutil
import urllib.parse
from typing import Any

from .._context import is_local
from .._home import subdir
from ..exception import ExecutionError, InvalidError, ProviderError
from ._backend import URL_ENV, WAIT_STEP, Backend
from ._objects import Ephemeral, StoreObject, dump_key, dump_value, load
from ._redis import DEPS_DIR, RedisBackend, _import_redis
from ._server import ensure_server, managed_state, managed_url, stop_managed_server
from ._sqlite import SqliteBackend

__all__ = ["URL_ENV", "WAIT_STEP", "Backend", "Ephemeral", "StoreObject", "container_access", "current", "dump_key",
           "dump_value", "load", "selected", "server_status", "stop_managed_server"]

CONTAINER_DIR = "/run/runner-store"  # where containers see the store's socket or SQLite directory


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


def server_status() -> dict[str, Any]:
    """What `runner store status` shows: the store in use and, for the managed server, its state."""
    url, managed = selected()
    if url.startswith("sqlite://"):
        return {"kind": "sqlite", "url": url, "path": url[len("sqlite://"):]}
    if not managed:
        return {"kind": "redis", "url": url}
    return {"kind": "managed redis", "url": url, **managed_state()}
