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


IDLE = state()  # nothing queued, no replica busy


def burst_then_quiet() -> tuple[BatchLatencyModel, float]:
    """Warm-up at ~5 ms a batch, then a burst of back-to-back batches that took 400 ms
    each under contention; the model, and when the burst's last batch finished."""
    latency = BatchLatencyModel()
    for rows in (1, 4, 10) * 3:
        latency.observe_warmup(rows, 0.005)
    now = 1000.0
    for i in range(60):
        now += 0.4
        latency.observe((10, 7, 4)[i % 3], 0.4, finished_at=now)
    return latency, now


def test_an_idle_deployment_admits_again_soon_after_a_burst_measured_under_contention():
    # The incident: a 4-row request to an idle endpoint refused in 0.5 ms as infeasible,
    # and nothing could correct it, since refused requests teach the model nothing.
    latency, burst_end = burst_then_quiet()
    for quiet_s in (1.0, 5.0, 600.0):
        now = burst_end + quiet_s
        decide(now=now, deadline=now + 0.300, rows=4, st=IDLE, latency=latency)
        assert completion_estimate_s(4, IDLE, latency, POLICY, now=now) < 0.150


def test_right_after_a_burst_or_under_load_the_measured_contention_still_counts():
    latency, burst_end = burst_then_quiet()
    with pytest.raises(SurgeError) as info:  # the last slow batch has only just finished
        decide(now=burst_end + 0.01, deadline=burst_end + 0.31, rows=4, st=IDLE, latency=latency)
    assert info.value.code == "deadline_infeasible"
    # Work queued or running means the batches ahead run under the load just measured,
    # however long ago the last one finished: the long queue is refused at once.
    now = burst_end + 60.0
    for busy in (state(requests=1, busy=1), state(requests=30, busy=1)):
        with pytest.raises(SurgeError) as info:
            decide(now=now, deadline=now + 0.300, rows=4, st=busy, latency=latency)
        assert info.value.code == "deadline_infeasible"


def test_without_a_clock_the_estimate_is_the_measured_one():
    # Callers that pass no `now` (a route comparing targets) get what the batches measured.
    latency, _ = burst_then_quiet()
    assert completion_estimate_s(4, IDLE, latency, POLICY) == pytest.approx(
        latency.estimate_s(4) + POLICY.max_queue_delay_s
    )
