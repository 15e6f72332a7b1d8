"""The store in one SQLite file: what runs when no redis-server is installed or configured.

The same semantics as the Redis backend, from transactions instead of scripts: every operation on
an object checks its marker row in the same transaction, so a deleted object reports `Gone`.
Writers take the lock up front (BEGIN IMMEDIATE) so a read-then-write never deadlocks, and a
queue's expired partitions are dropped lazily, by the next operation on that queue.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time

from ..exception import ExecutionError
from ._backend import Backend, Gone, new_id

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
