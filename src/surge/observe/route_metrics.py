"""Metrics of the routes: what each policy decided, and the state of every breaker."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from surge.routing.breaker import CLOSED, HALF_OPEN, OPEN

if TYPE_CHECKING:
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
        for name, route in self.routes.items():
            for (target, action), count in sorted(route.counts.items()):
                decisions.add_metric([name, target, action], count)
            for target, breaker in getattr(route, "breakers", {}).items():
                for state in (CLOSED, OPEN, HALF_OPEN):
                    breakers.add_metric([name, target, state], 1 if breaker.state == state else 0)
                is_open.add_metric([name, target], 1 if breaker.state == OPEN else 0)
        yield from (decisions, breakers, is_open)
