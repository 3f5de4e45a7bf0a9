"""The circuit breaker on a fake clock: trip, refuse, probe, close, re-open."""

from __future__ import annotations

import pytest

from surge.routing.breaker import (
    TRANSITION_HISTORY,
    BreakerPolicy,
    BreakerTransition,
    CircuitBreaker,
    IllegalTransition,
)

POLICY = BreakerPolicy(failure_threshold=3, window_s=10.0, open_s=5.0, half_open_probes=1)


def tripped(at: float = 0.0, policy: BreakerPolicy = POLICY) -> CircuitBreaker:
    b = CircuitBreaker(policy, name="embed")
    for i in range(policy.failure_threshold):
        b.record_failure(at - 0.1 * (policy.failure_threshold - 1 - i))
    assert b.state == "open"
    return b


def test_a_closed_breaker_lets_everything_through():
    b = CircuitBreaker(POLICY)
    assert b.state == "closed"
    assert all(b.allow(float(t)) for t in range(100))
    assert b.retry_after_s(0.0) == 0.0 and not b.transitions


def test_opens_after_the_threshold_of_failures_within_the_window():
    b = CircuitBreaker(POLICY, name="embed")
    b.record_failure(1.0)
    b.record_failure(5.0)
    assert b.state == "closed" and b.allow(5.0)
    b.record_failure(10.9)  # three failures inside 10 s
    assert b.state == "open" and not b.allow(10.9)
    assert list(b.transitions) == [(10.9, "closed", "open", "3 failures within 10 s")]


def test_failures_spread_wider_than_the_window_never_open_it():
    b = CircuitBreaker(POLICY)
    for t in range(0, 100, 5):  # one every 5 s: at most two in any 10 s
        b.record_failure(float(t))
        assert b.state == "closed", t
    assert b.allow(100.0)


def test_successes_do_not_hide_failures_in_the_window():
    b = CircuitBreaker(POLICY)
    for t in (1.0, 2.0):
        b.record_failure(t)
        b.record_success(t + 0.5)
    b.record_failure(3.0)
    assert b.state == "open"


def test_refuses_while_open_with_a_retry_after_that_counts_down():
    b = tripped(at=20.0)
    assert [b.retry_after_s(t) for t in (20.0, 21.0, 24.5)] == [5.0, 4.0, 0.5]
    assert not any(b.allow(t) for t in (20.0, 22.0, 24.99))
    assert b.state == "open"  # asking before open_s changes nothing
    assert b.retry_after_s(25.0) == 0.0 and b.retry_after_s(99.0) == 0.0


def test_late_answers_while_open_change_nothing():
    b = tripped(at=0.0)
    b.record_success(1.0)
    b.record_failure(2.0)
    assert b.state == "open" and b.retry_after_s(2.0) == 3.0


def test_half_open_admits_only_the_probe():
    b = tripped(at=0.0)
    assert b.allow(5.0)  # the probe
    assert b.state == "half_open"
    assert not b.allow(5.1) and not b.allow(6.0)
    assert b.retry_after_s(6.0) == POLICY.open_s


def test_half_open_admits_as_many_probes_as_the_policy_says():
    policy = BreakerPolicy(failure_threshold=1, open_s=2.0, half_open_probes=3)
    b = tripped(at=0.0, policy=policy)
    assert [b.allow(2.0 + i / 10) for i in range(5)] == [True, True, True, False, False]


def test_a_probe_success_closes_and_clears_the_failures():
    b = tripped(at=0.0)
    assert b.allow(5.0)
    b.record_success(5.2)
    assert b.state == "closed" and b.allow(5.3)
    b.record_failure(5.4)
    b.record_failure(5.5)  # had the three old failures been kept, this would trip it
    assert b.state == "closed"


def test_a_probe_failure_reopens_and_restarts_the_timer():
    b = tripped(at=0.0)
    assert b.allow(7.0)
    b.record_failure(7.5)
    assert b.state == "open"
    assert b.retry_after_s(7.5) == 5.0
    assert not b.allow(12.4)
    assert b.allow(12.5)  # the next probe, open_s after the failed one


def test_a_cancelled_probe_frees_its_slot():
    b = tripped(at=0.0)
    assert b.allow(5.0) and not b.allow(5.1)
    b.record_cancelled(5.2)
    assert b.state == "half_open" and b.allow(5.3)


def test_a_probe_that_never_answers_counts_as_a_failure():
    policy = BreakerPolicy(failure_threshold=1, open_s=5.0, probe_timeout_s=30.0)
    b = tripped(at=0.0, policy=policy)
    assert b.allow(5.0)
    assert not b.allow(34.9) and b.state == "half_open"
    assert not b.allow(35.0)
    assert b.state == "open" and b.transitions[-1] == (
        35.0,
        "half_open",
        "open",
        "probe gave no answer within 30 s",
    )
    assert b.allow(40.0)


def test_every_transition_is_recorded_with_its_reason():
    b = CircuitBreaker(POLICY, name="embed")
    for t in (0.0, 0.1, 0.2):
        b.record_failure(t)
    b.allow(5.2)
    b.record_failure(5.3)
    b.allow(10.3)
    b.record_success(10.4)
    assert list(b.transitions) == [
        BreakerTransition(0.2, "closed", "open", "3 failures within 10 s"),
        BreakerTransition(5.2, "open", "half_open", "open for 5 s: probing"),
        BreakerTransition(5.3, "half_open", "open", "probe failed"),
        BreakerTransition(10.3, "open", "half_open", "open for 5 s: probing"),
        BreakerTransition(10.4, "half_open", "closed", "probe succeeded"),
    ]
    first = b.transitions[0]
    assert (first.at, first.from_state, first.to_state) == (0.2, "closed", "open")


def test_the_transition_log_is_bounded():
    policy = BreakerPolicy(failure_threshold=1, open_s=1.0)
    b = CircuitBreaker(policy)
    now = 0.0
    for _ in range(TRANSITION_HISTORY):  # three transitions per lap
        b.record_failure(now)
        now += 1.0
        b.allow(now)
        b.record_success(now)
    assert len(b.transitions) == TRANSITION_HISTORY
    assert b.transitions[-1] == (now, "half_open", "closed", "probe succeeded")


@pytest.mark.parametrize(
    ("setup", "event"),
    [("closed", "cool_down"), ("open", "probe_succeeded")],
)
def test_illegal_events_raise_and_change_nothing(setup, event):
    # The call path cannot send these; the table guards against a future one that does.
    b = CircuitBreaker(POLICY, name="embed") if setup == "closed" else tripped(at=0.0)
    before = (b.state, b.opened_at, list(b.transitions))
    with pytest.raises(IllegalTransition, match=f"cannot {event} breaker 'embed' that is {setup}"):
        b._move(event, 1.0, "no such event here")
    assert (b.state, b.opened_at, list(b.transitions)) == before
    assert (b.allow(1.0), b.retry_after_s(1.0)) == (
        (True, 0.0) if setup == "closed" else (False, 4.0)
    )


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [({"failure_threshold": 0}, "failure_threshold"),
     ({"window_s": 0}, "window_s"),
     ({"open_s": -1}, "open_s"),
     ({"half_open_probes": 0}, "half_open_probes"),
     ({"probe_timeout_s": float("nan")}, "probe_timeout_s")],
)  # fmt: skip
def test_policy_validation(kwargs, words):
    with pytest.raises(ValueError, match=words):
        BreakerPolicy(**kwargs)
