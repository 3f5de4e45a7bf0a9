"""The store's tables, as an ordered list of migrations, in SQL both SQLite and PostgreSQL
accept; and how a JSON value is written to and read back from them.

`{v}`, `{r}`, `{a}`, `{q}`, `{t}`, `{p}`, `{l}`, `{f}`, `{k}`, `{x}` and `{s}` are the
namespaced table names; `{real}`, `{json_type}` and `{serial}` the column types each
backend spells its own way.

A schema change is a new migration at the end of `MIGRATIONS`, never an edit of one
already released: databases out there were built by the released ones (`migrations.py`
applies them). Keep migrations additive (a column with a default, a table, an index) so
a server of the previous release, still running beside a new one during an upgrade, keeps
working on the migrated tables; and let each statement name one table, so a table
dropped by hand can be rebuilt by replaying its own statements.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    statements: tuple[str, ...]


# Version 1: the tables exactly as the releases before schema versions created them.
# Every statement stays IF NOT EXISTS: on a database from such a release, applying it
# creates only what that release lacked, which is how such a database is stamped.
INITIAL_SCHEMA = (
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

# The columns version 1 gave each table: a database without a schema version is stamped
# as version 1 only if its tables have at least these (a table of another shape is not
# one a release made, and a migration written for version 1 could break it).
INITIAL_COLUMNS = {
    "v": ("model", "version", "checksum", "registered_at", "registered_by"),
    "r": ("endpoint", "doc", "updated_at"),
    "a": ("id", "recorded_at", "actor", "action", "endpoint", "before_doc", "after_doc", "reason"),
    "q": (
        "id", "endpoint", "request_id", "created_at", "inputs", "answer", "confidence",
        "served_by", "label", "labelled_by", "labelled_at",
    ),
    "t": (
        "seq", "request_id", "recorded_at", "endpoint", "tenant", "status", "served_by",
        "escalated", "degraded", "cost", "compute_s", "energy_j", "total_ms", "body",
    ),
}  # fmt: skip

# The store's tables, by the key its SQL names them with.
TABLES = ("v", "r", "a", "q", "t", "p", "l", "f", "k", "x")

# Version 3: what processes sharing a registry need to act as one surge (store/cluster.py).
CLUSTER_SCHEMA = (
    # A row per live process, rewritten by its heartbeat; state is what it publishes
    # (the revision of each route it serves, its per-version measurements).
    """CREATE TABLE {p} (
        id TEXT PRIMARY KEY,
        host TEXT NOT NULL,
        pid INTEGER NOT NULL,
        started_at {real} NOT NULL,
        heartbeat_at {real} NOT NULL,
        state {json_type} NOT NULL)""",
    # A named lease (one rollout controller, one autoscaler): the token grows each time
    # the lease changes hands, so a write fenced by a stale token can be refused.
    """CREATE TABLE {l} (
        name TEXT PRIMARY KEY,
        holder TEXT NOT NULL,
        token BIGINT NOT NULL,
        expires_at {real} NOT NULL)""",
    # Which bandit arm answered a request, until its feedback arrives at any process.
    """CREATE TABLE {f} (
        request_id TEXT PRIMARY KEY,
        route TEXT NOT NULL,
        segment TEXT NOT NULL,
        arm TEXT NOT NULL,
        expires_at {real} NOT NULL)""",
    "CREATE INDEX {f}_by_expiry ON {f} (expires_at)",
)

# Version 4: client API keys and the secrets every process shares (store/keys.py).
KEYS_SCHEMA = (
    # A client key: never the key itself, only a slow salted hash of it. The id is the
    # key's visible prefix, so a presented key finds its row without trying every hash.
    """CREATE TABLE {k} (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        tenant TEXT NOT NULL,
        scopes {json_type} NOT NULL,
        hash TEXT NOT NULL,
        created_at {real} NOT NULL,
        created_by TEXT NOT NULL,
        expires_at {real},
        revoked_at {real},
        last_used_at {real},
        settings {json_type} NOT NULL)""",
    # A secret made once by whichever process needs it first (the feedback-token key):
    # every process of the namespace then signs and checks with the same one.
    """CREATE TABLE {x} (
        name TEXT PRIMARY KEY,
        value TEXT NOT NULL,
        created_at {real} NOT NULL)""",
    # Whose answer a pending feedback entry is: a key of that tenant may rate it.
    "ALTER TABLE {f} ADD COLUMN tenant TEXT",
)

MIGRATIONS = (
    Migration(1, "versions, routes, audit, review queue and receipts", INITIAL_SCHEMA),
    # Processes that share a registry follow each route's revision: one integer compare
    # tells a process whether the route it holds is still the latest. Rows written
    # before it are revision 0, and every write adds one (sql.py), so a route's first
    # write is revision 1. BIGINT: shared state rows are rewritten every few seconds.
    Migration(
        2,
        "routes carry a revision that every write increments",
        ("ALTER TABLE {r} ADD COLUMN revision BIGINT NOT NULL DEFAULT 0",),
    ),
    Migration(3, "process heartbeats, leases and pending bandit feedback", CLUSTER_SCHEMA),
    Migration(4, "client API keys, shared secrets, the tenant of pending feedback", KEYS_SCHEMA),
)


def encode_json(doc: Any) -> str | None:
    # NaN is not JSON and PostgreSQL's JSONB refuses it; refuse it on SQLite too.
    return None if doc is None else json.dumps(doc, allow_nan=False, separators=(",", ":"))


def decode_json(value: Any) -> Any:
    # SQLite hands back the text; psycopg has already parsed JSONB (a column read through
    # CAST(... AS TEXT) comes back as text from both, which a bare JSON string needs).
    return json.loads(value) if isinstance(value, str) else value
