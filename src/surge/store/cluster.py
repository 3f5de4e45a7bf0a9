"""What the processes sharing a registry coordinate through, over SQL and mixed into
`SqlRegistryStore` like the review queue: heartbeats (who is serving what), leases (one
process at a time decides), and pending bandit feedback (any process can take it).

Each operation is one statement in a write transaction, and its outcome is decided by the
database, not by a read before it: a lease is taken by an upsert whose WHERE says when it
may be, a pending entry is taken by `DELETE ... RETURNING`. So of two processes racing,
exactly one wins, on SQLite (BEGIN IMMEDIATE serialises writers) and on PostgreSQL (the
second statement waits on the first's row lock, then re-reads the row it left).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from surge.core.errors import SurgeError
from surge.store.registry import LeaseRecord, PendingEntry, PendingRow, ProcessRecord
from surge.store.schema import decode_json, encode_json

T = TypeVar("T")

_PROCESS_COLUMNS = "id, host, pid, started_at, heartbeat_at, CAST(state AS TEXT)"


class ClusterTables:
    """The cluster methods of the store; `SqlRegistryStore` supplies the plumbing below."""

    if TYPE_CHECKING:
        lock_row: str

        def _sql(self, text: str) -> str: ...

        def _read(self, work: Callable[[Any], T]) -> T: ...

        def _write(self, work: Callable[[Any], T]) -> T: ...

    # -- heartbeats -------------------------------------------------------------------------

    def heartbeat(
        self,
        process_id: str,
        host: str,
        pid: int,
        started_at: float,
        state: dict[str, Any],
        now: float,
    ) -> None:
        sql = self._sql(
            "INSERT INTO {p} (id, host, pid, started_at, heartbeat_at, state) "
            "VALUES (?, ?, ?, ?, ?, {j}) ON CONFLICT (id) DO UPDATE SET host = excluded.host, "
            "pid = excluded.pid, started_at = excluded.started_at, "
            "heartbeat_at = excluded.heartbeat_at, state = excluded.state"
        )
        params = (process_id, host, pid, started_at, now, encode_json(state))
        self._write(lambda conn: conn.execute(sql, params))

    def processes(self, since: float) -> list[ProcessRecord]:
        sql = self._sql(f"SELECT {_PROCESS_COLUMNS} FROM {{p}} WHERE heartbeat_at >= ? ORDER BY id")
        rows = self._read(lambda conn: conn.execute(sql, (since,)).fetchall())
        return [_process_record(row) for row in rows]

    def forget_process(self, process_id: str) -> None:
        sql = self._sql("DELETE FROM {p} WHERE id = ?")
        self._write(lambda conn: conn.execute(sql, (process_id,)))

    def forget_processes_before(self, cutoff: float) -> int:
        sql = self._sql("DELETE FROM {p} WHERE heartbeat_at < ?")
        return int(self._write(lambda conn: conn.execute(sql, (cutoff,)).rowcount))

    # -- leases -------------------------------------------------------------------------------

    def acquire_lease(self, name: str, holder: str, ttl_s: float, now: float) -> int | None:
        # One upsert: a new lease is inserted with token 1; an existing one is updated only
        # if it is the holder's or has expired, and the WHERE is judged on the row as the
        # last writer left it, so two takers of an expired lease cannot both succeed. The
        # token is kept only by a holder renewing a lease that is still valid.
        sql = self._sql(
            "INSERT INTO {l} (name, holder, token, expires_at) VALUES (?, ?, 1, ?) "
            "ON CONFLICT (name) DO UPDATE SET "
            "token = CASE WHEN {l}.holder = excluded.holder AND {l}.expires_at >= ? "
            "THEN {l}.token ELSE {l}.token + 1 END, "
            "holder = excluded.holder, expires_at = excluded.expires_at "
            "WHERE {l}.holder = excluded.holder OR {l}.expires_at < ? "
            "RETURNING token"
        )
        params = (name, holder, now + ttl_s, now, now)
        row = self._write(lambda conn: conn.execute(sql, params).fetchone())
        return None if row is None else int(row[0])

    def release_lease(self, name: str, holder: str) -> None:
        # The token stays: the next holder's is larger, so writes fenced by this one fail.
        sql = self._sql("UPDATE {l} SET expires_at = 0 WHERE name = ? AND holder = ?")
        self._write(lambda conn: conn.execute(sql, (name, holder)))

    def lease(self, name: str) -> LeaseRecord | None:
        sql = self._sql("SELECT name, holder, token, expires_at FROM {l} WHERE name = ?")
        row = self._read(lambda conn: conn.execute(sql, (name,)).fetchone())
        if row is None:
            return None
        name, holder, token, expires_at = row
        return LeaseRecord(name, holder, int(token), float(expires_at))

    def _check_fence(self, conn: Any, fence: tuple[str, int], now: float, endpoint: str) -> None:
        """Inside a write's transaction, before it writes: refuse the write unless the
        lease still holds the writer's token. The row stays locked (PostgreSQL) to the
        end of the transaction, so the lease cannot change hands before the write commits."""
        name, token = fence
        row = conn.execute(
            self._sql("SELECT holder, token, expires_at FROM {l} WHERE name = ?" + self.lock_row),
            (name,),
        ).fetchone()
        if row is None:
            why = f"no process holds the {name} lease"
        elif int(row[1]) != token:
            why = f"the {name} lease has passed to {row[0]} (token {row[1]})"
        elif float(row[2]) < now:
            why = f"the {name} lease expired at {_iso(float(row[2]))}"
        else:
            return
        raise SurgeError(
            "lease_lost",
            f"{why}, so this process (token {token}) no longer decides for it; its change "
            f"to {endpoint} was not written. The current holder's decisions stand.",
            409,
        )

    # -- pending feedback -----------------------------------------------------------------

    def put_pending(self, entries: list[PendingRow], expires_at: float) -> None:
        if not entries:
            return
        sql = self._sql(
            "INSERT INTO {f} (request_id, route, segment, arm, tenant, expires_at) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (request_id) DO NOTHING"
        )
        rows = [(*entry, expires_at) for entry in entries]
        self._write(lambda conn: conn.cursor().executemany(sql, rows))

    def take_pending(
        self, request_id: str, now: float, check: Callable[[PendingEntry], None] | None = None
    ) -> PendingEntry | None:
        # An expired entry is left for `delete_expired_pending`; it is not returned.
        if check is None:
            sql = self._sql(
                "DELETE FROM {f} WHERE request_id = ? AND expires_at >= ? "
                "RETURNING route, segment, arm, tenant"
            )
            row = self._write(lambda conn: conn.execute(sql, (request_id, now)).fetchone())
            return None if row is None else (row[0], row[1], row[2], row[3])
        # Checked between reading the row and deleting it, in one write transaction that
        # holds the row (SQLite: every writer waits; PostgreSQL: FOR UPDATE): a refusal
        # raised by `check` rolls back and leaves the entry for its rightful owner.
        select = self._sql(
            "SELECT route, segment, arm, tenant FROM {f} WHERE request_id = ? AND expires_at >= ?"
            + self.lock_row
        )
        delete = self._sql("DELETE FROM {f} WHERE request_id = ?")

        def work(conn: Any) -> PendingEntry | None:
            row = conn.execute(select, (request_id, now)).fetchone()
            if row is None:
                return None
            entry = (row[0], row[1], row[2], row[3])
            check(entry)
            conn.execute(delete, (request_id,))
            return entry

        return self._write(work)

    def delete_expired_pending(self, now: float) -> int:
        sql = self._sql("DELETE FROM {f} WHERE expires_at < ?")
        return int(self._write(lambda conn: conn.execute(sql, (now,)).rowcount))


def _process_record(row: Any) -> ProcessRecord:
    process_id, host, pid, started_at, heartbeat_at, state = row
    return ProcessRecord(
        process_id, host, int(pid), float(started_at), float(heartbeat_at), decode_json(state)
    )


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds")
