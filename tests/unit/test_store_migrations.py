"""Schema migrations, against a SQLite file and the real PostgreSQL where it runs: a registry
made by the release before schema versions is upgraded in place and keeps serving; opening
again changes nothing; a newer schema is refused; processes opening at once migrate once."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from surge.core.context import RequestContext
from surge.core.errors import SurgeError
from surge.observe.receipt import record_of
from surge.store import migrations, open_store
from surge.store.receipts import ReceiptFilter, columns, receipt_row
from surge.store.schema import Migration
from surge.store.sql import SqlRegistryStore

POSTGRES_URLS = (
    "postgresql://postgres@127.0.0.1:5432/test",
    "postgresql://root@127.0.0.1:5432/test",
)
TABLES = (
    *("versions", "routes", "audit", "reviews", "receipts", "schema_version"),
    *("processes", "leases", "pending_feedback", "keys", "secrets"),
)
EVERY_VERSION = [m.version for m in migrations.MIGRATIONS]
SHA = "c" * 64

# The schema exactly as the release before schema versions created it (src/surge/store/
# schema.py at 2373fba), frozen here: the migrations must keep recognising it whatever
# the code's schema becomes.
PREVIOUS_RELEASE_DDL = (
    """CREATE TABLE IF NOT EXISTS {v} (
        model TEXT NOT NULL,
        version TEXT NOT NULL,
        checksum TEXT NOT NULL,
        registered_at {real} NOT NULL,
        registered_by TEXT NOT NULL,
        PRIMARY KEY (model, version))""",
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
PREVIOUS_RELEASE_TYPES = {
    "sqlite": {"real": "REAL", "json_type": "TEXT", "serial": "INTEGER PRIMARY KEY AUTOINCREMENT"},
    "postgresql": {
        "real": "DOUBLE PRECISION",
        "json_type": "JSONB",
        "serial": "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
    },
}
OLD_ROUTE = {"stable": {"model": "digits", "version": "1"}, "note": "für"}


@dataclass
class Database:
    """A registry database and raw SQL on it, beside the store: what another release (or
    an operator) does to the tables."""

    kind: str
    url: str
    namespace: str

    def open(self) -> SqlRegistryStore:
        store = open_store(self.url, self.namespace)
        assert isinstance(store, SqlRegistryStore)
        return store

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        keys = "vraqtsplfkx"
        names = {key: f"{self.namespace}_{table}" for key, table in zip(keys, TABLES, strict=True)}
        json_param = "?" if self.kind == "sqlite" else "CAST(? AS JSONB)"
        text = sql.format(**names, **PREVIOUS_RELEASE_TYPES[self.kind], j=json_param)
        if self.kind == "sqlite":
            path = self.url.removeprefix("sqlite:///")
            with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
                return conn.execute(text, params).fetchall()
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            cursor = conn.execute(text.replace("?", "%s"), params)
            return cursor.fetchall() if cursor.description else []

    def schema_versions(self) -> list[int]:
        return [v for (v,) in self.execute("SELECT version FROM {s} ORDER BY version")]

    def has_table(self, key: str) -> bool:
        if self.kind == "sqlite":
            sql = "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = '{%s}'"
        else:
            sql = "SELECT COUNT(to_regclass('{%s}'))"
        [(found,)] = self.execute(sql % key)
        return bool(found)


@pytest.fixture(scope="session")
def postgres_url() -> str:
    psycopg = pytest.importorskip("psycopg")
    errors = []
    for url in POSTGRES_URLS:
        try:
            with psycopg.connect(url, connect_timeout=3):
                return url
        except psycopg.OperationalError as exc:
            errors.append(str(exc).strip())
    pytest.skip(f"PostgreSQL not reachable at {POSTGRES_URLS[0]}: {'; '.join(errors)}")


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    namespace = f"m_{uuid.uuid4().hex[:12]}"
    if request.param == "sqlite":
        yield Database("sqlite", f"sqlite:///{tmp_path / 'registry.db'}", namespace)
        return
    database = Database("postgresql", request.getfixturevalue("postgres_url"), namespace)
    yield database
    database.execute("DROP TABLE IF EXISTS " + ", ".join(f"{namespace}_{t}" for t in TABLES))


def a_receipt_record(request_id: str, wall: float) -> dict[str, Any]:
    ctx = RequestContext(request_id, "digits", deadline=101.0, received=100.0)
    ctx.wall_time, ctx.tenant, ctx.status = wall, "acme", 200
    ctx.stamp("responded", 100.004)
    ctx.runs.append({
        "model": "digits@1", "endpoint": "digits", "version": "1", "role": "live",
        "rows": 1, "batch_rows": 1, "compute_s": 0.001, "queue_s": 0.0, "cpu_s": 0.001,
        "energy_j": 0.01, "energy_source": "estimate",
    })  # fmt: skip
    return record_of(ctx, {})


def create_previous_release_database(db: Database) -> None:
    """The tables and one row of each kind, as the release before schema versions wrote them."""
    for statement in PREVIOUS_RELEASE_DDL:
        db.execute(statement)
    db.execute("INSERT INTO {v} VALUES (?, ?, ?, ?, ?)", ("digits", "1", SHA, 1000.0, "config"))
    route = '{"stable":{"model":"digits","version":"1"},"note":"f\\u00fcr"}'
    db.execute(
        "INSERT INTO {r} (endpoint, doc, updated_at) VALUES (?, {j}, ?)", ("digits", route, 1001.0)
    )
    db.execute(
        "INSERT INTO {a} (recorded_at, actor, action, endpoint, before_doc, after_doc, reason) "
        "VALUES (?, ?, ?, ?, NULL, {j}, ?)",
        (1001.0, "alice", "deploy", "digits", route, "first deploy"),
    )
    db.execute(
        "INSERT INTO {q} (endpoint, request_id, created_at, inputs, answer, confidence, "
        "served_by) VALUES (?, ?, ?, {j}, {j}, ?, ?)",
        ("digits", "req-1", 1002.0, '{"input":[[0.5]]}', '{"label":[3]}', 0.4, "digits@1"),
    )
    db.execute(
        "INSERT INTO {t} (request_id, recorded_at, endpoint, tenant, status, served_by, "
        "escalated, degraded, cost, compute_s, energy_j, total_ms, body) VALUES "
        "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, {j})",
        receipt_row(a_receipt_record("req-1", 1003.0)),
    )


def test_a_registry_from_before_schema_versions_is_upgraded_in_place_and_serves(
    db: Database,
) -> None:
    create_previous_release_database(db)

    store = db.open()
    try:
        assert db.schema_versions() == EVERY_VERSION
        # Everything the previous release stored reads back.
        assert store.load_routes() == {"digits": OLD_ROUTE}
        assert store.route_revisions() == {"digits": 0}  # written before revisions
        [version] = store.list_versions()
        assert (version.model, version.version, version.checksum) == ("digits", "1", SHA)
        [entry] = store.audit("digits")
        assert (entry.actor, entry.action, entry.after) == ("alice", "deploy", OLD_ROUTE)
        [item] = store.list_reviews()
        assert (item.request_id, item.inputs, item.label) == ("req-1", {"input": [[0.5]]}, None)
        [receipt] = store.list_receipts(ReceiptFilter(endpoint="digits"))
        assert (receipt["id"], columns(receipt)["served_by"]) == ("req-1", "digits@1")

        # And it keeps serving: a change, a label, a receipt.
        changed = {**OLD_ROUTE, "candidate": {"model": "digits", "version": "2"}}
        change = store.update_route(
            "digits", lambda doc: {**(doc or {}), **changed}, actor="bob", action="deploy",
            reason="canary", now=2000.0,
        )  # fmt: skip
        assert (change.before, change.after) == (OLD_ROUTE, changed)
        assert store.route_revisions() == {"digits": 1}
        assert [e.id for e in store.audit("digits")] == [entry.id + 1, entry.id]
        assert store.label_review(item.id, 3, actor="carol", now=2001.0).label == 3
        assert store.add_receipts([a_receipt_record("req-2", 2002.0)]) == 1
        listed = store.list_receipts(ReceiptFilter(endpoint="digits"))
        assert [r["id"] for r in listed] == ["req-2", "req-1"]
    finally:
        store.close()

    reopened = db.open()
    try:
        assert reopened.load_routes() == {"digits": changed}
        assert reopened.route_revisions() == {"digits": 1}
    finally:
        reopened.close()


def test_a_new_database_gets_every_migration_and_opening_again_changes_nothing(
    db: Database,
) -> None:
    store = db.open()
    store.apply_change("digits", {"n": 1}, actor="a", action="deploy", reason="r", now=1.0)
    store.close()
    recorded = db.execute("SELECT version, description, applied_at FROM {s} ORDER BY version")
    assert [row[0] for row in recorded] == [m.version for m in migrations.MIGRATIONS]

    for _ in range(2):
        store = db.open()
        try:
            assert store.load_routes() == {"digits": {"n": 1}}
            assert store.route_revisions() == {"digits": 1}
        finally:
            store.close()
    assert db.execute("SELECT version, description, applied_at FROM {s} ORDER BY version") == (
        recorded
    )


def test_a_database_from_a_newer_surge_is_refused_untouched(db: Database) -> None:
    db.open().close()
    newer = migrations.LATEST + 1
    db.execute("INSERT INTO {s} VALUES (?, ?, ?)", (newer, "from the future", 3.0))

    with pytest.raises(SurgeError) as refused:
        db.open()

    assert (refused.value.code, refused.value.status) == ("schema_too_new", 500)
    message = refused.value.message
    assert f"schema version {newer}" in message
    assert f"versions up to {migrations.LATEST}" in message
    assert db.namespace in message and "newer surge" in message
    assert db.schema_versions() == [*range(1, newer + 1)]


def test_tables_of_a_shape_no_release_made_are_not_stamped(db: Database) -> None:
    # The receipts table of a development build, before it had compute_s.
    for statement in PREVIOUS_RELEASE_DDL:
        db.execute(statement.replace("compute_s {real} NOT NULL,", ""))

    with pytest.raises(SurgeError) as refused:
        db.open()

    assert refused.value.code == "schema_mismatch"
    assert f"{db.namespace}_receipts" in refused.value.message
    assert "compute_s" in refused.value.message
    assert not db.has_table("s")  # the transaction rolled everything back


def test_a_table_dropped_by_hand_comes_back_at_the_current_shape(db: Database) -> None:
    store = db.open()
    store.apply_change("digits", {"n": 1}, actor="a", action="deploy", reason="r", now=1.0)
    store.add_receipts([a_receipt_record("req-1", 1.0)])
    store.close()
    db.execute("DROP TABLE {r}")
    db.execute("DROP TABLE {t}")

    store = db.open()
    try:
        assert store.load_routes() == {} and store.list_receipts(ReceiptFilter()) == []
        store.apply_change("digits", {"n": 2}, actor="a", action="deploy", reason="r", now=2.0)
        assert store.route_revisions() == {"digits": 1}  # the revision column is back too
        assert [a.after for a in store.audit("digits")] == [{"n": 2}, {"n": 1}]
    finally:
        store.close()
    assert db.schema_versions() == EVERY_VERSION


def test_processes_opening_an_old_registry_at_once_migrate_it_once(db: Database) -> None:
    create_previous_release_database(db)
    openers = 4
    barrier = threading.Barrier(openers)
    opened: list[SqlRegistryStore] = []
    errors: list[BaseException] = []

    def open_one() -> None:
        barrier.wait()
        try:
            opened.append(db.open())  # each store its own connection, like a process
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(openers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert errors == []
        assert db.schema_versions() == EVERY_VERSION
        assert all(store.route_revisions() == {"digits": 0} for store in opened)
    finally:
        for store in opened:
            store.close()


def test_every_write_of_a_route_or_shared_state_adds_one_to_its_revision(db: Database) -> None:
    store = db.open()
    try:
        store.apply_change("digits", {"n": 1}, actor="a", action="deploy", reason="r", now=1.0)
        store.update_route("digits", lambda d: d, actor="a", action="advance", reason="r", now=2.0)
        for n in range(3):
            store.update_state("bandit:digits", lambda d, n=n: {"n": n}, now=3.0)
        assert store.route_revisions() == {"bandit:digits": 3, "digits": 2}
    finally:
        store.close()


def test_a_later_migration_is_applied_once_and_a_failing_one_changes_nothing(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    db.open().close()
    latest = migrations.LATEST
    index = Migration(
        latest + 1, "index pending reviews", ("CREATE INDEX {q}_pending ON {q} (label)",)
    )
    broken = Migration(latest + 2, "broken", ("ALTER TABLE {r} ADD COLUMN x INTEGER",) * 2)

    monkeypatch.setattr(migrations, "MIGRATIONS", (*migrations.MIGRATIONS, index, broken))
    monkeypatch.setattr(migrations, "LATEST", latest + 2)
    with pytest.raises(Exception, match=r"(?i)duplicate|already exists"):
        db.open()
    # The index ran in the same transaction: rolled back too.
    assert db.schema_versions() == EVERY_VERSION

    monkeypatch.setattr(migrations, "MIGRATIONS", (*migrations.MIGRATIONS[: latest + 1],))
    monkeypatch.setattr(migrations, "LATEST", latest + 1)
    db.open().close()
    db.open().close()
    assert db.schema_versions() == [*EVERY_VERSION, latest + 1]
