"""The registry over SQL, written once for SQLite and PostgreSQL.

The statements are dialect-neutral (upserts via ON CONFLICT, RETURNING); a backend
supplies only what differs: the connection, how a write transaction takes its lock,
the placeholder, the column types, and how a JSON parameter is spelled.
"""

from __future__ import annotations

import threading
from abc import abstractmethod
from collections.abc import Callable
from dataclasses import replace
from typing import Any, TypeVar

from surge.store.cluster import ClusterTables
from surge.store.keys import KeyTables
from surge.store.migrations import migrate
from surge.store.receipts import ReceiptTable
from surge.store.registry import (
    AuditEntry,
    RegistryStore,
    RouteChange,
    RouteUpdate,
    VersionRecord,
    checksum_conflict,
)
from surge.store.review import ReviewQueue
from surge.store.schema import decode_json, encode_json

T = TypeVar("T")

_VERSION_COLUMNS = "model, version, checksum, registered_at, registered_by"
_AUDIT_COLUMNS = "id, recorded_at, actor, action, endpoint, before_doc, after_doc, reason"


class _Unchanged(Exception):
    """A change found nothing to do: raised inside its transaction to roll it back, so
    not even the row inserted to lock on is left behind."""


class SqlRegistryStore(ClusterTables, KeyTables, ReceiptTable, ReviewQueue, RegistryStore):
    """One DB-API connection, used by one thread at a time (admin operations are rare, so
    serialising them in-process costs nothing; other processes are kept out by the
    database's own locks, taken in `_transaction`)."""

    placeholder = "?"
    json_param = "?"  # how a JSON text parameter is written in SQL
    json_type = "TEXT"
    real = "REAL"
    serial = "INTEGER PRIMARY KEY AUTOINCREMENT"  # AUTOINCREMENT: ids never reused
    lock_row = ""  # appended to the SELECT of a row the transaction then changes or relies on
    migration_lock: tuple[str, ...] = ()  # run first in the migration's transaction
    # One row whose single column is nonzero if the table `?` exists.
    table_exists = "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = ?"

    def __init__(self, namespace: str) -> None:
        # What `_sql` fills in: the table names, the JSON parameter, the column types.
        self._names = {
            "v": f"{namespace}_versions",
            "r": f"{namespace}_routes",
            "a": f"{namespace}_audit",
            "q": f"{namespace}_reviews",
            "t": f"{namespace}_receipts",
            "p": f"{namespace}_processes",
            "l": f"{namespace}_leases",
            "f": f"{namespace}_pending_feedback",
            "k": f"{namespace}_keys",
            "x": f"{namespace}_secrets",
            "s": f"{namespace}_schema_version",
            "j": self.json_param,
            "real": self.real,
            "json_type": self.json_type,
            "serial": self.serial,
        }
        self._where = f"{self._location()} (tables {namespace}_*)"
        self._lock = threading.Lock()
        self._conn: Any = self._connect()
        try:
            self._write(self._migrate)
        except BaseException:
            self._conn.close()
            raise

    # -- what a backend supplies ------------------------------------------------------------

    @abstractmethod
    def _connect(self) -> Any:
        """A new connection to the backend."""

    @abstractmethod
    def _transaction(self, work: Callable[[Any], T]) -> T:
        """Run `work(connection)` in a transaction that excludes every other writer."""

    @abstractmethod
    def _location(self) -> str:
        """The database, as a message names it (no password)."""

    def _attempt(self, operation: Callable[[], T]) -> T:
        return operation()

    # -- the registry -------------------------------------------------------------------------

    def register_version(
        self, model: str, version: str, checksum: str, actor: str, now: float
    ) -> VersionRecord:
        def work(conn: Any) -> VersionRecord:
            inserted = conn.execute(
                self._sql(
                    f"INSERT INTO {{v}} ({_VERSION_COLUMNS}) VALUES (?, ?, ?, ?, ?) "
                    "ON CONFLICT (model, version) DO NOTHING RETURNING model"
                ),
                (model, version, checksum, now, actor),
            ).fetchone()
            if inserted is None:  # already registered, maybe by another process just now
                existing = self._version(conn, model, version)
                assert existing is not None
                if existing.checksum != checksum:
                    raise checksum_conflict(model, version, existing.checksum, checksum)
                return existing
            after = {"model": model, "version": version, "checksum": checksum}
            reason = f"registered {model} version {version}"
            self._append_audit(conn, now, actor, "register", None, None, after, reason)
            return VersionRecord(model, version, checksum, float(now), actor)

        return self._write(work)

    def get_version(self, model: str, version: str) -> VersionRecord | None:
        return self._read(lambda conn: self._version(conn, model, version))

    def list_versions(self, model: str | None = None) -> list[VersionRecord]:
        where, params = ("WHERE model = ? ", (model,)) if model is not None else ("", ())
        sql = self._sql(
            f"SELECT {_VERSION_COLUMNS} FROM {{v}} {where}ORDER BY model, registered_at, version"
        )
        rows = self._read(lambda conn: conn.execute(sql, params).fetchall())
        return [_version_record(row) for row in rows]

    def load_route(self, endpoint: str) -> dict[str, Any] | None:
        sql = self._sql("SELECT doc FROM {r} WHERE endpoint = ?")
        row = self._read(lambda conn: conn.execute(sql, (endpoint,)).fetchone())
        return None if row is None else decode_json(row[0])

    def load_routes(self) -> dict[str, dict[str, Any]]:
        sql = self._sql("SELECT endpoint, doc FROM {r} WHERE doc IS NOT NULL ORDER BY endpoint")
        rows = self._read(lambda conn: conn.execute(sql).fetchall())
        return {endpoint: decode_json(doc) for endpoint, doc in rows}

    def route_revisions(self) -> dict[str, int]:
        sql = self._sql(
            "SELECT endpoint, revision FROM {r} WHERE doc IS NOT NULL ORDER BY endpoint"
        )
        rows = self._read(lambda conn: conn.execute(sql).fetchall())
        return {endpoint: int(revision) for endpoint, revision in rows}

    def load_routes_with_revisions(self) -> dict[str, tuple[dict[str, Any], int]]:
        sql = self._sql(
            "SELECT endpoint, doc, revision FROM {r} WHERE doc IS NOT NULL ORDER BY endpoint"
        )
        rows = self._read(lambda conn: conn.execute(sql).fetchall())
        return {endpoint: (decode_json(doc), int(revision)) for endpoint, doc, revision in rows}

    def apply_change(
        self,
        endpoint: str,
        after: dict[str, Any],
        *,
        actor: str,
        action: str,
        reason: str,
        now: float,
        fence: tuple[str, int] | None = None,
    ) -> AuditEntry:
        entry = self.update_route(
            endpoint,
            lambda _: after,
            actor=actor,
            action=action,
            reason=reason,
            now=now,
            fence=fence,
        )
        assert entry is not None  # `after` is a doc, so the change always writes
        return entry

    def update_route(
        self,
        endpoint: str,
        change: RouteChange,
        *,
        actor: str,
        action: str,
        reason: str,
        now: float,
        fence: tuple[str, int] | None = None,
    ) -> AuditEntry | None:
        def work(conn: Any) -> AuditEntry:
            if fence is not None:
                self._check_fence(conn, fence, now, endpoint)
            before, after, revision = self._locked_update(conn, endpoint, change, now)
            entry = self._append_audit(conn, now, actor, action, endpoint, before, after, reason)
            return replace(entry, revision=revision)

        try:
            return self._write(work)
        except _Unchanged:
            return None

    def append_audit(
        self,
        *,
        actor: str,
        action: str,
        endpoint: str | None,
        reason: str,
        now: float,
        before: dict[str, Any] | None = None,
        after: dict[str, Any] | None = None,
    ) -> AuditEntry:
        return self._write(
            lambda conn: self._append_audit(
                conn, now, actor, action, endpoint, before, after, reason
            )
        )

    def update_state(self, key: str, change: RouteUpdate, *, now: float) -> dict[str, Any]:
        """Read-modify-write of a document under `key` with no audit entry: for state the
        processes share and merge often (a bandit's counts), not for operator changes."""
        return self._write(lambda conn: self._locked_update(conn, key, change, now)[1])

    def _locked_update(
        self, conn: Any, key: str, change: RouteChange, now: float
    ) -> tuple[dict[str, Any] | None, dict[str, Any], int]:
        # Inserting first gives a new key a row to lock, so two first changes of the
        # same key also queue behind each other.
        conn.execute(
            self._sql(
                "INSERT INTO {r} (endpoint, doc, updated_at) VALUES (?, NULL, ?) "
                "ON CONFLICT (endpoint) DO NOTHING"
            ),
            (key, now),
        )
        row = conn.execute(
            self._sql("SELECT doc FROM {r} WHERE endpoint = ?" + self.lock_row), (key,)
        ).fetchone()
        before = decode_json(row[0])
        after = change(before)
        if after is None:
            raise _Unchanged(f"the change of {key} returned None: nothing to write")
        (revision,) = conn.execute(
            self._sql(
                "UPDATE {r} SET doc = {j}, updated_at = ?, revision = revision + 1 "
                "WHERE endpoint = ? RETURNING revision"
            ),
            (encode_json(after), now, key),
        ).fetchone()
        return before, after, int(revision)

    def audit(
        self, endpoint: str | None = None, limit: int = 100, action: str | None = None
    ) -> list[AuditEntry]:
        filters = {"endpoint": endpoint, "action": action}
        chosen = [(column, value) for column, value in filters.items() if value is not None]
        where = " AND ".join(f"{column} = ?" for column, _ in chosen)
        sql = self._sql(
            f"SELECT {_AUDIT_COLUMNS} FROM {{a}} "
            + (f"WHERE {where} " if where else "")
            + "ORDER BY id DESC LIMIT ?"
        )
        params = (*(value for _, value in chosen), max(0, limit))
        rows = self._read(lambda conn: conn.execute(sql, params).fetchall())
        return [_audit_entry(row) for row in rows]

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # -- shared plumbing ------------------------------------------------------------------------

    def _sql(self, text: str) -> str:
        return text.format(**self._names).replace("?", self.placeholder)

    def _read(self, work: Callable[[Any], T]) -> T:
        with self._lock:
            return self._attempt(lambda: work(self._conn))

    def _write(self, work: Callable[[Any], T]) -> T:
        with self._lock:
            return self._attempt(lambda: self._transaction(work))

    def _migrate(self, conn: Any) -> None:
        for statement in self.migration_lock:
            conn.execute(self._sql(statement))

        def exists(key: str) -> bool:
            (found,) = conn.execute(self._sql(self.table_exists), (self._names[key],)).fetchone()
            return bool(found)

        migrate(conn, self._sql, exists, self._where)

    def _version(self, conn: Any, model: str, version: str) -> VersionRecord | None:
        row = conn.execute(
            self._sql(f"SELECT {_VERSION_COLUMNS} FROM {{v}} WHERE model = ? AND version = ?"),
            (model, version),
        ).fetchone()
        return None if row is None else _version_record(row)

    def _append_audit(
        self,
        conn: Any,
        now: float,
        actor: str,
        action: str,
        endpoint: str | None,
        before: dict[str, Any] | None,
        after: dict[str, Any] | None,
        reason: str,
    ) -> AuditEntry:
        encoded_before, encoded_after = encode_json(before), encode_json(after)
        (entry_id,) = conn.execute(
            self._sql(
                "INSERT INTO {a} (recorded_at, actor, action, endpoint, before_doc, after_doc, "
                "reason) VALUES (?, ?, ?, ?, {j}, {j}, ?) RETURNING id"
            ),
            (now, actor, action, endpoint, encoded_before, encoded_after, reason),
        ).fetchone()
        # The entry holds the docs as stored (a copy), not the caller's mutable dicts.
        stored = (decode_json(encoded_before), decode_json(encoded_after))
        return AuditEntry(entry_id, float(now), actor, action, endpoint, *stored, reason)


def _version_record(row: Any) -> VersionRecord:
    model, version, checksum, registered_at, registered_by = row
    return VersionRecord(model, version, checksum, float(registered_at), registered_by)


def _audit_entry(row: Any) -> AuditEntry:
    entry_id, at, actor, action, endpoint, before, after, reason = row
    return AuditEntry(
        entry_id,
        float(at),
        actor,
        action,
        endpoint,
        decode_json(before),
        decode_json(after),
        reason,
    )
