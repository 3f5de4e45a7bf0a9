"""What processes sharing a registry coordinate through (store/cluster.py): heartbeats,
leases with fencing tokens, conditional and fenced route changes, pending bandit feedback,
and a database that cannot be reached; against a SQLite file and the real PostgreSQL.

Several store objects on one database stand for several processes: each has its own
connection, as each process would."""

from __future__ import annotations

import contextlib
import sqlite3
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from surge.core.context import RequestContext
from surge.core.errors import SurgeError
from surge.observe.receipt import record_of
from surge.store import migrations, open_store
from surge.store.sql import SqlRegistryStore

POSTGRES_URLS = (
    "postgresql://postgres@127.0.0.1:5432/test",
    "postgresql://root@127.0.0.1:5432/test",
)
TABLES = (
    *("audit", "routes", "versions", "reviews", "receipts", "schema_version"),
    *("processes", "leases", "pending_feedback", "keys", "secrets"),
)
LEASE = "rollouts"


@dataclass
class Backend:
    kind: str
    url: str
    namespace: str

    def open(self) -> SqlRegistryStore:
        store = open_store(self.url, self.namespace)
        assert isinstance(store, SqlRegistryStore)
        return store

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Raw SQL beside the store, `{name}` standing for `<namespace>_name`."""
        text = sql.format(**{table: f"{self.namespace}_{table}" for table in TABLES})
        if self.kind == "sqlite":
            path = self.url.removeprefix("sqlite:///")
            with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
                return conn.execute(text, params).fetchall()
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            cursor = conn.execute(text.replace("?", "%s"), params)
            return cursor.fetchall() if cursor.description else []

    def has_table(self, table: str) -> bool:
        if self.kind == "sqlite":
            sql = "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = '{%s}'"
        else:
            sql = "SELECT COUNT(to_regclass('{%s}'))"
        [(found,)] = self.execute(sql % table)
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


def drop_tables(url: str, namespace: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS " + ", ".join(f"{namespace}_{t}" for t in TABLES))


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    # A namespace per test: PostgreSQL cases share one database and must not see each other.
    namespace = f"c_{uuid.uuid4().hex[:12]}"
    if request.param == "sqlite":
        yield Backend("sqlite", f"sqlite:///{tmp_path / 'registry.db'}", namespace)
        return
    url = request.getfixturevalue("postgres_url")
    yield Backend("postgresql", url, namespace)
    drop_tables(url, namespace)


@pytest.fixture
def stores(backend: Backend) -> Iterator[Callable[[], SqlRegistryStore]]:
    """Opens stores (processes) on the backend, and closes them after the test."""
    opened: list[SqlRegistryStore] = []

    def open_one() -> SqlRegistryStore:
        opened.append(backend.open())
        return opened[-1]

    yield open_one
    for store in opened:
        store.close()


@pytest.fixture
def store(stores: Callable[[], SqlRegistryStore]) -> SqlRegistryStore:
    return stores()


def at_once(workers: list[Callable[[], Any]]) -> list[Any]:
    """Run the workers on threads released together; their results, in order."""
    start = threading.Barrier(len(workers))
    results: list[Any] = [None] * len(workers)
    failures: list[BaseException] = []

    def run(i: int) -> None:
        start.wait()
        try:
            results[i] = workers[i]()
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(workers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not failures, failures
    return results


# -- heartbeats ---------------------------------------------------------------------------------


def test_heartbeats_say_who_is_serving_and_what(store: SqlRegistryStore) -> None:
    store.heartbeat("web-2", "b", 22, started_at=5.0, state={"routes": {"digits": 1}}, now=10.0)
    store.heartbeat("web-1", "a", 11, started_at=1.0, state={"routes": {"digits": 1}}, now=20.0)
    store.heartbeat("web-2", "b", 22, started_at=5.0, state={"routes": {"digits": 2}}, now=30.0)

    assert [p.id for p in store.processes(since=0.0)] == ["web-1", "web-2"]
    [recent] = store.processes(since=25.0)
    assert recent.to_dict() == {
        "id": "web-2",
        "host": "b",
        "pid": 22,
        "started_at": 5.0,
        "heartbeat_at": 30.0,
        "state": {"routes": {"digits": 2}},
    }
    assert [p.id for p in store.processes(since=20.0)] == ["web-1", "web-2"]  # inclusive

    store.forget_process("web-1")
    assert [p.id for p in store.processes(since=0.0)] == ["web-2"]
    store.heartbeat("web-3", "c", 33, started_at=1.0, state={}, now=12.0)
    assert store.forget_processes_before(30.0) == 1  # web-3; web-2 beat at 30.0
    assert [p.id for p in store.processes(since=0.0)] == ["web-2"]


def test_a_processes_heartbeat_is_seen_by_the_others(stores: Callable[[], Any]) -> None:
    one, other = stores(), stores()
    one.heartbeat("web-1", "a", 11, started_at=1.0, state={"serving": ["digits@1"]}, now=2.0)
    [seen] = other.processes(since=0.0)
    assert (seen.id, seen.state) == ("web-1", {"serving": ["digits@1"]})


# -- leases and fencing -------------------------------------------------------------------------


def test_a_lease_changes_hands_with_a_larger_token_and_fences_the_old_holder(
    store: SqlRegistryStore,
) -> None:
    assert store.lease(LEASE) is None
    assert store.acquire_lease(LEASE, "a", ttl_s=10.0, now=100.0) == 1
    assert store.acquire_lease(LEASE, "b", ttl_s=10.0, now=105.0) is None  # a's is valid
    assert store.acquire_lease(LEASE, "a", ttl_s=10.0, now=108.0) == 1  # renewal keeps it
    assert store.lease(LEASE).to_dict() == {  # type: ignore[union-attr]
        "name": LEASE,
        "holder": "a",
        "token": 1,
        "expires_at": 118.0,
    }
    store.apply_change(
        "digits",
        {"n": 1},
        actor="controller",
        action="advance",
        reason="",
        now=109.0,
        fence=(LEASE, 1),
    )
    assert store.acquire_lease(LEASE, "b", ttl_s=10.0, now=118.0) is None  # valid to the end

    # a is paused past its expiry; b takes over.
    assert store.acquire_lease(LEASE, "b", ttl_s=10.0, now=119.0) == 2
    revisions, audited = store.route_revisions(), len(store.audit())
    with pytest.raises(SurgeError) as refused:
        store.update_route(
            "digits",
            lambda doc: {"n": 99},
            actor="controller",
            action="advance",
            reason="stale",
            now=120.0,
            fence=(LEASE, 1),
        )
    assert (refused.value.code, refused.value.status) == ("lease_lost", 409)
    assert LEASE in refused.value.message and "b" in refused.value.message
    assert "digits" in refused.value.message and "not written" in refused.value.message
    with pytest.raises(SurgeError, match="not written"):
        store.apply_change(
            "text",
            {"n": 99},
            actor="controller",
            action="advance",
            reason="",
            now=120.0,
            fence=(LEASE, 1),
        )
    assert store.route_revisions() == revisions
    assert len(store.audit()) == audited
    assert store.load_routes() == {"digits": {"n": 1}}

    entry = store.update_route(
        "digits",
        lambda doc: {"n": 2},
        actor="controller",
        action="advance",
        reason="",
        now=121.0,
        fence=(LEASE, 2),
    )
    assert entry is not None and entry.after == {"n": 2}

    store.release_lease(LEASE, "a")  # not a's any more: changes nothing
    assert store.lease(LEASE).holder == "b"  # type: ignore[union-attr]
    store.release_lease(LEASE, "b")
    assert store.acquire_lease(LEASE, "a", ttl_s=10.0, now=122.0) == 3  # at once, larger


def test_a_fence_on_a_lease_that_lapsed_or_never_was_writes_nothing(
    store: SqlRegistryStore,
) -> None:
    assert store.acquire_lease(LEASE, "a", ttl_s=10.0, now=100.0) == 1
    for fence, now, why in (
        ((LEASE, 1), 110.5, "expired"),  # nobody took it over, but it lapsed
        (("autoscaler", 1), 101.0, "no process holds"),
    ):
        with pytest.raises(SurgeError, match=why) as refused:
            store.apply_change(
                "digits", {"n": 1}, actor="c", action="advance", reason="", now=now, fence=fence
            )
        assert refused.value.status == 409
    assert store.load_routes() == {} and store.audit() == []


def test_a_holder_taking_back_its_lapsed_lease_gets_a_new_token(store: SqlRegistryStore) -> None:
    # Another process may have held it in between: what was fenced by the old token stays out.
    assert store.acquire_lease(LEASE, "a", ttl_s=10.0, now=100.0) == 1
    assert store.acquire_lease(LEASE, "a", ttl_s=10.0, now=111.0) == 2
    store.release_lease(LEASE, "a")
    assert store.acquire_lease(LEASE, "a", ttl_s=10.0, now=112.0) == 3
    assert store.acquire_lease(LEASE, "a", ttl_s=10.0, now=113.0) == 3


def test_of_processes_racing_for_a_lease_exactly_one_wins(
    stores: Callable[[], SqlRegistryStore],
) -> None:
    racers = [stores() for _ in range(4)]
    for round_, now in enumerate((100.0, 200.0, 300.0)):  # a new lease, then two takeovers
        tokens = at_once(
            [
                lambda store=store, holder=f"p{round_}{i}", now=now: store.acquire_lease(
                    LEASE, holder, 10.0, now
                )
                for i, store in enumerate(racers)
            ]
        )
        assert sorted(tokens, key=str) == [round_ + 1, None, None, None]
        winner = f"p{round_}{tokens.index(round_ + 1)}"
        assert racers[0].lease(LEASE).holder == winner  # type: ignore[union-attr]


# -- route changes ------------------------------------------------------------------------------


def test_a_change_with_nothing_to_change_writes_nothing(store: SqlRegistryStore) -> None:
    unchanged = store.update_route(
        "digits", lambda doc: None, actor="config", action="deploy", reason="", now=1.0
    )
    assert unchanged is None
    assert store.load_route("digits") is None and store.route_revisions() == {}
    assert store.load_routes_with_revisions() == {}

    store.apply_change("digits", {"n": 1}, actor="a", action="deploy", reason="", now=2.0)
    assert (
        store.update_route("digits", lambda doc: None, actor="a", action="x", reason="", now=3.0)
        is None
    )
    assert store.route_revisions() == {"digits": 1}
    assert [e.action for e in store.audit()] == ["deploy"]


def test_processes_starting_at_once_record_the_configured_route_once(
    stores: Callable[[], SqlRegistryStore],
) -> None:
    wanted = {"stable": {"model": "digits", "version": "1"}}
    racers = [stores() for _ in range(4)]
    entries = at_once(
        [
            lambda store=store: store.update_route(
                "digits",
                lambda doc: None if doc == wanted else wanted,
                actor="config",
                action="deploy",
                reason="serving what the config names",
                now=1.0,
            )
            for store in racers
        ]
    )
    assert sum(entry is not None for entry in entries) == 1
    assert racers[0].load_routes_with_revisions() == {"digits": (wanted, 1)}
    assert len(racers[0].audit("digits")) == 1


def test_routes_are_read_with_their_revisions(store: SqlRegistryStore) -> None:
    store.apply_change("digits", {"n": 1}, actor="a", action="deploy", reason="", now=1.0)
    store.apply_change("digits", {"n": 2}, actor="a", action="advance", reason="", now=2.0)
    store.apply_change("text", {"t": 1}, actor="a", action="deploy", reason="", now=3.0)
    assert store.load_routes_with_revisions() == {"digits": ({"n": 2}, 2), "text": ({"t": 1}, 1)}


def test_an_event_is_audited_without_changing_a_route(store: SqlRegistryStore) -> None:
    entry = store.append_audit(
        actor="modes", action="mode", endpoint=None, reason="normal -> surge", now=5.0
    )
    assert store.audit() == [entry]
    assert (entry.actor, entry.endpoint, entry.before, entry.after, entry.at) == (
        "modes",
        None,
        None,
        None,
        5.0,
    )
    with_docs = store.append_audit(
        actor="p1", action="load", endpoint="digits", reason="", now=6.0, after={"v": "1"}
    )
    assert store.audit("digits") == [with_docs] and with_docs.after == {"v": "1"}
    assert store.load_routes() == {} and store.route_revisions() == {}


# -- pending feedback ---------------------------------------------------------------------------


def test_pending_feedback_is_taken_once_and_expires(store: SqlRegistryStore) -> None:
    store.put_pending(
        [("r1", "digits", "eu", "digits@1", "acme"), ("r2", "digits", "us", "a2", None)], 100.0
    )
    # A second answer under the same (client-chosen) id does not replace the first.
    store.put_pending([("r1", "digits", "eu", "digits@2", "globex")], 200.0)
    store.put_pending([], 100.0)

    assert store.take_pending("r1", now=50.0) == ("digits", "eu", "digits@1", "acme")
    assert store.take_pending("r1", now=150.0) is None
    assert store.take_pending("absent", now=150.0) is None
    assert store.take_pending("r2", now=100.5) is None  # expired: not handed out
    store.put_pending([("r3", "digits", "eu", "a3", None)], 300.0)
    assert store.delete_expired_pending(now=150.0) == 1  # r2
    assert store.take_pending("r2", now=0.0) is None
    assert store.take_pending("r3", now=300.0) == ("digits", "eu", "a3", None)


def test_of_processes_taking_the_same_feedback_at_once_exactly_one_gets_it(
    stores: Callable[[], SqlRegistryStore],
) -> None:
    racers = [stores() for _ in range(3)]
    ids = [f"req-{i}" for i in range(15)]
    racers[0].put_pending([(rid, "digits", "all", f"arm-{rid}", None) for rid in ids], 1000.0)

    def take_all(store: SqlRegistryStore) -> list[str]:
        return [rid for rid in ids if store.take_pending(rid, now=10.0) is not None]

    taken = at_once([lambda store=store: take_all(store) for store in racers])
    assert sorted(rid for mine in taken for rid in mine) == sorted(ids)


# -- schema -------------------------------------------------------------------------------------


def test_a_version_2_registry_gains_the_cluster_tables_and_keeps_its_routes(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as before_version_3:
        before_version_3.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS[:2])
        before_version_3.setattr(migrations, "LATEST", 2)
        old = backend.open()
        old.apply_change("digits", {"n": 1}, actor="a", action="deploy", reason="", now=1.0)
        old.close()
    assert not backend.has_table("processes")

    store = backend.open()
    try:
        versions = [v for (v,) in backend.execute("SELECT version FROM {schema_version}")]
        assert versions == list(range(1, migrations.LATEST + 1))
        assert all(backend.has_table(t) for t in ("processes", "leases", "pending_feedback"))
        assert store.load_routes_with_revisions() == {"digits": ({"n": 1}, 1)}
        assert store.acquire_lease(LEASE, "a", ttl_s=1.0, now=1.0) == 1
        store.heartbeat("web-1", "a", 1, started_at=1.0, state={}, now=1.0)
        store.put_pending([("r", "digits", "all", "x", None)], 10.0)
    finally:
        store.close()


def test_a_cluster_table_dropped_by_hand_comes_back_empty(
    stores: Callable[[], SqlRegistryStore], backend: Backend
) -> None:
    store = stores()
    store.heartbeat("web-1", "a", 1, started_at=1.0, state={}, now=1.0)
    store.put_pending([("r", "digits", "all", "x", None)], 10.0)
    store.close()
    backend.execute("DROP TABLE {processes}")
    backend.execute("DROP TABLE {pending_feedback}")

    reopened = stores()
    assert reopened.processes(since=0.0) == []
    reopened.heartbeat("web-2", "b", 2, started_at=1.0, state={}, now=2.0)
    assert [p.id for p in reopened.processes(since=0.0)] == ["web-2"]
    reopened.put_pending([("r", "digits", "all", "y", None)], 10.0)
    assert reopened.take_pending("r", now=1.0) == ("digits", "all", "y", None)
    if backend.kind == "sqlite":  # the index came back with its table
        sql = "SELECT COUNT(*) FROM sqlite_master WHERE name = '{pending_feedback}_by_expiry'"
    else:
        sql = "SELECT COUNT(to_regclass('{pending_feedback}_by_expiry'))"
    assert backend.execute(sql) == [(1,)]


# -- a registry that cannot be reached ----------------------------------------------------------


def test_an_unreachable_postgres_is_a_503_without_the_password() -> None:
    pytest.importorskip("psycopg")
    with pytest.raises(SurgeError) as caught:
        open_store("postgresql://surge:hunter2@127.0.0.1:1/test", "c_unreachable")
    error = caught.value
    assert (error.code, error.status, error.retry_after_s) == ("store_unavailable", 503, 1.0)
    assert "hunter2" not in error.message and "127.0.0.1" in error.message


def test_a_terminated_connection_is_reopened_and_a_failed_reopen_is_a_503(
    postgres_url: str,
) -> None:
    import psycopg

    namespace = f"c_{uuid.uuid4().hex[:12]}"
    store = open_store(postgres_url, namespace)
    assert isinstance(store, SqlRegistryStore)

    def kill_the_connection() -> None:  # as a database restart would
        pid = store._conn.info.backend_pid
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))

    try:
        assert store.acquire_lease(LEASE, "a", ttl_s=10.0, now=1.0) == 1
        kill_the_connection()
        assert store.acquire_lease(LEASE, "a", ttl_s=10.0, now=2.0) == 1
        kill_the_connection()
        store.put_pending([("r", "digits", "all", "x", None)], 10.0)
        assert store.take_pending("r", now=3.0) == ("digits", "all", "x", None)

        # The server restarts, and is not back yet when the store reconnects.
        kill_the_connection()
        store.url = "postgresql://postgres:hunter2@127.0.0.1:1/test"  # type: ignore[attr-defined]
        started = time.monotonic()
        with pytest.raises(SurgeError) as caught:
            store.heartbeat("web-1", "a", 1, started_at=1.0, state={}, now=4.0)
        assert time.monotonic() - started < 5  # a reconnect gives up quickly
        assert (caught.value.code, caught.value.status) == ("store_unavailable", 503)
        assert caught.value.retry_after_s == 1.0 and "hunter2" not in caught.value.message
        with pytest.raises(SurgeError, match="cannot reach"):  # still down: still a 503
            store.processes(since=0.0)

        store.url = postgres_url  # type: ignore[attr-defined]
        store.heartbeat("web-1", "a", 1, started_at=1.0, state={}, now=5.0)
        assert [p.id for p in store.processes(since=0.0)] == ["web-1"]
    finally:
        store.close()
        drop_tables(postgres_url, namespace)


def test_a_statement_stuck_behind_a_lock_is_a_503(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import psycopg

    from surge.store import postgres

    monkeypatch.setattr(postgres, "STATEMENT_TIMEOUT", "300ms")
    namespace = f"c_{uuid.uuid4().hex[:12]}"
    store = open_store(postgres_url, namespace)
    try:
        store.acquire_lease(LEASE, "a", ttl_s=10.0, now=1.0)
        with psycopg.connect(postgres_url) as stuck:  # a process paused inside a transaction
            stuck.execute(f"SELECT * FROM {namespace}_leases FOR UPDATE")
            with pytest.raises(SurgeError) as caught:
                store.acquire_lease(LEASE, "a", ttl_s=10.0, now=2.0)
            assert (caught.value.code, caught.value.status) == ("store_unavailable", 503)
            stuck.rollback()
        assert store.acquire_lease(LEASE, "a", ttl_s=10.0, now=3.0) == 1
    finally:
        store.close()
        drop_tables(postgres_url, namespace)


def test_a_sqlite_registry_locked_past_the_busy_timeout_is_a_503(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from surge.store import sqlite

    monkeypatch.setattr(sqlite, "BUSY_TIMEOUT_S", 0.1)
    path = tmp_path / "registry.db"
    store = open_store(f"sqlite:///{path}", "c")
    try:
        with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as other:
            other.execute("BEGIN IMMEDIATE")  # another worker, stuck holding the write lock
            with pytest.raises(SurgeError) as caught:
                store.heartbeat("web-1", "a", 1, started_at=1.0, state={}, now=1.0)
            assert (caught.value.code, caught.value.status) == ("store_unavailable", 503)
            assert caught.value.retry_after_s == 1.0
            other.execute("ROLLBACK")
        store.heartbeat("web-1", "a", 1, started_at=1.0, state={}, now=1.0)
        assert len(store.processes(since=0.0)) == 1
    finally:
        store.close()


# -- the receipt sink ---------------------------------------------------------------------------


def test_the_receipt_sink_gets_the_registry_url_outside_its_argv(tmp_path: Path) -> None:
    from surge.observe.sink_client import SinkClient

    url = f"sqlite:///{tmp_path / 'receipts.db'}"
    ctx = RequestContext("req-1", "digits", deadline=101.0, received=100.0)
    ctx.wall_time, ctx.status = 100.0, 200
    ctx.stamp("responded", 100.004)
    sink = SinkClient(url, "c")
    try:
        sink.send([record_of(ctx, {})])
        assert sink.wait_settled(30)
        assert (sink.written, sink.failed) == (1, 0)  # it found the store
        process = sink._process
        assert process is not None
        argv = [str(arg) for arg in process.args]  # type: ignore[union-attr]
        assert argv == [sys.executable, "-m", "surge.observe.receipt_sink", "c"]
    finally:
        sink.close()
    store = open_store(url, "c")
    assert isinstance(store, SqlRegistryStore)
    try:
        assert [r["id"] for r in store.receipts_for("req-1")] == ["req-1"]
    finally:
        store.close()
