"""Admission decisions with measured latencies fed by hand."""

from __future__ import annotations

import pytest

from surge.core.errors import SurgeError
from surge.serving.admission import AdmissionPolicy, QueueState, admit, completion_estimate_s
from surge.serving.latency import BatchLatencyModel

POLICY = AdmissionPolicy(max_queue=100, max_batch_size=10, max_queue_delay_s=0.002)


def model(fixed_s: float = 0.010, per_row_s: float = 0.002) -> BatchLatencyModel:
    m = BatchLatencyModel()
    for rows in (1, 5, 10, 1, 10):
        m.observe(rows, fixed_s + per_row_s * rows)
    return m


def state(requests: int = 0, rows: int | None = None, busy: int = 0, replicas: int = 1):
    return QueueState(requests, requests if rows is None else rows, busy, replicas)


def decide(now=0.0, deadline=1.0, rows=1, st=None, latency=None, accepting=True):
    admit(
        now=now, deadline=deadline, rows=rows, state=st or state(), latency=latency or model(),
        policy=POLICY, accepting=accepting, endpoint="e",
    )  # fmt: skip


def test_latency_model_recovers_fixed_and_per_row_cost():
    m = model()
    assert m.estimate_s(1) == pytest.approx(0.012)
    assert m.estimate_s(10) == pytest.approx(0.030)
    assert m.drain_rate(10, replicas=2) == pytest.approx(2 * 10 / 0.030)


def test_admits_when_the_queue_has_room_and_the_deadline_is_feasible():
    decide(st=state(requests=20))


def test_full_queue_is_429_with_retry_after_from_the_drain_rate():
    # 100 rows at 10 rows per 30 ms on one replica drain in 0.3 s -> Retry-After 1 s;
    # with rows that take longer, the hint grows with them.
    with pytest.raises(SurgeError) as info:
        decide(st=state(requests=100))
    assert info.value.status == 429 and info.value.code == "queue_full"
    assert info.value.retry_after_s == 1.0
    slow = model(fixed_s=0.5, per_row_s=0.1)  # 1.5 s per 10-row batch
    with pytest.raises(SurgeError) as info:
        decide(st=state(requests=100, rows=100), latency=slow)
    assert info.value.retry_after_s == 15.0


def test_infeasible_deadline_is_refused_at_once_with_504():
    # 95 rows ahead: 10 batches of 30 ms -> ~300 ms; a 100 ms budget cannot make it.
    with pytest.raises(SurgeError) as info:
        decide(deadline=0.100, st=state(requests=95))
    assert info.value.status == 504 and info.value.code == "deadline_infeasible"
    assert "95 rows queued ahead" in info.value.message
    decide(deadline=0.400, st=state(requests=95))  # the same queue with enough time is fine


def test_more_replicas_make_the_same_queue_feasible():
    st_one = state(requests=60, replicas=1)
    st_three = state(requests=60, replicas=3)
    assert completion_estimate_s(1, st_three, model(), POLICY) < completion_estimate_s(
        1, st_one, model(), POLICY
    )
    with pytest.raises(SurgeError):
        decide(deadline=0.120, st=st_one)
    decide(deadline=0.120, st=st_three)


def test_not_ready_or_draining_is_503_with_retry_after():
    with pytest.raises(SurgeError) as info:
        decide(accepting=False)
    assert info.value.status == 503 and info.value.retry_after_s == 1.0
