"""Review items are written in the background: an answer never waits on the database, a
stuck or dead database costs dropped (and counted) items, never stalled requests."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from surge.api.state import ServerState
from surge.config import Config
from surge.core.context import RequestContext
from surge.store import open_store
from surge.store.background_writer import BackgroundWriter
from surge.store.review_writer import pending_reviews, review_writer

PATIENCE_S = 5.0  # only a broken writer waits this long


async def until(condition: Callable[[], bool]) -> None:
    """Wait for a condition the writer's thread makes true (bounded; no guessed sleeps)."""
    async with asyncio.timeout(PATIENCE_S):
        while not condition():
            await asyncio.sleep(0.001)


class Database:
    """A fake store whose writes can be held (a stuck database) or made to fail."""

    def __init__(self) -> None:
        self.rows: list[object] = []
        self.open = threading.Event()
        self.open.set()
        self.entered = threading.Event()  # a write is under way (possibly held)
        self.failing = False

    def write(self, record: object) -> None:
        self.entered.set()
        if not self.open.wait(PATIENCE_S):
            raise TimeoutError("held past the test's patience")
        if self.failing:
            raise ConnectionError("server closed the connection unexpectedly")
        self.rows.append(record)


def writer(db: Database, **overrides) -> BackgroundWriter[object]:
    settings = {"capacity": 4, "batch_size": 2, "write_timeout_s": 30.0}
    return BackgroundWriter(
        "review writer", db.write, metric="surge_review_items_dropped", **{**settings, **overrides}
    )


def test_records_are_written_in_order_and_close_drains_them():
    async def scenario() -> tuple[list[object], dict[str, int]]:
        db = Database()
        w = writer(db, capacity=100)
        w.start()
        for i in range(10):
            assert w.offer(i)
        await w.close(PATIENCE_S)
        return db.rows, w.dropped

    rows, dropped = asyncio.run(scenario())
    assert rows == list(range(10))
    assert sum(dropped.values()) == 0


def test_a_stuck_database_never_blocks_offer_and_a_full_queue_drops_and_counts(caplog):
    async def scenario() -> tuple[bytes, Database]:
        db = Database()
        db.open.clear()  # the database stops answering
        w = writer(db, capacity=4, batch_size=2)
        registry = CollectorRegistry()
        registry.register(w)
        w.start()
        w.offer("first")
        await until(db.entered.is_set)  # the writer holds "first", waiting on the database
        accepted = [w.offer(i) for i in range(10)]  # returns at once: nothing awaits the DB
        assert accepted == [True] * 4 + [False] * 6
        text = generate_latest(registry)
        db.open.set()
        await w.close(PATIENCE_S)
        return text, db

    with caplog.at_level(logging.WARNING, logger="surge.store.writer"):
        text, db = asyncio.run(scenario())
    assert b'surge_review_items_dropped_total{reason="queue_full"} 6.0' in text
    assert db.rows == ["first", 0, 1, 2, 3]  # the queued ones are written once it answers
    drops = [r for r in caplog.records if "dropping new ones" in r.getMessage()]
    assert len(drops) == 1  # one line per burst, not one per record


def test_a_batch_past_its_deadline_stops_and_the_writer_goes_on(caplog):
    def overdue() -> bool:
        return any("took over 0.01 s" in r.getMessage() for r in caplog.records)

    async def scenario() -> tuple[BackgroundWriter[object], Database]:
        db = Database()
        db.open.clear()
        w = writer(db, capacity=10, batch_size=3, write_timeout_s=0.01)
        w.start()
        for name in ("a", "b", "c"):
            w.offer(name)
        # The deadline passes while "a" is held; once "a" returns the batch stops there.
        await until(overdue)
        db.open.set()
        await until(lambda: w.pending == 0)
        w.offer("d")
        await w.close(PATIENCE_S)
        return w, db

    with caplog.at_level(logging.WARNING, logger="surge.store.writer"):
        w, db = asyncio.run(scenario())
    assert db.rows == ["a", "d"]
    assert w.dropped["timed_out"] == 2  # "b" and "c": never sent to the stuck database


def test_failures_are_counted_logged_once_and_the_writer_recovers(caplog):
    async def scenario() -> Database:
        db = Database()
        db.failing = True
        w = writer(db, capacity=10, batch_size=1)
        w.start()
        for i in range(3):
            w.offer(i)
        await until(lambda: w.dropped["failed"] == 3)
        db.failing = False
        w.offer("back")
        await w.close(PATIENCE_S)
        return db

    with caplog.at_level(logging.WARNING, logger="surge.store.writer"):
        db = asyncio.run(scenario())
    assert db.rows == ["back"]
    messages = [r.getMessage() for r in caplog.records]
    assert sum("not written: server closed the connection" in m for m in messages) == 1
    assert any("writing again" in m for m in messages)


def test_close_is_bounded_when_the_database_never_answers():
    async def scenario() -> tuple[BackgroundWriter[object], float]:
        db = Database()
        db.open.clear()
        w = writer(db, capacity=10, batch_size=2)
        w.start()
        for i in range(5):
            w.offer(i)
        await until(db.entered.is_set)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await w.close(0.05)
        took = loop.time() - started
        assert not w.offer("late")  # closed: refused and counted, never queued
        db.open.set()  # let the abandoned thread end
        return w, took

    w, took = asyncio.run(scenario())
    assert took < 1.0
    assert w.dropped["shutdown"] == 6  # 2 in flight, 3 queued, 1 offered after close


# -- the cascade's review sink ------------------------------------------------------------


class StuckStore:
    """A registry whose database has stopped answering."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def add_review(self, **fields) -> None:
        self.release.wait(PATIENCE_S)


def _doubts() -> tuple[np.ndarray, dict, dict, np.ndarray]:
    rows = np.array([1, 3])
    inputs = {"input": np.arange(8, dtype=np.float32).reshape(2, 4)}
    answer = {"label": np.array([7, 2]), "text": np.array([b"seven", b"two"], dtype=object)}
    return rows, inputs, answer, np.array([0.4, 0.3])


def test_queueing_reviews_does_not_wait_on_a_stuck_database():
    async def scenario() -> float:
        state = ServerState(Config())
        state.store = store = StuckStore()  # type: ignore[assignment]
        state.reviews = review_writer(store)  # type: ignore[arg-type]
        state.reviews.start()
        ctx = RequestContext("req-1", "smart", deadline=1e9, received=0.0)
        loop = asyncio.get_running_loop()
        started = loop.time()
        rows, inputs, answer, confidence = _doubts()
        await asyncio.wait_for(
            state._queue_for_review("smart", ctx, rows, inputs, answer, confidence, "d@2"),
            PATIENCE_S,
        )
        took = loop.time() - started
        store.release.set()
        await state.reviews.close(PATIENCE_S)
        return took

    assert asyncio.run(scenario()) < 0.5


def test_review_records_reach_the_real_store(tmp_path: Path):
    store = open_store(str(tmp_path / "r.db"), "rw")
    rows, inputs, answer, confidence = _doubts()
    records = pending_reviews("smart", "req-1", rows, inputs, answer, confidence, "d@2", 1.0)
    inputs["input"][:] = -1  # the request's arrays may be reused once it is answered

    async def scenario() -> BackgroundWriter:
        w = review_writer(store)
        w.start()
        for record in records:
            w.offer(record)
        await w.close(PATIENCE_S)
        return w

    try:
        asyncio.run(scenario())
        items = store.list_reviews()
    finally:
        store.close()
    assert [i.request_id for i in items] == ["req-1#1", "req-1#3"]
    assert items[0].inputs == {"input": [0.0, 1.0, 2.0, 3.0]}
    # A 1-D BYTES output's row is one bytes value (its _jsonable once raised on it).
    assert items[1].answer == {"label": 2, "text": "two"}
    assert items[0].confidence == pytest.approx(0.4)
