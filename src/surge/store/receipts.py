"""Receipts over SQL, mixed into `SqlRegistryStore` like the review queue: one set of
statements for SQLite and PostgreSQL.

The store keeps receipt records (`observe.receipt.record_of`) as they came and hands
them back as they were; reading them as people do (`observe.receipt.render`) is the
observability layer's business, so the store never imports it.

Receipts arrive in batches from the receipt writer's thread (never from a request), so
a batch is one transaction of one multi-row insert. The server opens a store of its own
for receipts (its own connection and lock), so a burst of receipts never makes an admin
change or a bandit sync wait.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import orjson

from surge.store.schema import decode_json

T = TypeVar("T")

_COLUMNS = (
    "request_id, recorded_at, endpoint, tenant, status, served_by, escalated, degraded, "
    "cost, compute_s, energy_j, total_ms"
)


@dataclass(frozen=True)
class ReceiptFilter:
    """What `surge receipts` and `GET /admin/receipts` can select by; None: any."""

    endpoint: str | None = None
    tenant: str | None = None
    status: int | None = None
    since: float | None = None  # epoch seconds
    until: float | None = None
    escalated: bool | None = None
    degraded: bool | None = None
    limit: int = 50

    def where(self) -> tuple[str, tuple[Any, ...]]:
        conditions: list[str] = []
        params: list[Any] = []
        for column, op, value in (
            ("endpoint", "=", self.endpoint),
            ("tenant", "=", self.tenant),
            ("status", "=", self.status),
            ("recorded_at", ">=", self.since),
            ("recorded_at", "<", self.until),
            ("escalated", "=", None if self.escalated is None else int(self.escalated)),
            ("degraded", "=", None if self.degraded is None else int(self.degraded)),
        ):
            if value is not None:
                conditions.append(f"{column} {op} ?")
                params.append(value)
        return (f"WHERE {' AND '.join(conditions)} " if conditions else ""), tuple(params)


def columns(record: dict[str, Any]) -> dict[str, Any]:
    """What the store indexes and sums, straight from a record (the totals a rendered
    receipt shows are these too)."""
    runs = record["runs"]
    live = [r for r in runs if r["role"] == "live"]
    responded = record["stamps"].get("responded")
    return {
        "served_by": live[-1]["model"] if live and record["status"] == 200 else None,
        "escalated": any(d.get("action") == "escalate" for d in record["decisions"]),
        "cost": sum(r["cost"] for r in runs),
        "compute_s": sum(r["compute_s"] for r in runs),
        "energy_j": sum(r["energy_j"] for r in runs),
        "total_ms": (responded - record["received"]) * 1000 if responded is not None else 0.0,
    }


def receipt_row(record: dict[str, Any]) -> tuple[Any, ...]:
    """The indexed columns of a receipt record (see schema.py), then the record as JSON
    (orjson: this runs for every request; NaN, which JSON lacks, becomes null)."""
    c = columns(record)
    return (
        record["id"],
        record["wall"],
        record["endpoint"],
        record["tenant"],
        record["status"],
        c["served_by"],
        int(c["escalated"]),
        int(record["degraded"]),
        c["cost"],
        c["compute_s"],
        c["energy_j"],
        c["total_ms"],
        orjson.dumps(record).decode(),
    )


class ReceiptTable:
    """The receipt methods of the store; `SqlRegistryStore` supplies the plumbing below."""

    if TYPE_CHECKING:

        def _sql(self, text: str) -> str: ...

        def _read(self, work: Callable[[Any], T]) -> T: ...

        def _write(self, work: Callable[[Any], T]) -> T: ...

    def add_receipts(self, records: list[dict[str, Any]]) -> int:
        """Store receipt records (`observe.receipt.record_of`); they read back the same."""
        if not records:
            return 0
        rows = [receipt_row(r) for r in records]
        values = ", ".join(["?"] * 12 + ["{j}"])
        sql = self._sql(f"INSERT INTO {{t}} ({_COLUMNS}, body) VALUES ({values})")

        def work(conn: Any) -> int:
            cursor = conn.cursor()
            cursor.executemany(sql, rows)
            return len(rows)

        return self._write(work)

    def receipts_for(self, request_id: str) -> list[dict[str, Any]]:
        """Every receipt with this request id, newest first (a client may reuse an id)."""
        sql = self._sql(
            "SELECT CAST(body AS TEXT) FROM {t} WHERE request_id = ? ORDER BY seq DESC LIMIT 20"
        )
        rows = self._read(lambda conn: conn.execute(sql, (request_id,)).fetchall())
        return [decode_json(body) for (body,) in rows]

    def list_receipts(self, selection: ReceiptFilter) -> list[dict[str, Any]]:
        """The records the selection picks, newest first."""
        where, params = selection.where()
        sql = self._sql(
            f"SELECT CAST(body AS TEXT) FROM {{t}} {where}ORDER BY recorded_at DESC, seq DESC "
            "LIMIT ?"
        )
        rows = self._read(
            lambda conn: conn.execute(sql, (*params, max(0, selection.limit))).fetchall()
        )
        return [decode_json(body) for (body,) in rows]

    def summarize_receipts(self, selection: ReceiptFilter) -> dict[str, Any]:
        """Totals over the selection: what a tenant or endpoint was billed and burned."""
        where, params = selection.where()
        sql = self._sql(
            "SELECT COUNT(*), COALESCE(SUM(cost), 0), COALESCE(SUM(compute_s), 0), "
            "COALESCE(SUM(energy_j), 0), COALESCE(SUM(escalated), 0), "
            f"COALESCE(SUM(degraded), 0) FROM {{t}} {where}"
        )
        count, cost, compute, energy, escalated, degraded = self._read(
            lambda conn: conn.execute(sql, params).fetchone()
        )
        return {
            "receipts": int(count),
            "cost": float(cost),
            "compute_s": float(compute),
            "energy_j": float(energy),
            "escalated": int(escalated),
            "degraded": int(degraded),
        }

    def delete_receipts_before(self, cutoff: float) -> int:
        sql = self._sql("DELETE FROM {t} WHERE recorded_at < ?")
        return self._write(lambda conn: conn.execute(sql, (cutoff,)).rowcount)
