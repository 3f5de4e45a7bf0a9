"""Per-version metrics of every endpoint: traffic share, answers, shadow agreement,
and the rollout step, read from the endpoints and the rollout controllers at scrape time."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from surge.serving.endpoint import Endpoint
    from surge.serving.rollouts import Rollouts


class RolloutCollector(Collector):
    def __init__(self, endpoints: dict[str, Endpoint], rollouts: Rollouts) -> None:
        self.endpoints = endpoints
        self.rollouts = rollouts

    def collect(self) -> Iterator[Metric]:
        labels = ["endpoint", "version"]
        traffic = GaugeMetricFamily(
            "surge_version_traffic_percent",
            "Share of live traffic routed to a version",
            labels=labels,
        )
        answers = CounterMetricFamily(
            "surge_version_requests",
            "Requests a version answered, by outcome (error: 5xx or deadline)",
            labels=[*labels, "outcome"],
        )
        retried = CounterMetricFamily(
            "surge_version_retried_on_stable",
            "Requests that failed on a canary and were retried on stable",
            labels=labels,
        )
        shadow = CounterMetricFamily(
            "surge_shadow_requests",
            "Shadow copies by outcome (compared, dropped under load, failed)",
            labels=[*labels, "outcome"],
        )
        agreement = GaugeMetricFamily(
            "surge_shadow_agreement_ratio",
            "Mean agreement of a shadow version with the live answer (label match or cosine)",
            labels=labels,
        )
        delta = GaugeMetricFamily(
            "surge_shadow_latency_delta_seconds",
            "Mean latency of a shadow version minus the live version's, per request",
            labels=labels,
        )
        step = GaugeMetricFamily(
            "surge_rollout_step",
            "Current step of an endpoint's canary (-1: none)",
            labels=["endpoint"],
        )
        for name, endpoint in self.endpoints.items():
            weights = endpoint.weights()
            for version, stats in endpoint.stats.items():
                traffic.add_metric([name, version], weights.get(version, 0.0))
                ok = stats.requests_total - stats.errors_total
                answers.add_metric([name, version, "ok"], ok)
                answers.add_metric([name, version, "error"], stats.errors_total)
                retried.add_metric([name, version], stats.retried_on_stable_total)
                if stats.shadow_compared_total or stats.shadow_dropped_total:
                    shadow.add_metric([name, version, "compared"], stats.shadow_compared_total)
                    shadow.add_metric([name, version, "dropped"], stats.shadow_dropped_total)
                    shadow.add_metric([name, version, "failed"], stats.shadow_failed_total)
                if stats.shadow_compared_total:
                    mean = stats.shadow_agreement_sum_total / stats.shadow_compared_total
                    agreement.add_metric([name, version], mean)
                    delta.add_metric([name, version], stats.shadow_latency_delta_s or 0.0)
            controller = self.rollouts.controller(name)
            step.add_metric([name], controller.step if controller else -1)
        yield from (traffic, answers, retried, shadow, agreement, delta, step)
