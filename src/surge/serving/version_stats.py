"""What one model version served: cumulative counts for /metrics, and a window since
the current rollout step began for the rollout controller (sans-IO: callers pass
latencies they measured; nothing here reads a clock).

The window is kept as sums and a latency histogram, never as raw samples, so the
windows of every process serving the endpoint add up to the endpoint's window: the
rollout controller judges a canary on the merge of all of them (`WindowCounts.merge`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from surge.observe.quantiles import histogram_quantile
from surge.routing.rollout import VersionWindow

# Latency buckets for the rollout window: log-spaced by 5 % from 0.1 ms, so a p99 read
# from a merged histogram is within 5 % of the exact one; the last bound is ~100 s.
_FIRST_BOUND_S = 1e-4
_RATIO = 1.05
_BUCKETS = 285
WINDOW_BOUNDS_S = tuple(_FIRST_BOUND_S * _RATIO**i for i in range(_BUCKETS))


def latency_bucket(latency_s: float) -> int:
    """The index of the first bound >= `latency_s` (len(bounds): the +Inf bucket)."""
    if latency_s <= _FIRST_BOUND_S:
        return 0
    index = math.ceil(math.log(latency_s / _FIRST_BOUND_S) / math.log(_RATIO) - 1e-9)
    return min(index, _BUCKETS)


@dataclass
class WindowCounts:
    """One version's window as sums: what a process publishes and the controller adds up."""

    requests: int = 0
    errors: int = 0  # 5xx and deadline misses
    compared: int = 0  # shadow answers compared with the live ones
    agreement_sum: float = 0.0
    latency: dict[int, int] = field(default_factory=dict)  # bucket index -> answers

    def merge(self, other: WindowCounts) -> None:
        self.requests += other.requests
        self.errors += other.errors
        self.compared += other.compared
        self.agreement_sum += other.agreement_sum
        for index, count in other.latency.items():
            self.latency[index] = self.latency.get(index, 0) + count

    @property
    def shadow_agreement(self) -> float | None:
        return self.agreement_sum / self.compared if self.compared else None

    def window(self) -> VersionWindow:
        samples = sum(self.latency.values())
        p99 = None
        if samples:
            counts = [0] * (_BUCKETS + 1)
            for index, count in self.latency.items():
                counts[index] += count
            p99 = histogram_quantile(counts, WINDOW_BOUNDS_S, 0.99)
        return VersionWindow(self.requests, self.errors, p99, samples)

    def to_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "compared": self.compared,
            "agreement_sum": self.agreement_sum,
            "latency": {str(i): c for i, c in self.latency.items()},  # JSON keys are text
        }

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> WindowCounts:
        latency = {}
        for key, count in dict(doc.get("latency") or {}).items():
            index = int(key)
            if 0 <= index <= _BUCKETS and int(count) > 0:
                latency[index] = int(count)
        return cls(
            int(doc.get("requests", 0)),
            int(doc.get("errors", 0)),
            int(doc.get("compared", 0)),
            float(doc.get("agreement_sum", 0.0)),
            latency,
        )


class VersionStats:
    def __init__(self) -> None:
        # Cumulative, for Prometheus.
        self.requests_total = 0
        self.errors_total = 0
        self.retried_on_stable_total = 0
        self.shadow_compared_total = 0
        self.shadow_dropped_total = 0
        self.shadow_failed_total = 0
        self.shadow_agreement_sum_total = 0.0
        self.shadow_latency_delta_sum_total = 0.0
        # The current window, for the rollout controller.
        self.counts = WindowCounts()

    def reset_window(self) -> None:
        self.counts = WindowCounts()

    def record(self, latency_s: float, ok: bool) -> None:
        self.requests_total += 1
        counts = self.counts
        counts.requests += 1
        if not ok:
            self.errors_total += 1
            counts.errors += 1
            return
        index = latency_bucket(latency_s)
        counts.latency[index] = counts.latency.get(index, 0) + 1

    def record_shadow(self, agreement: float, latency_delta_s: float) -> None:
        self.shadow_compared_total += 1
        self.shadow_agreement_sum_total += agreement
        self.shadow_latency_delta_sum_total += latency_delta_s
        self.counts.compared += 1
        self.counts.agreement_sum += agreement

    @property
    def window_compared(self) -> int:
        return self.counts.compared

    @property
    def shadow_agreement(self) -> float | None:
        """Mean agreement with the live answers over the current window."""
        return self.counts.shadow_agreement

    @property
    def shadow_latency_delta_s(self) -> float | None:
        """Mean (shadow - live) latency over the version's lifetime."""
        if not self.shadow_compared_total:
            return None
        return self.shadow_latency_delta_sum_total / self.shadow_compared_total

    def window(self) -> VersionWindow:
        return self.counts.window()

    def describe(self) -> dict[str, object]:
        window = self.window()
        return {
            "requests": self.requests_total,
            "errors": self.errors_total,
            "retried_on_stable": self.retried_on_stable_total,
            "window": {
                "requests": window.requests,
                "errors": window.errors,
                "error_rate": round(window.error_rate, 4),
                "p99_ms": None if window.p99_s is None else round(window.p99_s * 1000, 2),
            },
            "shadow": {
                "compared": self.shadow_compared_total,
                "dropped": self.shadow_dropped_total,
                "failed": self.shadow_failed_total,
                "agreement": _round(self.shadow_agreement),
                "latency_delta_ms": _round(self.shadow_latency_delta_s, 1000),
            },
        }


def _round(value: float | None, scale: float = 1.0) -> float | None:
    return None if value is None else round(value * scale, 4)
