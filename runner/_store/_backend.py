"""The primitives Dict and Queue are built on: one interface, which each store implements whole.

Dict and Queue (`_objects.py`) call only these methods, so they never branch on the store; the
Redis and SQLite backends (`_redis.py`, `_sqlite.py`) each give them the same semantics. Keys and
values are bytes here: encoding and decoding user data is the objects' concern, not the store's.
What both backends need besides (object ids, the owner of an ephemeral object, sweeping the
objects of dead owners) lives here once.
"""

from __future__ import annotations

import abc
import os
import secrets
import socket
from collections.abc import Iterator

from .._context import pid_alive

URL_ENV = "RUNNER_STORE_URL"
WAIT_STEP = 1.0  # the longest single wait of a blocking pop, so Ctrl-C and cancellation act quickly


class Gone(Exception):
    """The object was deleted (or swept) after this handle found it."""


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
