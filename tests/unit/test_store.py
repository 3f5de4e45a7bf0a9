"""The registry store, against SQLite in a temp dir and the real PostgreSQL where it runs."""

from __future__ import annotations

import itertools
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from surge.core.errors import SurgeError
from surge.store import RegistryStore, open_store

# Trust auth on 127.0.0.1; the role is `postgres` on most machines, `root` on some.
POSTGRES_URLS = (
    "postgresql://postgres@127.0.0.1:5432/test",
    "postgresql://root@127.0.0.1:5432/test",
)
SHA_A = "a" * 64
SHA_B = "b" * 64


def drop_tables(namespace: str) -> str:
    tables = (
        *("audit", "routes", "versions", "reviews", "receipts", "schema_version"),
        *("processes", "leases", "pending_feedback", "keys", "secrets"),
    )
    return "DROP TABLE IF EXISTS " + ", ".join(f"{namespace}_{t}" for t in tables)


@dataclass
class Backend:
    url: str
    namespace: str

    def open(self) -> RegistryStore:
        return open_store(self.url, self.namespace)


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
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    # A namespace per test: PostgreSQL cases share one database and must not see each other.
    namespace = f"t_{uuid.uuid4().hex[:12]}"
    if request.param == "sqlite":
        yield Backend(f"sqlite:///{tmp_path / 'registry' / 'registry.db'}", namespace)
        return
    url = request.getfixturevalue("postgres_url")
    yield Backend(url, namespace)
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(drop_tables(namespace))


@pytest.fixture
def store(backend: Backend) -> Iterator[RegistryStore]:
    opened = backend.open()
    yield opened
    opened.close()


def test_registering_a_version_twice_returns_the_first_record(store: RegistryStore) -> None:
    first = store.register_version("digits", "1", SHA_A, "config", now=1000.0)
    again = store.register_version("digits", "1", SHA_A, "alice", now=2000.0)

    assert first == again
    assert (again.registered_by, again.registered_at) == ("config", 1000.0)
    assert store.get_version("digits", "1") == first
    assert store.get_version("digits", "2") is None
    [entry] = store.audit()
    assert (entry.action, entry.actor, entry.endpoint, entry.before) == (
        "register",
        "config",
        None,
        None,
    )
    assert entry.after == {"model": "digits", "version": "1", "checksum": SHA_A}


def test_a_version_with_other_files_is_a_409_and_changes_nothing(store: RegistryStore) -> None:
    original = store.register_version("digits", "1", SHA_A, "config", now=1000.0)

    with pytest.raises(SurgeError) as caught:
        store.register_version("digits", "1", SHA_B, "alice", now=2000.0)

    assert (caught.value.code, caught.value.status) == ("checksum_conflict", 409)
    message = caught.value.message
    assert "digits" in message and "1" in message
    assert SHA_A[:12] in message and SHA_B[:12] in message
    assert store.get_version("digits", "1") == original
    assert len(store.audit()) == 1


def test_versions_list_by_model_then_registration_time(store: RegistryStore) -> None:
    store.register_version("text", "1", SHA_A, "config", now=5.0)
    store.register_version("digits", "2", SHA_B, "alice", now=3.0)
    store.register_version("digits", "1", SHA_A, "config", now=4.0)

    listed = [(r.model, r.version) for r in store.list_versions()]
    assert listed == [("digits", "2"), ("digits", "1"), ("text", "1")]
    assert [r.version for r in store.list_versions("digits")] == ["2", "1"]
    assert store.list_versions("absent") == []


def test_a_change_records_what_the_route_was_and_became(store: RegistryStore) -> None:
    first_doc = {"stable": "digits:1", "candidate": None, "weights": [1.0], "note": "für"}
    second_doc = {"stable": "digits:1", "candidate": "digits:2", "rollout": {"step": 1}}

    first = store.apply_change(
        "digits", first_doc, actor="config", action="deploy", reason="boot", now=10.0
    )
    second = store.apply_change(
        "digits", second_doc, actor="alice", action="deploy", reason="canary", now=11.0
    )

    assert (first.before, first.after) == (None, first_doc)
    assert (second.before, second.after) == (first_doc, second_doc)
    assert (second.actor, second.action, second.endpoint, second.reason, second.at) == (
        "alice",
        "deploy",
        "digits",
        "canary",
        11.0,
    )
    assert second.id > first.id
    assert store.audit("digits")[0] == second
    assert second.to_dict() == {
        "id": second.id,
        "at": 11.0,
        "actor": "alice",
        "action": "deploy",
        "endpoint": "digits",
        "before": first_doc,
        "after": second_doc,
        "reason": "canary",
    }
    assert store.load_route("digits") == second_doc
    assert store.load_route("absent") is None
    store.apply_change("text", {"stable": "text:1"}, actor="c", action="deploy", reason="", now=12)
    assert store.load_routes() == {"digits": second_doc, "text": {"stable": "text:1"}}


def test_the_audit_filters_by_endpoint_and_action_newest_first(store: RegistryStore) -> None:
    store.register_version("digits", "1", SHA_A, "config", now=1.0)
    changes = [
        ("digits", "deploy"),
        ("text", "deploy"),
        ("digits", "advance"),
        ("digits", "advance"),
        ("text", "rollback"),
        ("digits", "promote"),
    ]
    for i, (endpoint, action) in enumerate(changes):
        store.apply_change(
            endpoint, {"i": i}, actor="controller", action=action, reason=f"#{i}", now=2.0 + i
        )

    everything = store.audit()
    assert [e.reason for e in everything[:-1]] == ["#5", "#4", "#3", "#2", "#1", "#0"]
    assert everything[-1].action == "register"
    assert [e.id for e in everything] == sorted((e.id for e in everything), reverse=True)
    assert [e.reason for e in store.audit("digits")] == ["#5", "#3", "#2", "#0"]
    assert [e.reason for e in store.audit("digits", limit=2)] == ["#5", "#3"]
    assert [e.reason for e in store.audit(action="advance")] == ["#3", "#2"]
    assert [e.reason for e in store.audit("text", action="rollback")] == ["#4"]
    assert [e.action for e in store.audit(action="register")] == ["register"]
    assert store.audit("absent") == []
    assert store.audit(limit=0) == []


def test_everything_survives_a_restart(backend: Backend) -> None:
    before_restart = backend.open()
    record = before_restart.register_version("digits", "2", SHA_B, "alice", now=50.0)
    entry = before_restart.apply_change(
        "digits", {"candidate": "digits:2"}, actor="alice", action="deploy", reason="go", now=51.0
    )
    before_restart.close()

    after_restart = backend.open()  # creating the schema again is a no-op
    try:
        assert after_restart.get_version("digits", "2") == record
        assert after_restart.load_routes() == {"digits": {"candidate": "digits:2"}}
        assert after_restart.audit("digits") == [entry]
        later = after_restart.apply_change(
            "digits", {"candidate": None}, actor="bob", action="rollback", reason="bad", now=52.0
        )
        assert later.id > entry.id
        assert later.before == {"candidate": "digits:2"}
    finally:
        after_restart.close()


def _hammer(stores: list[RegistryStore], per_thread: int, change: Callable[..., Any]) -> None:
    """Two threads on each store (two processes' views of one database), all at once."""
    start = threading.Barrier(2 * len(stores))
    failures: list[BaseException] = []

    def run(store: RegistryStore, worker: str) -> None:
        start.wait()
        try:
            for i in range(per_thread):
                change(store, worker, i)
        except BaseException as exc:
            failures.append(exc)

    threads = [
        threading.Thread(target=run, args=(store, f"s{s}t{t}"))
        for s, store in enumerate(stores)
        for t in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not failures, failures


def test_concurrent_read_modify_writes_lose_no_update(backend: Backend) -> None:
    stores = [backend.open(), backend.open()]
    try:
        _hammer(
            stores,
            25,
            lambda store, worker, i: store.update_route(
                "digits",
                lambda doc: {"counter": (doc or {"counter": 0})["counter"] + 1, "by": worker},
                actor=worker,
                action="advance",
                reason=str(i),
                now=float(i),
            ),
        )
        assert stores[0].load_route("digits")["counter"] == 100
        assert stores[1].load_route("digits")["counter"] == 100
        entries = list(reversed(stores[1].audit("digits", limit=1000)))
        assert [e.after["counter"] for e in entries] == list(range(1, 101))
    finally:
        for store in stores:
            store.close()


def test_concurrent_changes_form_one_unbroken_history(backend: Backend) -> None:
    stores = [backend.open(), backend.open()]
    try:
        _hammer(
            stores,
            25,
            lambda store, worker, i: store.apply_change(
                "digits", {"by": worker, "i": i}, actor=worker, action="deploy", reason="", now=i
            ),
        )
        entries = list(reversed(stores[0].audit("digits", limit=1000)))
        assert len(entries) == 100
        # Each change saw exactly the doc the previous one wrote: none ran on a stale read.
        assert entries[0].before is None
        for previous, entry in itertools.pairwise(entries):
            assert entry.before == previous.after
        assert stores[1].load_route("digits") == entries[-1].after
    finally:
        for store in stores:
            store.close()


def test_a_lost_postgres_connection_is_reopened(postgres_url: str) -> None:
    import psycopg

    namespace = f"t_{uuid.uuid4().hex[:12]}"
    store = open_store(postgres_url, namespace)
    try:

        def kill_the_connection() -> None:  # as a database restart would
            pid = store._conn.info.backend_pid  # type: ignore[attr-defined]
            with psycopg.connect(postgres_url, autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", (pid,))

        store.apply_change("digits", {"n": 1}, actor="a", action="deploy", reason="", now=1.0)
        kill_the_connection()
        assert store.load_route("digits") == {"n": 1}
        kill_the_connection()
        entry = store.apply_change(
            "digits", {"n": 2}, actor="a", action="advance", reason="", now=2.0
        )
        assert (entry.before, entry.after) == ({"n": 1}, {"n": 2})
        assert [e.action for e in store.audit("digits")] == ["advance", "deploy"]
    finally:
        store.close()
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(drop_tables(namespace))


@pytest.mark.parametrize(
    "url", ["mysql://db/x", "redis://127.0.0.1:6379", "sqlite://relative.db", "sqlite:", ""]
)
def test_an_unknown_store_url_is_a_config_error(url: str) -> None:
    with pytest.raises(SurgeError) as caught:
        open_store(url)
    assert (caught.value.code, caught.value.status) == ("bad_config", 500)


def test_a_config_error_does_not_show_the_password() -> None:
    with pytest.raises(SurgeError) as caught:
        open_store("mysql://admin:hunter2@db/x")
    assert "hunter2" not in caught.value.message
    assert "admin:***@db" in caught.value.message


def test_a_namespace_must_be_a_plain_name(tmp_path: Path) -> None:
    with pytest.raises(SurgeError) as caught:
        open_store(str(tmp_path / "r.db"), namespace="x; DROP TABLE y")
    assert caught.value.code == "bad_config"


@pytest.mark.parametrize("url", [":memory:", "sqlite://:memory:", "sqlite:///:memory:"])
def test_an_in_memory_store_works(url: str) -> None:
    store = open_store(url)
    try:
        store.register_version("digits", "1", SHA_A, "config", now=1.0)
        assert [r.version for r in store.list_versions()] == ["1"]
    finally:
        store.close()


def test_a_bare_path_opens_sqlite_and_creates_its_directory(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "registry.db"
    store = open_store(str(path))
    store.apply_change("digits", {"n": 1}, actor="a", action="deploy", reason="", now=1.0)
    store.close()
    reopened = open_store(f"sqlite:///{path}")
    try:
        assert reopened.load_route("digits") == {"n": 1}
    finally:
        reopened.close()
