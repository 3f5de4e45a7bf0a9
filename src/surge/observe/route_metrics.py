"""Metrics of the routes: what each policy decided, and the state of every breaker."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from surge.routing.breaker import CLOSED, HALF_OPEN, OPEN

if TYPE_CHECKING:
    from surge.serving.mode_driver import ModeDriver
    from surge.serving.routes import Route


class RouteCollector(Collector):
    def __init__(self, routes: dict[str, Route]) -> None:
        self.routes = routes

    def collect(self) -> Iterator[Metric]:
        decisions = CounterMetricFamily(
            "surge_route_decisions",
            "Requests by route, the target that answered and what the policy did "
            "(cascade: accept/escalate/review; ladder: best/degraded; fallback: "
            "served/failed/skipped_open)",
            labels=["route", "target", "action"],
        )
        breakers = GaugeMetricFamily(
            "surge_breaker_state",
            "1 for the state a fallback target's circuit breaker is in",
            labels=["route", "target", "state"],
        )
        is_open = GaugeMetricFamily(
            "surge_breaker_open",
            "1 while a target's breaker refuses traffic",
            labels=["route", "target"],
        )
        evicted = CounterMetricFamily(
            "surge_bandit_segments_evicted",
            "Bandit segments forgotten to stay within the route's max_segments (their "
            "requests are then served from the default segment)",
            labels=["route"],
        )
        for name, route in self.routes.items():
            bandit = getattr(route, "bandit", None)
            if bandit is not None:
                evicted.add_metric([name], bandit.evicted)
            for (target, action), count in sorted(route.counts.items()):
                decisions.add_metric([name, target, action], count)
            for target, breaker in getattr(route, "breakers", {}).items():
                for state in (CLOSED, OPEN, HALF_OPEN):
                    breakers.add_metric([name, target, state], 1 if breaker.state == state else 0)
                is_open.add_metric([name, target], 1 if breaker.state == OPEN else 0)
        yield from (decisions, breakers, is_open, evicted)


class ModeCollector(Collector):
    def __init__(self, modes: ModeDriver) -> None:
        self.modes = modes

    def collect(self) -> Iterator[Metric]:
        mode = GaugeMetricFamily("surge_mode", "1 for the burst mode in force", labels=["mode"])
        names = [level.name for level in self.modes.controller.policy.levels]
        for name in names:
            mode.add_metric([name], 1 if name == self.modes.mode else 0)
        forced = GaugeMetricFamily("surge_mode_forced", "1 while an operator forces the mode")
        forced.add_metric([], 1 if self.modes.controller.forced else 0)
        signals = GaugeMetricFamily(
            "surge_mode_signal", "Load signals the mode is chosen from", labels=["signal"]
        )
        for name in ("queue_fill", "p99_ratio", "rejection_rate"):
            signals.add_metric([name], getattr(self.modes.signals, name))
        changes = CounterMetricFamily("surge_mode_changes", "Mode changes, automatic and forced")
        changes.add_metric([], self.modes.changes_total)
        yield from (mode, forced, signals, changes)
