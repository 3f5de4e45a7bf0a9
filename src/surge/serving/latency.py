"""What a batch costs, learned from the batches that ran (sans-IO).

Batch latency is modelled as `fixed + per_row * rows`, fitted by exponentially
weighted least squares so the estimate follows the machine as load changes.
Warm-up feeds it batches of several sizes before the first request arrives,
so admission has numbers from the start.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class BatchLatencyModel:
    decay: float = 0.95  # weight kept by the past at each new observation
    _w: float = 0.0
    _x: float = 0.0
    _y: float = 0.0
    _xx: float = 0.0
    _xy: float = 0.0
    # The fit, refreshed once per batch so estimates on the request path are a multiply-add.
    _fixed_s: float = 0.0
    _per_row_s: float = 0.0
    _flat_up_to: float = 0.0  # set when every batch had one size: up to it, the cost is flat
    observations: int = 0

    def observe(self, rows: int, seconds: float) -> None:
        d = self.decay
        self._w = d * self._w + 1.0
        self._x = d * self._x + rows
        self._y = d * self._y + seconds
        self._xx = d * self._xx + rows * rows
        self._xy = d * self._xy + rows * seconds
        self.observations += 1
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

    def drain_rate(self, batch_rows: int, replicas: int) -> float:
        """Rows per second the deployment clears when batches are `batch_rows` big."""
        seconds = self.estimate_s(batch_rows)
        return math.inf if seconds <= 0 else replicas * batch_rows / seconds
