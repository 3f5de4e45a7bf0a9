"""The autoscaler: chooses one endpoint's replica count from live load signals and an
explicit clock (sans-IO).

The driver samples the endpoint every `evaluate_interval_s`, calls
`observe(now, signals)` then `decide(now)`, and reconciles its replicas with the
decision's `desired` (a level, not a delta: a replica lost on the way is asked for
again). Every decision carries the numbers it used, to be audited and exported.

Up is fast, down is slow:
- **Up.** The load needs `ceil(rows in flight / target rows per replica)` replicas;
  when rows wait longer than the wait target (a model slower than the row target
  assumes), up to twice the ready replicas as well. The count jumps to the need once
  two samples in a row show it (a one-interval blip does not add replicas): stepping
  one replica at a time would leave a launch spike short of capacity for as many
  intervals as it needs replicas. Replicas asked for but not ready yet (pending:
  loading, warming, a Ray actor waiting for a node) count as capacity, so a slow start
  does not make it ask again: the wait rule scales only the ready replicas, and not
  while others start or in the sample where they join (the oldest row's wait then
  describes the replicas that were serving before).
- **Overload.** Past saturation the rows in flight are a backlog (everything that
  arrived within a deadline), not concurrency, and their count would ask for many
  times the replicas the arrival rate needs. The queue is FIFO, so the rows in flight
  arrived within the oldest one's wait: in flight / wait is the arrival rate. When the
  driver gives one replica's throughput at full batches, the jump is capped at
  the count that serves that rate at half of it (the down side trims the margin; a
  cap that falls short leaves the wait high, and the wait rule keeps adding).
  Without it, the jump is bounded only by `max_replicas`.
- **Down.** Only when the load would fit in fewer replicas at `scale_down_headroom` of
  both targets for `scale_down_window_s` in a row, a window that starts
  `scale_down_cooldown_s` after any change; to the largest count that window needed and
  at most half at a time. Rows in flight per replica grow faster than the load on it as
  it nears saturation (queueing), so the estimate lets them grow with the square of
  each replica's share, and halving then re-measuring at each new count keeps a fall
  that went too far from having to climb back. The gap between the headroom and 1 is
  the hysteresis: a load that sits at the target never scales down.
- **Zero** (optional). With nothing in flight for `scale_to_zero_after_s`, the
  endpoint goes to 0 replicas; the first rows that arrive bring back the count they
  need (never fewer than `min_replicas`) and every decision while rows wait with no
  replica ready says `cold_start`, so the caller can show it in the answer's timing.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Literal

# A queue wait past its target multiplies the ready replicas by at most this much per
# evaluation: the wait says capacity is short, not by how much (a backlog's oldest row
# keeps ageing however many replicas are on their way).
_MOST_WAIT_GROWTH = 2.0
# Under overload, the arrival rate is served at this share of a replica's full-batch
# throughput: replicas at the targets run on partial batches, below their best.
_OVERLOAD_SHARE = 0.5
# Decisions on signals older than this many intervals hold: the driver has stalled and
# the numbers describe a load that may have passed.
_STALE_INTERVALS = 3.0


@dataclass(frozen=True)
class AutoscalePolicy:
    """The knobs; `AutoscaleConfig.policy()` builds one from an endpoint's `autoscale:`
    section, whose fields document each. These defaults are the only copy: the config
    schema takes its defaults from here."""

    min_replicas: int = 1
    max_replicas: int = 8
    target_in_flight_rows_per_replica: float = 16.0
    target_queue_wait_ms: float = 100.0
    evaluate_interval_s: float = 1.0
    scale_down_cooldown_s: float = 30.0
    scale_down_window_s: float = 30.0
    scale_down_headroom: float = 0.5
    scale_to_zero_after_s: float | None = None

    def __post_init__(self) -> None:
        if self.min_replicas < 1:
            raise ValueError(
                f"min_replicas must be >= 1, got {self.min_replicas} "
                "(scale_to_zero_after_s lets an idle endpoint go to 0)"
            )
        if self.max_replicas < self.min_replicas:
            raise ValueError(
                f"max_replicas {self.max_replicas} must be >= min_replicas {self.min_replicas}"
            )
        for name in ("target_in_flight_rows_per_replica", "target_queue_wait_ms",
                     "evaluate_interval_s"):  # fmt: skip
            if not getattr(self, name) > 0:  # NaN fails too
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("scale_down_cooldown_s", "scale_down_window_s"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 < self.scale_down_headroom <= 1:
            raise ValueError(
                f"scale_down_headroom must lie in (0, 1], got {self.scale_down_headroom}"
            )
        if self.scale_to_zero_after_s is not None and not self.scale_to_zero_after_s > 0:
            raise ValueError(f"scale_to_zero_after_s must be > 0, got {self.scale_to_zero_after_s}")

    @property
    def target_queue_wait_s(self) -> float:
        return self.target_queue_wait_ms / 1000.0


@dataclass(frozen=True)
class Signals:
    """One sample of an endpoint's load."""

    # Rows queued or running over all the endpoint's replicas, averaged over the
    # interval since the last sample (an instant's count jumps with every batch).
    in_flight_rows: float
    queue_wait_s: float  # how long the oldest queued row has waited; 0 with none queued
    ready: int  # replicas serving
    pending: int = 0  # asked for, not ready yet (loading, warming, waiting for a node)
    # One replica's rows per second at full batches (the batch-latency model's); sizes a
    # jump under overload by the arrival rate. None: unknown, the jump is not capped.
    replica_rows_per_s: float | None = None

    def __post_init__(self) -> None:
        for name in ("ready", "pending"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        rate = self.replica_rows_per_s
        if rate is not None and not 0 < rate < math.inf:
            raise ValueError(f"replica_rows_per_s must be a finite number > 0, got {rate}")
        for name in ("in_flight_rows", "queue_wait_s"):
            if not 0 <= getattr(self, name) < math.inf:  # NaN fails too
                raise ValueError(f"{name} must be a finite number >= 0, got {getattr(self, name)}")

    @property
    def current(self) -> int:
        return self.ready + self.pending


Action = Literal["up", "down", "hold"]


@dataclass(frozen=True)
class ScaleDecision:
    """What to run, and the numbers that chose it (for the audit log and metrics). After
    every decision, holds included, the caller makes ready + pending equal `desired`: a
    replica that died is replaced without a scale up."""

    at: float
    action: Action
    desired: int  # replicas the endpoint should have, pending ones included
    current: int  # ready + pending when observed
    ready: int
    pending: int
    need: int  # replicas the load needs at the targets now (before min/max)
    in_flight_rows: float
    rows_per_ready_replica: float | None  # None with no replica ready
    queue_wait_s: float
    arriving_rows_per_s: float | None  # estimated under overload; None when not overloaded
    cold_start: bool  # rows wait with no replica ready: their answers include a start
    reason: str


class Autoscaler:
    def __init__(self, policy: AutoscalePolicy, *, now: float, replicas: int | None = None) -> None:
        """`replicas`: the count the endpoint starts with (default `min_replicas`). A
        fresh start counts as a change: nothing scales down within the cooldown."""
        start = policy.min_replicas if replicas is None else replicas
        if not policy.min_replicas <= start <= policy.max_replicas:
            raise ValueError(
                f"replicas {start} must lie in [{policy.min_replicas}, {policy.max_replicas}]"
            )
        self.policy = policy
        self.desired = start
        self.last_decision: ScaleDecision | None = None
        self._last_event_at = now
        self._last_change_at = now
        self._signals: Signals | None = None
        self._observed_at = now
        # The need of the sample before the last: a scale up needs two in a row.
        self._need_before = 0
        self._need_now = 0
        self._basis_now = ""
        self._ready_before = self.desired
        self._idle_since: float | None = None
        # The current run of samples in which the load fit fewer replicas, and the
        # count each needed: the run's start says whether it has lasted the window.
        self._fits_fewer_since: float | None = None
        self._fewer_needed: deque[tuple[float, int]] = deque()

    # -- the timer ----------------------------------------------------------------------

    def observe(self, now: float, signals: Signals) -> None:
        self._check_clock(now)
        self._signals, self._observed_at = signals, now
        # The oldest row's wait speaks for the replicas that served its queue: not while
        # more are starting, nor in the sample where new ones have just joined.
        settled = signals.pending == 0 and signals.ready <= self._ready_before
        need, self._basis_now = self._estimate(signals, wait_counts=settled)
        self._need_before, self._need_now = self._need_now, need
        self._ready_before = signals.ready
        if signals.in_flight_rows == 0:
            self._idle_since = now if self._idle_since is None else self._idle_since
        else:
            self._idle_since = None
        # The window starts after the cooldown: samples right after a change describe a
        # load still settling on the new count (replicas warming, queues rebalancing).
        settling = now - self._last_change_at < self.policy.scale_down_cooldown_s
        fewer = None if settling else self._fewer_fit(signals)
        if fewer is None:
            self._fits_fewer_since = None
            self._fewer_needed.clear()
            return
        if self._fits_fewer_since is None:
            self._fits_fewer_since = now
        self._fewer_needed.append((now, fewer))
        while self._fewer_needed[0][0] < now - self.policy.scale_down_window_s:
            self._fewer_needed.popleft()

    def decide(self, now: float) -> ScaleDecision:
        self._check_clock(now)
        s = self._signals
        if s is None:
            return self._hold(now, Signals(0, 0.0, 0), 0, "no signals observed yet")
        age = now - self._observed_at
        need = self._need_now
        if age > _STALE_INTERVALS * self.policy.evaluate_interval_s:
            return self._hold(now, s, need, f"signals are {age:.1f} s old: holding")
        if self.desired == 0:
            return self._from_zero(now, s, need)
        # Up on the lower need of the last two samples: a step in load shows in both (so
        # it is answered by the second evaluation), a blip of one interval does not.
        wanted = min(need, self._need_before, self.policy.max_replicas)
        if wanted > self.desired:
            return self._change(now, s, need, wanted, self._why_up(s, need))
        return self._toward_fewer(now, s, need)

    def _estimate(self, s: Signals, *, wait_counts: bool) -> tuple[int, str]:
        """Replicas the load needs at the targets (before min/max), and what that rests
        on, for the reason."""
        p = self.policy
        count = math.ceil(s.in_flight_rows / p.target_in_flight_rows_per_replica)
        basis = (
            f"{s.in_flight_rows:.0f} rows in flight need {count} replicas at "
            f"{p.target_in_flight_rows_per_replica:g} each"
        )
        arriving = self._arriving(s)
        if arriving is not None and s.replica_rows_per_s is not None:
            by_rate = math.ceil(arriving / (s.replica_rows_per_s * _OVERLOAD_SHARE) - 1e-9)
            if by_rate < count:
                count = by_rate
                basis = (
                    f"overloaded ({s.in_flight_rows:.0f} rows in flight, the oldest waited "
                    f"{s.queue_wait_s * 1000:.0f} ms): ~{arriving:.0f} rows/s arriving need "
                    f"{count} replicas at {_OVERLOAD_SHARE:.0%} of {s.replica_rows_per_s:.0f} "
                    "rows/s each"
                )
        if wait_counts and s.queue_wait_s > p.target_queue_wait_s and s.ready:
            growth = min(s.queue_wait_s / p.target_queue_wait_s, _MOST_WAIT_GROWTH)
            by_wait = math.ceil(s.ready * growth)
            if by_wait > count:
                count = by_wait
                basis = (
                    f"queue wait {s.queue_wait_s * 1000:.0f} ms > {p.target_queue_wait_ms:g} ms: "
                    f"{count} replicas"
                )
        return count, basis

    def _arriving(self, s: Signals) -> float | None:
        """Rows per second arriving, when the queue wait says the rows in flight are a
        backlog (FIFO: they all arrived within the oldest one's wait); else None."""
        if s.queue_wait_s <= self.policy.target_queue_wait_s:
            return None
        return s.in_flight_rows / s.queue_wait_s

    # -- the ways a decision goes ----------------------------------------------------------

    def _from_zero(self, now: float, s: Signals, need: int) -> ScaleDecision:
        if s.in_flight_rows == 0:
            return self._hold(now, s, need, "scaled to zero: nothing in flight")
        wanted = min(max(need, self.policy.min_replicas), self.policy.max_replicas)
        reason = f"cold start: {s.in_flight_rows:.0f} rows wait with no replica"
        return self._change(now, s, need, wanted, reason)

    def _toward_fewer(self, now: float, s: Signals, need: int) -> ScaleDecision:
        p = self.policy
        since_change = now - self._last_change_at
        if since_change < p.scale_down_cooldown_s:
            wait = p.scale_down_cooldown_s - since_change
            return self._hold(now, s, need, f"load needs {need}; cooldown: {wait:.0f} s left")
        idle_for = 0.0 if self._idle_since is None else now - self._idle_since
        if p.scale_to_zero_after_s is not None and idle_for >= p.scale_to_zero_after_s:
            return self._change(now, s, need, 0, f"nothing in flight for {idle_for:.0f} s")
        if self._fits_fewer_since is None:
            return self._hold(now, s, need, self._why_hold(need))
        fits_for = now - self._fits_fewer_since
        largest = max(n for _, n in self._fewer_needed)
        if fits_for < p.scale_down_window_s:
            left = p.scale_down_window_s - fits_for
            reason = f"load fits {largest} for {fits_for:.0f} s; {left:.0f} s more to scale down"
            return self._hold(now, s, need, reason)
        wanted = max(largest, math.ceil(self.desired / 2), p.min_replicas)
        reason = (
            f"for {fits_for:.0f} s the load fit {largest} replicas at "
            f"{p.scale_down_headroom:.0%} of the targets; {self.desired} -> {wanted} "
            "(at most half at once)"
        )
        return self._change(now, s, need, wanted, reason)

    def _fewer_fit(self, s: Signals) -> int | None:
        """The count that would hold this load at the headroom share of both targets,
        when that is fewer than the desired count; else None (no room to scale down)."""
        p = self.policy
        waits_long = s.queue_wait_s > p.scale_down_headroom * p.target_queue_wait_s
        if self.desired == 0 or not s.ready or waits_long:
            return None
        # Rows in flight per replica grow faster than the rows it serves (queueing): the
        # estimate lets them grow with the square of each replica's share of the load,
        # L' = L * (ready / n)^2, so a count near saturation is not taken for a fit.
        comfortable = p.scale_down_headroom * p.target_in_flight_rows_per_replica
        fits = math.ceil(math.sqrt(s.in_flight_rows * s.ready / comfortable) - 1e-9)
        fits = max(fits, p.min_replicas)
        return fits if fits < self.desired else None

    # -- reasons --------------------------------------------------------------------------

    def _why_up(self, s: Signals, need: int) -> str:
        capped = (
            f", capped at max {self.policy.max_replicas}" if need > self.policy.max_replicas else ""
        )
        return f"{self._basis_now} ({s.ready} ready + {s.pending} pending){capped}"

    def _why_hold(self, need: int) -> str:
        if self.desired <= self.policy.min_replicas:
            return f"at min {self.policy.min_replicas}: load needs {need}"
        return f"load needs {need} of {self.desired}: no room to scale down"

    # -- internals ------------------------------------------------------------------------

    def _change(self, now: float, s: Signals, need: int, wanted: int, reason: str) -> ScaleDecision:
        action: Action = "up" if wanted > self.desired else "down"
        self.desired = wanted
        self._last_change_at = now
        # Samples taken at the old count do not say what the new count can shed.
        self._fits_fewer_since = None
        self._fewer_needed.clear()
        return self._record(now, s, need, action, reason)

    def _hold(self, now: float, s: Signals, need: int, reason: str) -> ScaleDecision:
        return self._record(now, s, need, "hold", reason)

    def _record(
        self, now: float, s: Signals, need: int, action: Action, reason: str
    ) -> ScaleDecision:
        decision = ScaleDecision(
            at=now,
            action=action,
            desired=self.desired,
            current=s.current,
            ready=s.ready,
            pending=s.pending,
            need=need,
            in_flight_rows=s.in_flight_rows,
            rows_per_ready_replica=s.in_flight_rows / s.ready if s.ready else None,
            queue_wait_s=s.queue_wait_s,
            arriving_rows_per_s=self._arriving(s),
            cold_start=s.ready == 0 and s.in_flight_rows > 0,
            reason=reason,
        )
        self.last_decision = decision
        return decision

    def _check_clock(self, now: float) -> None:
        if now < self._last_event_at:
            raise ValueError(f"time went backwards: {now} < {self._last_event_at}")
        self._last_event_at = now
