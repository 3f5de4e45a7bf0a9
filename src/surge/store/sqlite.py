"""The registry in one SQLite file: the embedded default, shared by a server's worker processes."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from surge.core.errors import SurgeError
from surge.store.sql import SqlRegistryStore

T = TypeVar("T")

# How long a writer waits for another process's transaction before giving up. Admin
# changes are rare and short, so contention means a stuck process, not load.
BUSY_TIMEOUT_S = 30.0


class SqliteRegistryStore(SqlRegistryStore):
    """One connection guarded by the base class's lock, rather than a connection per call:
    `:memory:` is a database per connection, so only a single connection can hold it, and
    admin operations are too rare for the serialisation to cost anything.
    `check_same_thread=False` because `asyncio.to_thread` may run each call on another thread.
    """

    def __init__(self, path: str, namespace: str = "surge") -> None:
        self.path = path
        super().__init__(namespace)

    def _connect(self) -> sqlite3.Connection:
        try:
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: no implicit transactions; `_transaction` says BEGIN itself.
            conn = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
            )
        except (OSError, sqlite3.Error) as exc:
            raise SurgeError(
                "bad_config", f"cannot open the registry database {self.path}: {exc}", 500
            ) from exc
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            if self.path != ":memory:":
                # WAL: readers in other worker processes never block the writer, nor it them.
                _switch_to_wal(conn)
                # NORMAL: in WAL mode a commit is not synced to disk, only checkpoints
                # are. A crashed process loses nothing (the OS has the WAL); a power
                # loss may lose the last commits, never the database. FULL synced every
                # receipt batch: a third of the receipt sink's CPU, measured.
                conn.execute("PRAGMA synchronous = NORMAL")
        except BaseException:
            conn.close()
            raise
        return conn

    def _location(self) -> str:
        return f"the registry database {self.path}"

    def _attempt(self, operation: Callable[[], T]) -> T:
        try:
            return operation()
        except sqlite3.OperationalError as exc:
            # Another process held the write lock for the whole busy timeout: to a caller
            # this is a registry it cannot use right now, not a fault in its request.
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            raise SurgeError(
                "store_unavailable",
                f"cannot reach the registry database {self.path}: {exc} (another process "
                f"held it for over {BUSY_TIMEOUT_S:g} s)",
                503,
                retry_after_s=1.0,
            ) from exc

    def _transaction(self, work: Callable[[Any], T]) -> T:
        # IMMEDIATE takes the write lock before the first read, so the doc a change
        # replaces cannot be changed by another process before this one writes.
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            result = work(self._conn)
            self._conn.execute("COMMIT")
        except BaseException:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            raise
        return result


def _switch_to_wal(conn: sqlite3.Connection, patience_s: float = 10.0) -> None:
    """`PRAGMA journal_mode = WAL`, retried while another connection holds the lock: the
    switch answers "database is locked" at once, without the busy handler, when several
    processes open a fresh registry together (workers starting side by side)."""
    deadline = time.monotonic() + patience_s
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.01)
