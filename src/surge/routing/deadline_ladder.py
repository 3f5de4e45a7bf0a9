"""Time-boxed inference: serve a request from the best target that fits its remaining
time, else from a cheaper one, and say so. Sans-IO: latencies and the remaining budget
are passed in; nothing here reads a clock.

A ladder lists targets best (slowest) first, e.g. embed-large, embed-base, embed-small.
Per request the driver passes each target's estimate of queue wait + compute (from its
deployment's measured batch latency and queue, `serving.admission`) and the time left
before the deadline to `choose_rung`, and the choice (degraded or not, and why) goes on
the receipt.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


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
