"""Burst modes on a fake clock: enter on any signal, leave one level per hold of calm,
no flapping, dwell, operator force and release, reasons with numbers, validation."""

from __future__ import annotations

import math

import pytest

from surge.routing.modes import (
    LoadSignals,
    ModeChange,
    ModeController,
    ModeLevel,
    ModePolicy,
    ModeSwitches,
    default_policy,
)

CALM = LoadSignals(queue_fill=0.05, p99_ratio=0.8, rejection_rate=0.0)
BURST = LoadSignals(queue_fill=0.97, p99_ratio=4.2, rejection_rate=0.12)  # 5x the usual load


def run(c: ModeController, start: float, end: float, signals: LoadSignals, step: float = 1.0):
    """Observe once per `step` seconds over [start, end); the changes made."""
    changes = []
    t = start
    while t < end:
        change = c.observe(t, signals)
        if change is not None:
            changes.append(change)
        t += step
    return changes


def test_a_burst_goes_straight_to_emergency_and_steps_down_one_level_per_hold():
    c = ModeController(default_policy(), now=0.0)
    assert run(c, 0, 30, CALM) == []
    assert c.mode == "normal" and c.switches == ModeSwitches()

    up = run(c, 30, 60, BURST)
    assert [(ch.at, ch.from_mode, ch.to_mode) for ch in up] == [(30, "normal", "emergency")]
    assert c.switches.allowed_tiers == 1 and c.switches.shed_priorities_below == 1

    down = run(c, 60, 120, CALM)
    assert [(ch.at, ch.from_mode, ch.to_mode) for ch in down] == [
        (70, "emergency", "surge"),  # 10 s of calm (hold_s) from the first calm sample
        (80, "surge", "normal"),  # and another 10 s for the next rung
    ]
    assert all(not ch.forced for ch in up + down)
    assert c.history == up + down


def test_a_ramp_enters_surge_then_emergency_without_waiting_out_the_dwell():
    c = ModeController(default_policy(), now=0.0)
    busy = LoadSignals(queue_fill=0.6, p99_ratio=1.0, rejection_rate=0.0)
    assert c.observe(1.0, busy) == ModeChange(1.0, "normal", "surge", "queue 60 % full >= 50 %",
                                              forced=False)  # fmt: skip
    assert c.switches == ModeSwitches(shadow=False, default_timeout_ms=500.0)
    # A burst that outgrows surge reaches emergency at once: the dwell holds back falls only.
    change = c.observe(1.5, BURST)
    assert change is not None and (change.from_mode, change.to_mode) == ("surge", "emergency")


def test_a_signal_oscillating_around_the_enter_threshold_changes_the_mode_once():
    c = ModeController(default_policy(), now=0.0)
    changes = []
    for i in range(200):  # 49 % / 51 % / 49 % ... for 200 s
        fill = 0.51 if i % 2 else 0.49
        change = c.observe(float(i), LoadSignals(fill, 1.0, 0.0))
        if change is not None:
            changes.append(change)
    assert [(ch.from_mode, ch.to_mode) for ch in changes] == [("normal", "surge")]


def test_a_signal_oscillating_around_the_exit_threshold_never_steps_down():
    c = ModeController(default_policy(), now=0.0)
    c.observe(0.0, BURST)
    changes = []
    for i in range(1, 200):  # above the 50 % exit of emergency every other second
        change = c.observe(float(i), LoadSignals(0.51 if i % 2 else 0.1, 1.0, 0.0))
        if change is not None:
            changes.append(change)
    assert changes == [] and c.mode == "emergency"


def test_any_signal_enters_but_all_must_be_calm_to_leave():
    c = ModeController(default_policy(), now=0.0)
    change = c.observe(0.0, LoadSignals(queue_fill=0.0, p99_ratio=1.0, rejection_rate=0.02))
    assert change is not None and change.to_mode == "surge"
    assert change.reason == "2.0 % refused >= 1 %"
    # queue and rejections calm, p99 still above surge's 1.1x exit: stays for a minute
    still = LoadSignals(queue_fill=0.0, p99_ratio=1.2, rejection_rate=0.0)
    assert run(c, 1, 60, still) == [] and c.mode == "surge"


def test_a_relapse_inside_the_hold_restarts_it():
    c = ModeController(default_policy(), now=0.0)
    c.observe(0.0, LoadSignals(0.6, 1.0, 0.0))  # surge
    assert run(c, 10, 19, CALM) == []  # 9 s of calm
    assert c.observe(19.0, LoadSignals(0.3, 1.0, 0.0)) is None  # above the 20 % exit
    assert run(c, 20, 29, CALM) == []  # the hold starts again at 20
    change = c.observe(30.0, CALM)
    assert change is not None and change.to_mode == "normal"


def test_reasons_name_the_signals_and_numbers():
    c = ModeController(default_policy(), now=0.0)
    up = c.observe(0.0, LoadSignals(queue_fill=0.92, p99_ratio=3.5, rejection_rate=0.0))
    assert up is not None
    assert up.reason == "queue 92 % full >= 80 %, p99 3.50x target >= 3x"
    c.observe(1.0, CALM)
    down = c.observe(11.0, CALM)
    assert down is not None and down.reason == (
        "calm for 10.0 s: queue 5 % full < 50 %, p99 0.80x target < 1.5x, 0.0 % refused < 1 %"
    )


def test_min_dwell_holds_back_even_a_warranted_step_down():
    policy = ModePolicy(default_policy().levels, hold_s=0.0, min_dwell_s=5.0)
    c = ModeController(policy, now=0.0)
    assert c.observe(0.0, LoadSignals(0.6, 1.0, 0.0)) is not None  # surge
    assert run(c, 1, 5, CALM) == []
    assert [ch.to_mode for ch in run(c, 5, 6, CALM)] == ["normal"]
    # but a burst right after a change is not held back: rises never wait
    assert c.observe(7.0, BURST) is not None and c.mode == "emergency"


def test_force_pins_a_mode_and_observe_only_tracks():
    c = ModeController(default_policy(), now=0.0)
    forced = c.force("emergency", 1.0, "incident 42")
    assert forced == ModeChange(1.0, "normal", "emergency", "incident 42", forced=True)
    assert c.forced and c.mode == "emergency"
    assert run(c, 2, 100, CALM) == [] and c.mode == "emergency"  # calm, yet pinned

    released = c.release(100.0)
    assert released == ModeChange(100.0, "emergency", "emergency", "operator released", False)
    assert not c.forced
    # calm was tracked throughout: the next observe steps down one rung at once
    change = c.observe(101.0, CALM)
    assert change is not None and (change.from_mode, change.to_mode) == ("emergency", "surge")
    assert c.history[-3:] == [forced, released, change]


def test_forcing_normal_during_a_burst_then_releasing_lets_observe_raise_it():
    c = ModeController(default_policy(), now=0.0)
    c.observe(0.0, BURST)
    c.force("normal", 1.0, "shedding hurts a launch")
    assert run(c, 2, 30, BURST) == [] and c.switches == ModeSwitches()
    c.release(30.0)
    change = c.observe(31.0, BURST)
    assert change is not None and (change.to_mode, change.forced) == ("emergency", False)


def test_force_ignores_the_dwell_release_when_automatic_is_a_no_op():
    c = ModeController(default_policy(), now=0.0)
    c.observe(0.0, BURST)
    assert c.force("surge", 0.5, "x").to_mode == "surge"  # 0.5 s after a change
    assert c.force("normal", 0.6, "y").from_mode == "surge"
    c.release(0.7)
    assert c.release(0.8) is None and len(c.history) == 4


def test_illegal_events_raise_and_change_nothing():
    c = ModeController(default_policy(), now=0.0)
    c.observe(5.0, BURST)
    before = (c.mode, c.forced, list(c.history))
    with pytest.raises(ValueError, match="unknown mode 'panic'"):
        c.force("panic", 6.0, "x")
    with pytest.raises(ValueError, match="time went backwards"):
        c.observe(4.0, CALM)
    with pytest.raises(ValueError, match="time went backwards"):
        c.force("normal", 4.0, "x")
    assert (c.mode, c.forced, c.history) == before


def _sampled(refused: int, offered: int) -> LoadSignals:
    return LoadSignals(0.05, 0.8, refused / offered if offered else 0.0, offered=offered)


def test_a_refusal_share_over_too_few_requests_never_flips_the_mode():
    policy = ModePolicy(default_policy().levels, hold_s=10.0, min_dwell_s=5.0, min_requests=20)
    c = ModeController(policy, now=0.0)
    # 2 of 3 refused is 67 %, far past emergency's 5 %, and evidence of nothing.
    assert run(c, 0, 60, _sampled(refused=2, offered=3)) == []
    assert run(c, 60, 70, _sampled(refused=19, offered=19)) == []
    assert c.mode == "normal"
    # The same share over enough requests is overload.
    change = c.observe(70.0, _sampled(refused=14, offered=20))
    assert change is not None and change.to_mode == "emergency"
    assert "70.0 % refused >= 5 %" in change.reason


def test_a_refusal_share_over_too_few_requests_does_not_hold_a_mode_up():
    policy = ModePolicy(default_policy().levels, hold_s=10.0, min_dwell_s=5.0, min_requests=20)
    c = ModeController(policy, now=0.0)
    assert c.observe(0.0, _sampled(refused=10, offered=100)).to_mode == "emergency"
    # Traffic falls to a trickle with one refusal in three: calm, so it steps down.
    down = run(c, 1, 30, _sampled(refused=1, offered=3))
    assert [(ch.at, ch.to_mode) for ch in down] == [(11, "surge"), (21, "normal")]


def test_signals_without_a_sample_size_are_taken_as_they_are():
    policy = ModePolicy(default_policy().levels, min_requests=20)
    c = ModeController(policy, now=0.0)
    assert c.observe(0.0, LoadSignals(0.05, 0.8, 0.06)).to_mode == "emergency"


def test_history_is_bounded():
    policy = ModePolicy(default_policy().levels, hold_s=0.0, min_dwell_s=0.0)
    c = ModeController(policy, now=0.0, history_limit=3)
    for i in range(10):
        c.observe(float(i), BURST if i % 2 == 0 else CALM)
    assert len(c.history) == 3 and c.history[-1].at == 9.0


@pytest.mark.parametrize(
    ("make", "words"),
    [(lambda: ModeLevel("s", enter_queue_fill=0.5, exit_queue_fill=0.5), "below enter_queue_fill"),
     (lambda: ModeLevel("s", enter_p99_ratio=2.0), "below enter_p99_ratio"),
     (lambda: ModeLevel("s", enter_queue_fill=-1, exit_queue_fill=-2), ">= 0"),
     (lambda: ModeLevel(""), "needs a name"),
     (lambda: ModePolicy(()), "at least one level"),
     (lambda: ModePolicy((ModeLevel("a"), ModeLevel("a"))), "unique"),
     (lambda: ModePolicy((ModeLevel("a"),), hold_s=-1), "hold_s"),
     (lambda: ModePolicy(tuple(default_policy().levels[i] for i in (0, 2, 1))), "must escalate"),
     (lambda: ModeSwitches(allowed_tiers=0), "allowed_tiers"),
     (lambda: ModeSwitches(default_timeout_ms=0), "default_timeout_ms"),
     (lambda: LoadSignals(math.nan, 1.0, 0.0), "queue_fill"),
     (lambda: LoadSignals(0.1, 1.0, 1.5), "rejection_rate"),
     (lambda: LoadSignals(0.1, 1.0, 0.5, offered=-1), "offered"),
     (lambda: ModePolicy((ModeLevel("a"),), min_requests=-1), "min_requests")],
)  # fmt: skip
def test_validation(make, words):
    with pytest.raises(ValueError, match=words):
        make()


def test_the_default_policy_has_hysteresis_on_every_signal():
    policy = default_policy()
    assert [level.name for level in policy.levels] == ["normal", "surge", "emergency"]
    for level in policy.levels[1:]:
        for signal in ("queue_fill", "p99_ratio", "rejection_rate"):
            assert level.exit(signal) < level.enter(signal) < math.inf
    assert policy.hold_s > policy.min_dwell_s > 0
