"""The store's tables, in SQL both SQLite and PostgreSQL accept, and how a JSON value is
written to and read back from them.

`{v}`, `{r}`, `{a}`, `{q}` and `{t}` are the namespaced table names; `{real}`, `{json_type}` and
`{serial}` the column types each backend spells its own way.
"""

from __future__ import annotations

import json
from typing import Any

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS {v} (
        model TEXT NOT NULL,
        version TEXT NOT NULL,
        checksum TEXT NOT NULL,
        registered_at {real} NOT NULL,
        registered_by TEXT NOT NULL,
        PRIMARY KEY (model, version))""",
    # doc is NULL only in a row a change inserts to lock on, inside the transaction that
    # then writes the doc, so no committed row keeps a NULL doc.
    """CREATE TABLE IF NOT EXISTS {r} (
        endpoint TEXT PRIMARY KEY,
        doc {json_type},
        updated_at {real} NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS {a} (
        id {serial},
        recorded_at {real} NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        endpoint TEXT,
        before_doc {json_type},
        after_doc {json_type},
        reason TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS {a}_by_endpoint ON {a} (endpoint, id)",
    # The human-review queue: label is NULL while an item waits, and is set exactly once.
    """CREATE TABLE IF NOT EXISTS {q} (
        id {serial},
        endpoint TEXT NOT NULL,
        request_id TEXT NOT NULL,
        created_at {real} NOT NULL,
        inputs {json_type} NOT NULL,
        answer {json_type} NOT NULL,
        confidence {real} NOT NULL,
        served_by TEXT NOT NULL,
        label {json_type},
        labelled_by TEXT,
        labelled_at {real})""",
    "CREATE INDEX IF NOT EXISTS {q}_by_endpoint ON {q} (endpoint, created_at)",
    # Receipts: one row per request (a client may reuse a request id, so it is not the
    # key); the columns a list filters on, and the whole receipt as JSON.
    """CREATE TABLE IF NOT EXISTS {t} (
        seq {serial},
        request_id TEXT NOT NULL,
        recorded_at {real} NOT NULL,
        endpoint TEXT NOT NULL,
        tenant TEXT,
        status INTEGER NOT NULL,
        served_by TEXT,
        escalated INTEGER NOT NULL,
        degraded INTEGER NOT NULL,
        cost {real} NOT NULL,
        compute_s {real} NOT NULL,
        energy_j {real} NOT NULL,
        total_ms {real} NOT NULL,
        body {json_type} NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS {t}_by_id ON {t} (request_id)",
    "CREATE INDEX IF NOT EXISTS {t}_by_time ON {t} (recorded_at)",
    "CREATE INDEX IF NOT EXISTS {t}_by_endpoint ON {t} (endpoint, recorded_at)",
)


def encode_json(doc: Any) -> str | None:
    # NaN is not JSON and PostgreSQL's JSONB refuses it; refuse it on SQLite too.
    return None if doc is None else json.dumps(doc, allow_nan=False, separators=(",", ":"))


def decode_json(value: Any) -> Any:
    # SQLite hands back the text; psycopg has already parsed JSONB (a column read through
    # CAST(... AS TEXT) comes back as text from both, which a bare JSON string needs).
    return json.loads(value) if isinstance(value, str) else value
