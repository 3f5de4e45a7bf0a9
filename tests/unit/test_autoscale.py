"""The autoscaler on a fake clock: a step up reaches its count within two intervals, a
step down waits out cooldown and window and goes gradually, spikes and a square wave
do not flap it, min/max hold, pending replicas are not asked for twice, scale to zero
and back with the cold start flagged; decisions carry their numbers; config."""

from __future__ import annotations

import dataclasses
import itertools
import math

import pytest
from pydantic import ValidationError

from surge.config_autoscale import AutoscaleConfig
from surge.routing.autoscale import AutoscalePolicy, Autoscaler, ScaleDecision, Signals

POLICY = AutoscalePolicy(
    min_replicas=1,
    max_replicas=20,
    target_in_flight_rows_per_replica=16,
    target_queue_wait_ms=100,
    evaluate_interval_s=1.0,
    scale_down_cooldown_s=30,
    scale_down_window_s=30,
    scale_down_headroom=0.5,
)
MOST_ROWS_PER_S = 450.0  # one replica's throughput at full batches
BASE, PEAK = 300.0, 3000.0  # rows per second; PEAK needs 8 replicas at the target


class FakeEndpoint:
    """Replicas behind one queue, ready `start_s` after they are asked for. Rows in flight
    per replica follow a queueing curve fitted to the demo embed model's simulation,
    2.7 rho / (1 - rho), so fewer replicas hold more than proportionally more rows;
    past saturation (or with none ready) a second of arrivals piles up, as deadlines
    then drop the rest."""

    def __init__(
        self,
        policy: AutoscalePolicy = POLICY,
        *,
        replicas: int = 1,
        start_s: float = 0.0,
        throughput: float | None = MOST_ROWS_PER_S,
    ):
        self.scaler = Autoscaler(policy, now=0.0, replicas=replicas)
        self.start_s = start_s
        self.throughput = throughput  # what the driver reports as replica_rows_per_s
        self.ready_at = [0.0] * replicas
        self.counts: list[int] = []  # replicas after each tick
        self.decisions: list[ScaleDecision] = []

    def signals(self, now: float, rate: float) -> Signals:
        ready = sum(at <= now for at in self.ready_at)
        pending = len(self.ready_at) - ready
        rho = rate / (ready * MOST_ROWS_PER_S) if ready else math.inf
        if rho >= 0.98:
            return Signals(rate * 1.0, 1.0 if rate else 0.0, ready, pending, self.throughput)
        per_replica = 2.7 * rho / (1 - rho)
        wait = per_replica / MOST_ROWS_PER_S
        return Signals(ready * per_replica, wait, ready, pending, self.throughput)

    def tick(self, now: float, rate: float) -> ScaleDecision:
        self.scaler.observe(now, self.signals(now, rate))
        decision = self.scaler.decide(now)
        surplus = len(self.ready_at) - decision.desired
        if surplus > 0:  # pending ones go first: they serve nobody yet
            self.ready_at = sorted(self.ready_at)[: decision.desired]
        self.ready_at += [now + self.start_s] * -surplus
        self.counts.append(len(self.ready_at))
        self.decisions.append(decision)
        return decision

    def run(self, start: int, end: int, rate) -> list[ScaleDecision]:
        """One tick a second over [start, end); `rate` is rows/s or a function of time."""
        return [self.tick(float(t), rate(t) if callable(rate) else rate) for t in range(start, end)]


def changes(decisions: list[ScaleDecision]) -> list[tuple[float, str, int]]:
    return [(d.at, d.action, d.desired) for d in decisions if d.action != "hold"]


def direction_changes(counts: list[int]) -> int:
    steps = [b - a for a, b in itertools.pairwise(counts) if b != a]
    return sum(1 for a, b in itertools.pairwise(steps) if (a > 0) != (b > 0))


# -- up -----------------------------------------------------------------------------------


def test_a_step_in_rows_in_flight_jumps_to_the_count_by_the_second_interval():
    scaler = Autoscaler(POLICY, now=0.0, replicas=2)
    decisions = []
    for t in range(20):
        rows = 20.0 if t < 10 else 200.0  # ten times the rows from t=10, waits still short
        scaler.observe(float(t), Signals(rows, 0.02, ready=scaler.desired))
        decisions.append(scaler.decide(float(t)))
    # One jump, no +1 staircase, at the second sample that shows the step.
    assert changes(decisions) == [(11.0, "up", 13)]
    assert decisions[11].reason == (
        "200 rows in flight need 13 replicas at 16 each (2 ready + 0 pending)"
    )


def test_a_tenfold_launch_is_sized_by_its_arrival_rate_not_its_backlog():
    e = FakeEndpoint(start_s=5.0)
    assert changes(e.run(0, 100, BASE)) == []  # a tenth of the peak: one replica holds it
    e.run(100, 400, PEAK)
    # Saturated, the single replica's queue holds a second of arrivals: 3000 rows would
    # ask for 188 replicas. In flight / oldest wait gives the rate, and the jump serves
    # it at half a replica's full-batch throughput: 14, by the second sample.
    assert changes(e.decisions)[0] == (101.0, "up", 14)
    assert e.decisions[101].reason == (
        "overloaded (3000 rows in flight, the oldest waited 1000 ms): ~3000 rows/s arriving "
        "need 14 replicas at 50% of 450 rows/s each (1 ready + 0 pending)"
    )
    assert max(e.counts) == 14  # nothing more asked while they start
    # The margin is trimmed later, to the 8 replicas that hold 13.6 rows each.
    assert e.counts[-1] == 8
    assert e.decisions[-1].rows_per_ready_replica <= POLICY.target_in_flight_rows_per_replica


def test_without_a_throughput_the_backlog_jump_is_bounded_only_by_max():
    e = FakeEndpoint(start_s=5.0, throughput=None)
    e.run(0, 10, BASE)
    e.run(10, 20, PEAK)
    assert max(e.counts) == POLICY.max_replicas


def test_a_blip_of_one_interval_does_not_add_replicas():
    e = FakeEndpoint()
    e.run(0, 50, BASE)
    e.tick(50.0, PEAK)  # one sample at 10x
    e.run(51, 100, BASE)
    assert e.counts == [1] * 100


def test_queue_wait_past_its_target_doubles_the_ready_replicas_at_most():
    scaler = Autoscaler(POLICY, now=0.0, replicas=3)
    slow = Signals(in_flight_rows=20, queue_wait_s=0.5, ready=3)  # rows fine, wait 5x
    for t in (1.0, 2.0):
        scaler.observe(t, slow)
    decision = scaler.decide(2.0)
    assert (decision.action, decision.desired) == ("up", 6)
    assert decision.reason == "queue wait 500 ms > 100 ms: 6 replicas (3 ready + 0 pending)"


def test_pending_replicas_count_as_capacity_so_it_does_not_ask_again():
    scaler = Autoscaler(POLICY, now=0.0, replicas=2)
    busy = Signals(in_flight_rows=160, queue_wait_s=0.05, ready=2)
    scaler.observe(1.0, busy)
    scaler.observe(2.0, busy)
    assert scaler.decide(2.0).desired == 10
    # The 8 asked for are starting; the ready two still hold all the rows and their
    # queue waits long, yet neither signal asks again: 10 is already on its way.
    starting = Signals(in_flight_rows=160, queue_wait_s=0.4, ready=2, pending=8)
    for t in range(3, 8):
        scaler.observe(float(t), starting)
        decision = scaler.decide(float(t))
        assert (decision.action, decision.desired, decision.current) == ("hold", 10, 10)


def test_a_load_above_max_stops_at_max_and_says_so():
    policy = dataclasses.replace(POLICY, min_replicas=2, max_replicas=6)
    e = FakeEndpoint(policy, replicas=2)
    e.run(0, 60, PEAK * 2)
    assert max(e.counts) == 6 and e.counts[-1] == 6
    assert changes(e.decisions)[0][1:] == ("up", 6)
    assert e.decisions[1].reason.endswith("capped at max 6")


# -- down -----------------------------------------------------------------------------------


def test_a_step_down_waits_cooldown_and_window_then_halves_at_most():
    e = FakeEndpoint(replicas=8)
    e.run(0, 100, PEAK)
    assert e.counts[-1] == 8
    downs = changes(e.run(100, 400, BASE))
    # Nothing changed since t=0, so only the window counts: 30 s of samples that fit in
    # fewer, the first at t=100. Then one step per cooldown (30 s) + window (30 s).
    assert downs == [(130.0, "down", 4), (190.0, "down", 2), (250.0, "down", 1)]
    assert all(b[2] >= math.ceil(a[2] / 2) for a, b in itertools.pairwise([(0, "", 8), *downs]))
    assert e.decisions[130].reason == (
        "for 30 s the load fit 2 replicas at 50% of the targets; 8 -> 4 (at most half at once)"
    )


def test_no_scale_down_within_the_cooldown_of_a_scale_up():
    e = FakeEndpoint()
    e.run(0, 10, BASE)
    e.run(10, 20, PEAK / 3)  # up to 3 at t=11
    later = e.run(20, 100, BASE)
    down = [d for d in later if d.action == "down"]
    # The load fits one replica from t=20, but the window opens only after the cooldown
    # of the change at t=11 (t=41) and lasts 30 s.
    assert [d.at for d in down] == [71.0]
    assert later[0].reason == "load needs 1; cooldown: 21 s left"


def test_a_load_near_the_target_never_scales_down():
    e = FakeEndpoint(replicas=8)
    e.run(0, 600, PEAK * 0.9)  # 8 replicas at 75 % busy: 7 would hold it, not comfortably
    assert e.counts == [8] * 600
    assert e.decisions[-1].reason == "load needs 5 of 8: no room to scale down"


def test_never_below_min():
    policy = dataclasses.replace(POLICY, min_replicas=2)
    e = FakeEndpoint(policy, replicas=2)
    e.run(0, 600, 0.0)
    assert e.counts == [2] * 600
    assert e.decisions[-1].reason == "at min 2: load needs 0"


# -- no flapping ------------------------------------------------------------------------------


def test_spikes_shorter_than_the_cooldown_scale_up_once_and_stay_up():
    e = FakeEndpoint(start_s=5.0)
    e.run(0, 60, BASE)
    # Five 10 s launches, 30 s apart: each gap is shorter than cooldown + window.
    e.run(60, 260, lambda t: PEAK if (t - 60) % 40 < 10 else BASE)
    assert direction_changes(e.counts) <= 1  # the first spike's overshoot settles once
    ups = [d for d in e.decisions if d.action == "up"]
    assert all(d.at < 70 for d in ups)  # only the first spike adds replicas
    assert min(e.counts[70:260]) >= 8  # the later spikes find their replicas waiting
    e.run(260, 600, BASE)
    assert e.counts[-1] == 1  # and once the spikes stop, it comes down


def test_a_square_wave_faster_than_the_window_does_not_flap():
    e = FakeEndpoint(start_s=5.0)
    e.run(0, 60, BASE)
    wave = e.run(60, 660, lambda t: 2000.0 if (t - 60) % 40 < 20 else 600.0)  # 40 s period
    counts = e.counts[60:660]
    # One phase up (with its overshoot settling), then the count holds through 15 periods.
    assert direction_changes(counts) <= 1
    assert len({c for c in counts[120:]}) == 1
    calm = e.run(660, 1200, 600.0)
    # The calm phase only comes down.
    calm_counts = e.counts[659:1200]
    assert all(b <= a for a, b in itertools.pairwise(calm_counts))
    assert wave and calm and calm_counts[-1] < calm_counts[0]


# -- zero -----------------------------------------------------------------------------------


def test_scale_to_zero_after_idle_and_back_with_the_cold_start_flagged():
    policy = dataclasses.replace(POLICY, min_replicas=2, scale_to_zero_after_s=120)
    e = FakeEndpoint(policy, replicas=2, start_s=4.0)
    e.run(0, 200, 0.0)
    [to_zero] = changes(e.decisions)
    assert to_zero == (120.0, "down", 0)
    assert e.decisions[120].reason == "nothing in flight for 120 s"
    assert e.counts[-1] == 0

    back = e.run(200, 210, 50.0)  # rows arrive at an endpoint with nothing running
    assert (back[0].action, back[0].desired) == ("up", 2)  # min_replicas, not 1: at once
    assert back[0].reason == "cold start: 50 rows wait with no replica"
    assert [d.cold_start for d in back] == [True] * 4 + [False] * 6  # 4 s to start
    assert e.counts[-1] == 2


def test_without_scale_to_zero_an_idle_endpoint_keeps_min():
    e = FakeEndpoint()
    e.run(0, 3600, 0.0)
    assert e.counts == [1] * 3600


# -- decisions, clock, validation --------------------------------------------------------------


def test_a_decision_carries_the_numbers_it_used():
    scaler = Autoscaler(POLICY, now=0.0, replicas=2)
    busy = Signals(in_flight_rows=96.0, queue_wait_s=0.02, ready=2, pending=0)
    scaler.observe(1.0, busy)
    scaler.observe(2.0, busy)
    decision = scaler.decide(2.0)
    assert dataclasses.asdict(decision) == {
        "at": 2.0,
        "action": "up",
        "desired": 6,
        "current": 2,
        "ready": 2,
        "pending": 0,
        "need": 6,
        "in_flight_rows": 96.0,
        "rows_per_ready_replica": 48.0,
        "queue_wait_s": 0.02,
        "arriving_rows_per_s": None,  # only estimated under overload
        "cold_start": False,
        "reason": "96 rows in flight need 6 replicas at 16 each (2 ready + 0 pending)",
    }
    assert scaler.last_decision == decision


def test_stale_signals_hold():
    scaler = Autoscaler(POLICY, now=0.0)
    assert scaler.decide(0.0).reason == "no signals observed yet"
    busy = Signals(in_flight_rows=500, queue_wait_s=0.0, ready=1)
    scaler.observe(1.0, busy)
    scaler.observe(2.0, busy)
    decision = scaler.decide(10.0)  # the driver stalled for 8 s
    assert (decision.action, decision.desired) == ("hold", 1)
    assert decision.reason == "signals are 8.0 s old: holding"


def test_time_going_backwards_raises_and_changes_nothing():
    scaler = Autoscaler(POLICY, now=10.0)
    with pytest.raises(ValueError, match="time went backwards"):
        scaler.observe(9.0, Signals(100, 0.0, 1))
    assert scaler.decide(10.0).reason == "no signals observed yet"


@pytest.mark.parametrize(
    ("knobs", "message"),
    [
        ({"min_replicas": 0}, "min_replicas must be >= 1"),
        ({"min_replicas": 5, "max_replicas": 4}, "max_replicas 4 must be >= min_replicas 5"),
        ({"target_in_flight_rows_per_replica": 0}, "must be > 0"),
        ({"target_queue_wait_ms": math.nan}, "must be > 0"),
        ({"scale_down_headroom": 1.5}, r"must lie in \(0, 1\]"),
        ({"scale_down_window_s": -1}, "must be >= 0"),
        ({"scale_to_zero_after_s": 0}, "must be > 0"),
    ],
)
def test_a_policy_that_cannot_work_is_refused(knobs, message):
    with pytest.raises(ValueError, match=message):
        AutoscalePolicy(**knobs)


@pytest.mark.parametrize(
    "fields",
    [
        {"in_flight_rows": -1, "queue_wait_s": 0.0, "ready": 1},
        {"in_flight_rows": math.nan, "queue_wait_s": 0.0, "ready": 1},
        {"in_flight_rows": 1, "queue_wait_s": math.inf, "ready": 1},
        {"in_flight_rows": 1, "queue_wait_s": 0.0, "ready": -1},
    ],
)
def test_signals_out_of_range_are_refused(fields):
    with pytest.raises(ValueError):
        Signals(**fields)


def test_a_start_outside_min_max_is_refused():
    with pytest.raises(ValueError, match=r"replicas 30 must lie in \[1, 20\]"):
        Autoscaler(POLICY, now=0.0, replicas=30)


# -- config -----------------------------------------------------------------------------------


def test_the_config_defaults_are_the_policys_and_it_builds_one():
    assert AutoscaleConfig().policy() == AutoscalePolicy()
    config = AutoscaleConfig(max_replicas=12, scale_to_zero_after_s=600)
    assert config.policy() == dataclasses.replace(
        AutoscalePolicy(), max_replicas=12, scale_to_zero_after_s=600.0
    )
    # One field per knob, each with a description.
    assert set(AutoscaleConfig.model_fields) == {
        f.name for f in dataclasses.fields(AutoscalePolicy)
    }
    assert all(f.description for f in AutoscaleConfig.model_fields.values())


def test_the_config_refuses_unknown_keys_and_impossible_bounds():
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        AutoscaleConfig(target_rps=10)
    with pytest.raises(ValidationError, match="max_replicas 2 must be >= min_replicas 3"):
        AutoscaleConfig(min_replicas=3, max_replicas=2)
    with pytest.raises(ValidationError):
        AutoscaleConfig(scale_down_headroom=0)
