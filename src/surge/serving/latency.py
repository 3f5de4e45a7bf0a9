"""What a batch costs, learned from the batches that ran (sans-IO).

Batch latency is modelled as `fixed + per_row * rows`, fitted by exponentially
weighted least squares so the estimate follows the machine as load changes.
Warm-up feeds it batches of several sizes before the first request arrives,
so admission has numbers from the start.

Batches measured under load carry that load's contention, and an estimate learned
only from batches that ran never corrects itself once it refuses everything: a
refused request teaches it nothing. So a deployment with nothing queued or running
is estimated between what warm-up measured with nothing else running and what the
last batches measured, moving from the latter to the former as the quiet lasts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class LinearFit:
    """`fixed + per_row * rows` by weighted least squares; `weight` scales the past."""

    _w: float = 0.0
    _x: float = 0.0
    _y: float = 0.0
    _xx: float = 0.0
    _xy: float = 0.0
    # The fit, refreshed once per batch so estimates on the request path are a multiply-add.
    _fixed_s: float = 0.0
    _per_row_s: float = 0.0
    _flat_up_to: float = 0.0  # set when every batch had one size: up to it, the cost is flat

    def add(self, rows: int, seconds: float, weight: float) -> None:
        self._w = weight * self._w + 1.0
        self._x = weight * self._x + rows
        self._y = weight * self._y + seconds
        self._xx = weight * self._xx + rows * rows
        self._xy = weight * self._xy + rows * seconds
        self._flat_up_to = 0.0
        self._fit()

    def _fit(self) -> None:
        mean_x, mean_y = self._x / self._w, self._y / self._w
        var_x = self._xx / self._w - mean_x * mean_x
        if var_x > 1e-9:
            slope = (self._xy / self._w - mean_x * mean_y) / var_x
            intercept = mean_y - slope * mean_x
            if slope < 0:
                # Cost does not grow with rows (a fixed cost per batch, plus noise that tilts
                # the fit): a flat estimate, never one that shrinks small batches to nothing.
                self._fixed_s, self._per_row_s = mean_y, 0.0
            elif intercept < 0:
                # Cost proportional to rows: the least-squares line through the origin.
                self._fixed_s, self._per_row_s = 0.0, (self._xy / self._w) / (self._xx / self._w)
            else:
                self._fixed_s, self._per_row_s = intercept, slope
            return
        # All batches had one size, so fixed and per-row cost cannot be told apart: a
        # batch of that size or smaller costs what it cost, a larger one proportionally
        # more (the safe side for admission either way).
        self._fixed_s, self._per_row_s = mean_y, mean_y / max(mean_x, 1e-9)
        self._flat_up_to = mean_x

    def estimate_s(self, rows: int) -> float:
        """Expected seconds for a batch of `rows` rows (0 before any observation)."""
        if rows <= self._flat_up_to:
            return self._fixed_s
        if self._flat_up_to:
            return self._per_row_s * rows
        return self._fixed_s + self._per_row_s * rows


@dataclass
class BatchLatencyModel:
    decay: float = 0.95  # weight kept by the past at each new observation
    # Idle seconds that halve the gap between what load measured and the warm-up cost,
    # for a deployment with nothing queued or running. Short, because admitting on an
    # idle deployment risks little (one batch on a replica that had nothing to do), while
    # refusing there turns a burst's leftover estimate into refusals nothing corrects.
    idle_half_life_s: float = 0.5
    _recent: LinearFit = field(default_factory=LinearFit)  # every batch: cost under load now
    _warm: LinearFit = field(default_factory=LinearFit)  # warm-up: cost with nothing else running
    _last_finished_at: float | None = None
    observations: int = 0

    def observe_warmup(self, rows: int, seconds: float) -> None:
        """A warm-up batch: it ran before any traffic, so it also says what a batch costs
        on a deployment with nothing else to do."""
        self._warm.add(rows, seconds, self.decay)
        self.observe(rows, seconds)

    def observe(self, rows: int, seconds: float, *, finished_at: float | None = None) -> None:
        """A batch of `rows` took `seconds`, finishing at `finished_at` (monotonic).

        The fit forgets by count, as it did before idle recovery existed: time counts
        only for a deployment with nothing queued or running (`idle_estimate_s`), the
        one case where a stale estimate had nothing to correct it."""
        if finished_at is not None:
            last = self._last_finished_at
            self._last_finished_at = finished_at if last is None else max(finished_at, last)
        self._recent.add(rows, seconds, self.decay)
        self.observations += 1

    def _fade(self, idle_s: float) -> float:
        return 0.5 ** (idle_s / self.idle_half_life_s)

    def estimate_s(self, rows: int) -> float:
        """Expected seconds for a batch of `rows` rows under present load (0 before any
        observation)."""
        return self._recent.estimate_s(rows)

    def unloaded_estimate_s(self, rows: int) -> float:
        """What a batch of `rows` rows costs with nothing else running (warm-up's
        measurement; what load measured when there was no warm-up)."""
        return self._warm.estimate_s(rows) or self.estimate_s(rows)

    def idle_estimate_s(self, rows: int, now: float) -> float:
        """Expected seconds for a batch of `rows` rows on a deployment with nothing queued
        or running at `now`: what load measured, fading towards the warm-up cost while
        the deployment has stood idle since its last batch finished."""
        measured = self.estimate_s(rows)
        if self._last_finished_at is None:
            return measured
        warm = self._warm.estimate_s(rows)  # 0 without warm-up: then towards nothing known
        if measured <= warm:
            return measured
        return warm + (measured - warm) * self._fade(max(0.0, now - self._last_finished_at))

    def drain_rate(self, batch_rows: int, replicas: int) -> float:
        """Rows per second the deployment clears when batches are `batch_rows` big."""
        seconds = self.estimate_s(batch_rows)
        return math.inf if seconds <= 0 else replicas * batch_rows / seconds
