"""What one model version served: cumulative counts for /metrics, and a window since
the current rollout step began for the rollout controller (sans-IO: callers pass
latencies they measured; nothing here reads a clock)."""

from __future__ import annotations

from collections import deque

import numpy as np

from surge.routing.rollout import VersionWindow


class VersionStats:
    def __init__(self, max_samples: int = 4096) -> None:
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
        self._latencies: deque[float] = deque(maxlen=max_samples)
        self.reset_window()

    def reset_window(self) -> None:
        self.window_requests = 0
        self.window_errors = 0
        self.window_compared = 0
        self.window_agreement_sum = 0.0
        self._latencies.clear()

    def record(self, latency_s: float, ok: bool) -> None:
        self.requests_total += 1
        self.window_requests += 1
        if not ok:
            self.errors_total += 1
            self.window_errors += 1
            return
        self._latencies.append(latency_s)

    def record_shadow(self, agreement: float, latency_delta_s: float) -> None:
        self.shadow_compared_total += 1
        self.shadow_agreement_sum_total += agreement
        self.shadow_latency_delta_sum_total += latency_delta_s
        self.window_compared += 1
        self.window_agreement_sum += agreement

    @property
    def shadow_agreement(self) -> float | None:
        """Mean agreement with the live answers over the current window."""
        if not self.window_compared:
            return None
        return self.window_agreement_sum / self.window_compared

    @property
    def shadow_latency_delta_s(self) -> float | None:
        """Mean (shadow - live) latency over the version's lifetime."""
        if not self.shadow_compared_total:
            return None
        return self.shadow_latency_delta_sum_total / self.shadow_compared_total

    def window(self) -> VersionWindow:
        samples = len(self._latencies)
        p99 = float(np.percentile(np.fromiter(self._latencies, float), 99)) if samples else None
        return VersionWindow(
            requests=self.window_requests,
            errors=self.window_errors,
            p99_s=p99,
            latency_samples=samples,
        )

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
