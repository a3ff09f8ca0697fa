"""Connections to the SQLite file: one per thread, foreign keys on, and writes that wait their turn.

Every write runs in `BEGIN IMMEDIATE`, which takes the write lock up front; a deferred BEGIN that
later upgrades to a writer fails at once with "database is locked" under concurrent writers (FACTS).
Writer threads of one process first queue on a Python lock (a prompt hand-over, where SQLite's busy
handler would poll with sleeps); writers of other processes meet at SQLite's lock, where the busy
handler waits, and on top of it a retry loop with jittered backoff keeps waiting up to
`busy_seconds`, so callers never see SQLITE_BUSY, only a StoreError if the database stays locked
for that long.
"""

from __future__ import annotations

import contextlib
import logging
import random
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path

from sqlite_utils import Database

from .errors import StoreError
from .schema import MIGRATIONS

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 5_000  # SQLite's own wait for a lock, per statement
BUSY_SECONDS = 120.0  # our outer retry budget before a write gives up
SYNCHRONOUS = "FULL"  # fsync the WAL at every commit: an acknowledged vote survives power loss


def _is_busy(err: sqlite3.OperationalError) -> bool:
    text = str(err).lower()
    return "locked" in text or "busy" in text


class Connections:
    """Thread-local sqlite-utils Databases on one file."""

    def __init__(
        self,
        path: Path,
        *,
        synchronous: str = SYNCHRONOUS,
        busy_seconds: float = BUSY_SECONDS,
        busy_timeout_ms: int = BUSY_TIMEOUT_MS,
    ):
        if synchronous not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ValueError(f"synchronous must be OFF, NORMAL, FULL or EXTRA, not {synchronous!r}")
        self.path = Path(path)
        self.busy_timeout_ms = busy_timeout_ms
        self.synchronous = synchronous
        self.busy_seconds = busy_seconds
        self._local = threading.local()
        self._all: weakref.WeakSet[Database] = weakref.WeakSet()  # a finished thread's connection is freed
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()  # writers of this process queue here, not in SQLite's busy loop

    def _connect(self) -> Database:
        conn = sqlite3.connect(str(self.path), timeout=self.busy_timeout_ms / 1000, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_ms)}")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute(f"PRAGMA synchronous={self.synchronous}")
        db = Database(conn)
        with self._lock:
            self._all.add(db)
        return db

    @property
    def db(self) -> Database:
        """This thread's Database (created on first use)."""
        db = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = self._connect()
        return db

    @contextlib.contextmanager
    def write(self) -> Iterator[Database]:
        """One write transaction: BEGIN IMMEDIATE (retried while busy), COMMIT, or ROLLBACK on error.

        Nested use joins the outer transaction.
        """
        db = self.db
        conn = db.conn
        if conn.in_transaction:
            yield db
            return
        if not self._write_lock.acquire(timeout=self.busy_seconds):
            raise StoreError("The label database is busy with other writers; please try again in a moment.")
        try:
            self._begin_immediate(conn)
            try:
                yield db
                conn.commit()
            except BaseException:
                conn.rollback()
                raise
        finally:
            self._write_lock.release()

    def _begin_immediate(self, conn: sqlite3.Connection) -> None:
        deadline = time.monotonic() + self.busy_seconds
        delay = 0.002
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as err:
                if not _is_busy(err):
                    raise
                if time.monotonic() > deadline:
                    raise StoreError(
                        "The label database is busy with other writers; please try again in a moment."
                    ) from err
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 0.25)

    def migrate(self) -> None:
        """Apply pending migrations inside one BEGIN IMMEDIATE so that two openers cannot race."""
        db = self.db
        if db.journal_mode != "wal":
            db.enable_wal()
        with self.write():
            MIGRATIONS.apply(db)

    def close(self) -> None:
        """Close every connection this object opened (call once no thread uses the store)."""
        with self._lock:
            dbs, self._all = list(self._all), weakref.WeakSet()
        for db in dbs:
            db.conn.close()
        self._local = threading.local()
