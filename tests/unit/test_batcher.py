"""The batcher's decisions, driven by an explicit clock: no sleeps, no threads."""

from __future__ import annotations

import pytest

from surge.serving.batcher import Batcher, BatchingPolicy, QueuedRequest

T0 = 100.0


def make(max_batch: int = 4, delay_s: float = 0.010, preferred: tuple[int, ...] = ()) -> Batcher:
    return Batcher(BatchingPolicy(max_batch, delay_s, preferred))


def req(name: str, at: float = T0, rows: int = 1, deadline: float = T0 + 10, key: int = 0):
    return QueuedRequest(payload=name, rows=rows, arrival=at, deadline=deadline, key=key)


def names(step) -> list[str]:
    return [r.payload for r in step.batch]


def test_waits_for_the_batch_to_fill_until_the_oldest_has_waited_the_delay():
    b = make()
    b.push(req("a"))
    step = b.step(T0, idle_replicas=1)
    assert step.batch == () and step.wake_at == pytest.approx(T0 + 0.010)
    b.push(req("b", at=T0 + 0.004))
    assert b.step(T0 + 0.009, 1).batch == ()
    step = b.step(T0 + 0.010, 1)
    assert names(step) == ["a", "b"]
    assert len(b) == 0


def test_a_full_batch_closes_at_once():
    b = make(max_batch=3)
    for n in "abcd":
        b.push(req(n))
    step = b.step(T0, 1)
    assert names(step) == ["a", "b", "c"]
    assert b.queued_rows == 1


def test_nothing_closes_while_every_replica_is_busy_and_the_queue_keeps_filling():
    b = make(max_batch=8)
    for n in "abc":
        b.push(req(n))
    step = b.step(T0 + 1.0, idle_replicas=0)
    assert step.batch == ()
    b.push(req("d", at=T0 + 1.0))
    assert names(b.step(T0 + 1.0, 1)) == ["a", "b", "c", "d"]


def test_preferred_size_dispatches_without_waiting_for_the_delay():
    b = make(max_batch=16, preferred=(4, 8))
    for i in range(5):
        b.push(req(str(i)))
    step = b.step(T0, 1)
    assert len(step.batch) == 4
    assert b.queued_rows == 1


def test_requests_past_their_deadline_are_dropped_before_compute():
    b = make()
    b.push(req("late", deadline=T0 + 0.005))
    b.push(req("ok", deadline=T0 + 1))
    step = b.step(T0 + 0.006, idle_replicas=0)
    assert [r.payload for r in step.expired] == ["late"]
    assert step.wake_at == pytest.approx(T0 + 1)  # ask again by the next deadline
    assert names(b.step(T0 + 0.020, 1)) == ["ok"]


def test_multi_row_requests_fill_by_rows_and_never_split():
    b = make(max_batch=4)
    b.push(req("three", rows=3))
    b.push(req("two", rows=2))
    b.push(req("one", rows=1))
    step = b.step(T0 + 1, 1)
    assert names(step) == ["three", "one"] and step.rows == 4
    assert names(b.step(T0 + 1, 1)) == ["two"]


def test_oversized_request_is_refused_by_the_batcher():
    with pytest.raises(ValueError):
        make(max_batch=2).push(req("big", rows=3))


def test_text_is_grouped_by_length_and_the_oldest_is_always_served():
    b = make(max_batch=2)
    lengths = {"oldest-short": 5, "long-1": 200, "short-2": 6, "long-2": 190}
    for i, (name, key) in enumerate(lengths.items()):
        b.push(req(name, at=T0 + i * 0.001, key=key))
    assert names(b.step(T0 + 1, 1)) == ["oldest-short", "short-2"]
    assert names(b.step(T0 + 1, 1)) == ["long-1", "long-2"]


def test_empty_queue_needs_no_wake_up():
    step = make().step(T0, 2)
    assert step == type(step)()


def test_counts_stay_right_when_requests_leave_from_the_middle_and_by_expiry():
    b = make(max_batch=2)
    b.push(req("a", key=10, deadline=T0 + 5))
    b.push(req("far", key=500, deadline=T0 + 0.5))
    b.push(req("near", key=11, deadline=T0 + 5))
    b.push(req("b", key=400, deadline=T0 + 5))
    assert names(b.step(T0 + 0.1, 1)) == ["a", "near"]  # taken from the middle
    assert len(b) == 2 and b.queued_rows == 2
    step = b.step(T0 + 1.0, 0)
    assert [r.payload for r in step.expired] == ["far"]
    assert len(b) == 1 and step.wake_at == T0 + 5
    assert names(b.step(T0 + 1.0, 1)) == ["b"]
    assert len(b) == 0 and b.step(T0 + 1.0, 1) == type(step)()
    assert [r.payload for r in b.take_all()] == []


def test_requests_that_cannot_finish_within_the_next_batch_are_dropped_before_compute():
    b = make(max_batch=4)
    b.push(req("tight", deadline=T0 + 0.050))
    b.push(req("roomy", deadline=T0 + 0.500))
    # The next batch is expected to run 80 ms: "tight" would be answered 30 ms late.
    step = b.step(T0 + 0.010, idle_replicas=1, compute_s=0.080)
    assert [r.payload for r in step.expired] == ["tight"]
    assert names(step) == ["roomy"]


def test_wake_up_comes_early_enough_to_expire_before_compute():
    b = make(max_batch=4)
    b.push(req("a", deadline=T0 + 0.500))
    step = b.step(T0, idle_replicas=0, compute_s=0.100)
    assert step.wake_at == pytest.approx(T0 + 0.400)
