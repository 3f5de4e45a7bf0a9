"""Time-boxed inference: serve a request from the best target that fits its remaining
time, else from a cheaper one, and say so. Sans-IO: latencies and the remaining budget
are passed in; nothing here reads a clock.

A ladder lists targets best (slowest) first, e.g. embed-large, embed-base, embed-small.
Each target's `LatencyTracker` is fed the observed queue wait + compute of its requests;
per request the driver passes the trackers' estimates and the time left before the
deadline to `choose_rung`, and the choice (degraded or not, and why) goes on the receipt.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np


class LatencyTracker:
    """A high percentile (default p95) of recent observed latencies of one target, sans-IO:
    `observe(seconds)` and `estimate()`.

    Keeps a bounded window (the last `window` observations) so the estimate follows the
    target as its load changes, and recomputes the percentile at most every
    `recompute_every` observations so the request path stays cheap. Before any
    observation, `estimate()` returns `prior_s`.
    """

    def __init__(
        self,
        quantile: float = 0.95,
        window: int = 512,
        prior_s: float = 0.0,
        *,
        recompute_every: int = 16,
    ) -> None:
        if not 0 <= quantile <= 1:
            raise ValueError(f"quantile must lie in [0, 1], got {quantile}")
        if window < 1:
            raise ValueError(f"window must be at least 1, got {window}")
        if not prior_s >= 0:  # also rejects NaN
            raise ValueError(f"prior_s must not be negative, got {prior_s}")
        if recompute_every < 1:
            raise ValueError(f"recompute_every must be at least 1, got {recompute_every}")
        self.quantile = quantile
        self.window = window
        self.prior_s = prior_s
        self.recompute_every = recompute_every
        self._samples: deque[float] = deque(maxlen=window)
        self._cached: float | None = None
        self._cached_from = 0  # how many samples the cached value was computed from
        self._pending = 0  # observations since the cached value was computed

    @property
    def count(self) -> int:
        """Observations in the window."""
        return len(self._samples)

    def observe(self, seconds: float) -> None:
        if not (seconds >= 0 and math.isfinite(seconds)):
            raise ValueError(f"a latency must be a finite number of seconds >= 0, got {seconds}")
        self._samples.append(float(seconds))
        self._pending += 1

    def estimate(self) -> float:
        if not self._samples:
            return self.prior_s
        # While the window is young, a few samples move the percentile a lot: refresh once
        # the samples have doubled since the last computation, and every
        # `recompute_every` observations once there are plenty.
        stale = self._pending >= min(self.recompute_every, max(self._cached_from, 1))
        if self._cached is None or stale:
            data = np.fromiter(self._samples, dtype=np.float64, count=len(self._samples))
            self._cached = float(np.quantile(data, self.quantile))
            self._cached_from = len(self._samples)
            self._pending = 0
        return self._cached


@dataclass(frozen=True)
class Rung:
    target: str  # rungs are ordered best (slowest) first

    def __post_init__(self) -> None:
        if not self.target:
            raise ValueError("a rung needs a target")


@dataclass(frozen=True)
class LadderChoice:
    target: str
    rung: int  # index into the ladder; 0 is the best
    degraded: bool  # served by a lower rung than the best
    estimate_s: float  # the chosen target's latency estimate
    remaining_s: float  # the request's time left when the choice was made
    reason: str


def _ms(seconds: float) -> str:
    ms = seconds * 1000
    return f"{ms:.0f}" if abs(ms) >= 10 else f"{ms:.2g}"


def choose_rung(
    rungs: Sequence[Rung],
    estimates_s: Mapping[str, float],
    remaining_s: float,
    safety_margin: float = 0.9,
) -> LadderChoice:
    """The first rung whose estimate fits in `remaining_s * safety_margin`; if none fits,
    the last (cheapest) one, degraded. The margin leaves room for what the estimate does
    not see (the response's trip back, a p95 that is exceeded one time in twenty)."""
    if not rungs:
        raise ValueError("a deadline ladder needs at least one rung")
    if not 0 < safety_margin <= 1:
        raise ValueError(f"safety_margin must lie in (0, 1], got {safety_margin}")
    if math.isnan(remaining_s):
        raise ValueError("remaining_s is NaN")
    missing = [r.target for r in rungs if r.target not in estimates_s]
    if missing:
        raise ValueError(f"no latency estimate for {missing}")

    usable_s = remaining_s * safety_margin
    best = rungs[0]
    best_s = float(estimates_s[best.target])
    left = f"{_ms(remaining_s)} ms left"
    # Kept out only by the margin: say so, or the reason would read "needs ~280 ms,
    # 300 ms left" and look wrong.
    if usable_s < best_s <= remaining_s:
        left += f" ({_ms(usable_s)} ms within the {safety_margin:.0%} safety margin)"

    for i, rung in enumerate(rungs):
        est = float(estimates_s[rung.target])
        if est <= usable_s:  # a NaN estimate never fits
            if i == 0:
                reason = f"{rung.target} fits: needs ~{_ms(est)} ms, {left}"
                return LadderChoice(rung.target, 0, False, est, remaining_s, reason)
            reason = (
                f"{best.target} needs ~{_ms(best_s)} ms, {left}: "
                f"served by {rung.target} (~{_ms(est)} ms)"
            )
            return LadderChoice(rung.target, i, True, est, remaining_s, reason)

    last = len(rungs) - 1
    cheapest = rungs[last]
    est = float(estimates_s[cheapest.target])
    needs = f"{best.target} needs ~{_ms(best_s)} ms"
    if last > 0:
        needs += f", even {cheapest.target} needs ~{_ms(est)} ms"
    reason = f"nothing fits: {needs}, {left}: served by the cheapest, {cheapest.target}"
    return LadderChoice(cheapest.target, last, True, est, remaining_s, reason)
