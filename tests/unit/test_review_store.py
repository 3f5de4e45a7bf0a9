"""The human-review queue and its labelled feedback, on SQLite and the real PostgreSQL."""

from __future__ import annotations

import math
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from surge.core.errors import SurgeError
from surge.store import RegistryStore, ReviewItem, open_store

POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
TABLES = (
    "reviews",
    "audit",
    "routes",
    "versions",
    "receipts",
    "schema_version",
    "processes",
    "leases",
    "pending_feedback",
    "keys",
    "secrets",
)

OpenStore = Callable[[], RegistryStore]


@pytest.fixture(scope="session")
def reachable_postgres() -> str:
    psycopg = pytest.importorskip("psycopg")
    try:
        psycopg.connect(POSTGRES_URL, connect_timeout=3).close()
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL is not reachable at {POSTGRES_URL}: {exc}")
    return POSTGRES_URL


@pytest.fixture(params=["sqlite", "postgresql"])
def open_review_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OpenStore]:
    """Opens stores on one database (each open is another process's view of it); a fresh
    namespace per test keeps the PostgreSQL cases apart, and their tables are dropped after."""
    namespace = f"rq_{uuid.uuid4().hex[:12]}"
    on_postgres = request.param == "postgresql"
    url = request.getfixturevalue("reachable_postgres") if on_postgres else str(tmp_path / "r.db")
    opened: list[RegistryStore] = []

    def open_one() -> RegistryStore:
        opened.append(open_store(url, namespace))
        return opened[-1]

    yield open_one
    for store in opened:
        store.close()
    if on_postgres:
        import psycopg

        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("DROP TABLE IF EXISTS " + ", ".join(f"{namespace}_{t}" for t in TABLES))


@pytest.fixture
def store(open_review_store: OpenStore) -> RegistryStore:
    return open_review_store()


def queue(
    store: RegistryStore, endpoint: str = "digits", now: float = 100.0, **extra: Any
) -> ReviewItem:
    fields: dict[str, Any] = {
        "request_id": f"req-{now}",
        "inputs": {"pixels": [[0.0, 0.5, 1.0]]},
        "answer": {"label": [3], "probabilities": [[0.1, 0.45, 0.0, 0.45]]},
        "confidence": 0.45,
        "served_by": "digits-large@2",
    }
    return store.add_review(endpoint=endpoint, now=now, **(fields | extra))


def test_a_queued_answer_is_kept_exactly_as_given(store: RegistryStore) -> None:
    pixels = [[round(i * 0.001 + j, 3) for i in range(64)] for j in range(16)]  # a few KB
    answer = {"label": [7], "probabilities": [[0.3, 0.25, 0.45]], "note": "für"}

    item = store.add_review(
        endpoint="digits",
        request_id="req-1",
        inputs={"pixels": pixels},
        answer=answer,
        confidence=0.45,
        served_by="digits-large@2",
        now=1000.5,
    )

    assert item == ReviewItem(
        item.id,
        "digits",
        "req-1",
        1000.5,
        {"pixels": pixels},
        answer,
        0.45,
        "digits-large@2",
        None,
        None,
        None,
    )
    assert store.list_reviews() == [item]
    assert item.to_dict()["inputs"] == {"pixels": pixels}
    assert set(item.to_dict()) == {
        "id",
        "endpoint",
        "request_id",
        "created_at",
        "inputs",
        "answer",
        "confidence",
        "served_by",
        "label",
        "labelled_by",
        "labelled_at",
    }
    answer["label"] = [1]  # the item is a copy of what was stored, not the caller's dict
    assert item.answer["label"] == [7]


def test_the_queue_is_oldest_first_and_a_history_newest_first(store: RegistryStore) -> None:
    late = queue(store, "digits", now=30.0)
    early = queue(store, "digits", now=10.0)  # queued after, but answered before
    text = queue(store, "text", now=20.0)
    labelled = queue(store, "digits", now=5.0)
    store.label_review(labelled.id, 4, actor="alice", now=40.0)

    assert [r.id for r in store.list_reviews()] == [early.id, text.id, late.id]
    assert [r.id for r in store.list_reviews(endpoint="digits")] == [early.id, late.id]
    assert [r.id for r in store.list_reviews(endpoint="digits", limit=1)] == [early.id]
    assert [r.id for r in store.list_reviews(pending=False)] == [labelled.id]
    assert [r.id for r in store.list_reviews(pending=None)] == [
        late.id,
        text.id,
        early.id,
        labelled.id,
    ]
    assert [r.id for r in store.list_reviews(endpoint="text", pending=None)] == [text.id]
    assert store.list_reviews(endpoint="absent") == []
    assert store.list_reviews(limit=0) == []


def test_a_label_takes_the_item_off_the_queue_and_into_feedback(store: RegistryStore) -> None:
    first, second, third = (queue(store, now=float(n)) for n in (1, 2, 3))

    labelled = store.label_review(first.id, 9, actor="alice", now=50.0)

    assert labelled == ReviewItem(
        first.id,
        "digits",
        first.request_id,
        1.0,
        first.inputs,
        first.answer,
        first.confidence,
        first.served_by,
        9,
        "alice",
        50.0,
    )
    assert [r.id for r in store.list_reviews()] == [second.id, third.id]
    # Any JSON but null is a label: a class name, a list of boxes, a correction doc.
    store.label_review(third.id, "seven", actor="bob", now=60.0)
    store.label_review(second.id, {"boxes": [[0, 0, 4, 4]]}, actor="bob", now=55.0)
    feedback = store.labelled_feedback()
    assert [(r.id, r.label, r.labelled_by) for r in feedback] == [
        (third.id, "seven", "bob"),
        (second.id, {"boxes": [[0, 0, 4, 4]]}, "bob"),
        (first.id, 9, "alice"),
    ]
    assert store.labelled_feedback(limit=1) == feedback[:1]
    assert store.list_reviews(pending=True) == []


def test_feedback_and_counts_filter_by_endpoint(store: RegistryStore) -> None:
    assert store.count_reviews() == {"pending": 0, "labelled": 0}
    digits = [queue(store, "digits", now=float(n)) for n in range(3)]
    text = [queue(store, "text", now=float(n)) for n in range(2)]
    store.label_review(digits[0].id, 1, actor="alice", now=10.0)
    store.label_review(text[1].id, "spam", actor="bob", now=11.0)

    assert store.count_reviews() == {"pending": 3, "labelled": 2}
    assert store.count_reviews("digits") == {"pending": 2, "labelled": 1}
    assert store.count_reviews("text") == {"pending": 1, "labelled": 1}
    assert store.count_reviews("absent") == {"pending": 0, "labelled": 0}
    assert [r.label for r in store.labelled_feedback(endpoint="text")] == ["spam"]
    assert [r.label for r in store.labelled_feedback(endpoint="digits")] == [1]
    assert store.labelled_feedback(endpoint="absent") == []


def test_labelling_an_unknown_item_is_a_404(store: RegistryStore) -> None:
    queue(store)
    with pytest.raises(SurgeError) as caught:
        store.label_review(987654, 3, actor="alice", now=1.0)
    assert (caught.value.code, caught.value.status) == ("review_not_found", 404)
    assert "987654" in caught.value.message
    assert store.count_reviews() == {"pending": 1, "labelled": 0}


def test_a_second_label_is_a_409_and_the_first_stands(store: RegistryStore) -> None:
    item = queue(store)
    first = store.label_review(item.id, 3, actor="alice", now=86400.0)

    with pytest.raises(SurgeError) as caught:
        store.label_review(item.id, 5, actor="bob", now=86401.0)

    assert (caught.value.code, caught.value.status) == ("already_labelled", 409)
    assert "alice" in caught.value.message and "1970-01-02T00:00:00" in caught.value.message
    assert store.labelled_feedback() == [first]


def test_reviewers_racing_on_one_item_leave_exactly_one_label(
    open_review_store: OpenStore,
) -> None:
    stores = [open_review_store(), open_review_store()]  # two processes' connections
    items = [queue(stores[0], now=float(n)) for n in range(10)]
    reviewers = [(store, f"s{s}r{r}") for s, store in enumerate(stores) for r in range(2)]
    start = threading.Barrier(len(reviewers))
    wins: dict[int, list[str]] = {item.id: [] for item in items}
    conflicts: list[str] = []
    unexpected: list[BaseException] = []

    def review(store: RegistryStore, name: str) -> None:
        start.wait()
        for item in items:
            try:
                store.label_review(item.id, name, actor=name, now=200.0)
                wins[item.id].append(name)
            except SurgeError as exc:
                conflicts.append(exc.code)
            except BaseException as exc:
                unexpected.append(exc)

    threads = [threading.Thread(target=review, args=reviewer) for reviewer in reviewers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert not unexpected, unexpected
    assert all(len(winners) == 1 for winners in wins.values()), wins
    assert conflicts == ["already_labelled"] * (len(reviewers) - 1) * len(items)
    stored = {r.id: (r.label, r.labelled_by) for r in stores[1].labelled_feedback()}
    assert stored == {item_id: (w[0], w[0]) for item_id, w in wins.items()}


def test_the_queue_and_its_labels_survive_a_restart(open_review_store: OpenStore) -> None:
    before = open_review_store()
    pending = queue(before, now=1.0)
    labelled = before.label_review(queue(before, now=2.0).id, 8, actor="alice", now=3.0)
    before.close()

    after = open_review_store()  # creating the schema again is a no-op
    assert after.list_reviews() == [pending]
    assert after.labelled_feedback() == [labelled]
    later = queue(after, now=4.0)
    assert later.id > labelled.id
    assert after.count_reviews() == {"pending": 2, "labelled": 1}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("answer", {"probabilities": [[math.nan, 1.0]]}),
        ("inputs", {"pixels": [[math.inf]]}),
        ("inputs", {"text": "a\x00b"}),
        ("confidence", math.nan),
        ("answer", {"raw": object()}),
    ],
)
def test_a_value_that_is_not_json_is_a_400_and_queues_nothing(
    store: RegistryStore, field: str, value: Any
) -> None:
    with pytest.raises(SurgeError) as caught:
        queue(store, **{field: value})
    assert (caught.value.code, caught.value.status) == ("invalid_input", 400)
    assert field in caught.value.message
    assert store.count_reviews() == {"pending": 0, "labelled": 0}


@pytest.mark.parametrize("label", [None, math.nan, "nul\x00"])
def test_a_label_that_is_not_json_is_a_400_and_leaves_the_item_pending(
    store: RegistryStore, label: Any
) -> None:
    item = queue(store)
    with pytest.raises(SurgeError) as caught:
        store.label_review(item.id, label, actor="alice", now=2.0)
    assert (caught.value.code, caught.value.status) == ("invalid_input", 400)
    assert store.list_reviews() == [item]
    # A backslash before "u0000" is text, not a NUL: it is a label like any other.
    assert store.label_review(item.id, "\\u0000", actor="alice", now=3.0).label == "\\u0000"
