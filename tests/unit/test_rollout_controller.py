"""The rollout controller on a fake clock: promote, hold, roll back, shadow, restore."""

from __future__ import annotations

import pytest

from surge.routing.rollout import (
    Advance,
    Hold,
    IllegalTransition,
    Promote,
    Rollback,
    RolloutController,
    RolloutPolicy,
    Snapshot,
    VersionWindow,
)

POLICY = RolloutPolicy(
    steps_percent=(1, 5, 25, 50, 100), min_requests=100, min_step_s=10, breach_min_requests=10
)


def healthy(requests: int = 100, p99_s: float = 0.02) -> Snapshot:
    return Snapshot(
        stable=VersionWindow(requests=1000, errors=1, p99_s=0.02, latency_samples=999),
        candidate=VersionWindow(requests=requests, errors=0, p99_s=p99_s, latency_samples=requests),
    )


def test_a_healthy_canary_steps_through_every_step_and_promotes():
    now = 0.0
    c = RolloutController(POLICY, step_started_at=now)
    seen = []
    for _ in range(len(POLICY.steps_percent)):
        assert c.evaluate(now + 9.9, healthy()) == Hold("step has run 9.9 of 10 s")
        now += 10
        decision = c.evaluate(now, healthy())
        seen.append(decision)
    assert [type(d) for d in seen] == [Advance, Advance, Advance, Advance, Promote]
    assert [d.percent for d in seen[:4]] == [5, 25, 50, 100]
    assert c.stage == "promoted" and c.percent == 100
    assert "passed with 100 requests" in seen[-1].reason


def test_holds_while_the_candidate_has_too_few_requests_whatever_the_time():
    c = RolloutController(POLICY, step_started_at=0.0)
    decision = c.evaluate(1000.0, healthy(requests=42))
    assert decision == Hold("42 of 100 candidate requests at 1 %")
    assert c.step == 0 and c.last_decision == decision


def test_an_error_rate_breach_rolls_back_at_once_and_names_the_figures():
    c = RolloutController(POLICY, step=2, step_started_at=0.0)
    bad = Snapshot(
        stable=VersionWindow(requests=500, errors=0),
        candidate=VersionWindow(requests=25, errors=3),
    )
    decision = c.evaluate(0.5, bad)  # long before the step could pass
    assert isinstance(decision, Rollback)
    assert decision.reason.startswith("candidate error rate 12.0% > stable 0.0% + 1.0%")
    assert c.stage == "rolled_back" and c.percent == 0


def test_a_p99_breach_rolls_back_once_both_have_enough_samples():
    policy = RolloutPolicy(min_requests=10, min_latency_samples=50, min_step_s=0)
    c = RolloutController(policy, step_started_at=0.0)
    few = healthy(requests=20, p99_s=0.5)  # 20 samples: the slowest one is not a p99
    assert not isinstance(c.evaluate(1.0, few), Rollback)
    slow = healthy(requests=200, p99_s=0.5)
    decision = RolloutController(policy, step_started_at=0.0).evaluate(1.0, slow)
    assert isinstance(decision, Rollback) and "p99 500.0 ms > stable p99 20.0 ms x 1.5" in (
        decision.reason
    )


def test_one_error_among_too_few_requests_is_not_a_breach():
    c = RolloutController(POLICY, step_started_at=0.0)
    one = Snapshot(
        stable=VersionWindow(requests=100), candidate=VersionWindow(requests=3, errors=1)
    )
    assert isinstance(c.evaluate(1.0, one), Hold) and c.stage == "canary"


def shadow(compared: int, agreement: float | None) -> Snapshot:
    return Snapshot(
        stable=VersionWindow(requests=compared),
        candidate=VersionWindow(requests=compared),
        shadow_compared=compared,
        shadow_agreement=agreement,
    )


def test_shadow_holds_until_compared_then_reports_criteria_met():
    c = RolloutController(POLICY, stage="shadow", step_started_at=0.0)
    assert c.percent == 0
    assert c.evaluate(20.0, shadow(5, 1.0)) == Hold("5 of 100 shadow comparisons")
    met = c.evaluate(20.0, shadow(150, 0.99))
    assert isinstance(met, Hold) and met.waiting_for.startswith("shadow criteria met")
    assert c.stage == "shadow" and c.percent == 0


def test_shadow_with_low_agreement_rolls_back():
    c = RolloutController(POLICY, stage="shadow", step_started_at=0.0)
    decision = c.evaluate(1.0, shadow(40, 0.7))
    assert isinstance(decision, Rollback) and "shadow agreement 0.7000 < 0.95" in decision.reason


def test_operator_promote_and_rollback():
    c = RolloutController(POLICY, step=1, step_started_at=0.0)
    assert c.promote(5.0, "looks good") == Promote("looks good")
    assert c.stage == "promoted"
    d = RolloutController(POLICY, stage="shadow", step_started_at=0.0)
    assert d.rollback(5.0, "changed my mind") == Rollback("changed my mind")


@pytest.mark.parametrize(
    ("stage", "event"),
    [("promoted", "evaluate"), ("rolled_back", "promote"), ("promoted", "rollback")],
)  # fmt: skip
def test_illegal_events_raise_and_change_nothing(stage, event):
    c = RolloutController(POLICY, stage=stage, step=1, step_started_at=3.0)
    calls = {
        "evaluate": lambda: c.evaluate(10.0, healthy()),
        "promote": lambda: c.promote(10.0),
        "rollback": lambda: c.rollback(10.0, "x"),
    }
    with pytest.raises(IllegalTransition) as raised:
        calls[event]()
    assert (raised.value.stage, raised.value.event) == (stage, event)
    assert (c.stage, c.step, c.step_started_at) == (stage, 1, 3.0)


def test_a_restored_controller_continues_from_the_same_step():
    c = RolloutController(POLICY, step_started_at=0.0)
    c.evaluate(10.0, healthy())
    c.evaluate(20.0, healthy())
    saved = c.to_dict()
    assert saved == {"stage": "canary", "step": 2, "step_started_at": 20.0}
    restored = RolloutController.from_dict(POLICY, saved)
    assert (restored.stage, restored.step, restored.percent) == ("canary", 2, 25)
    assert restored.evaluate(30.0, healthy()) == Advance(3, 50, restored.last_decision.reason)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [({"steps_percent": (5, 50)}, "last step must be 100"),
     ({"steps_percent": (50, 5, 100)}, "strictly increasing"),
     ({"steps_percent": (0, 100)}, "(0, 100]"),
     ({"min_requests": -1}, "min_requests"),
     ({"min_shadow_agreement": 2}, "min_shadow_agreement")],
)  # fmt: skip
def test_policy_validation(kwargs, words):
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace("]", r"\]")):
        RolloutPolicy(**kwargs)
