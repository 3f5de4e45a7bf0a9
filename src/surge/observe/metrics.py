"""Prometheus metrics, one registry per server (no globals).

Stages: queue_wait (admitted -> picked into a batch), batch_formation (picked ->
compute starts on a replica: assembly and the thread handoff), compute (the
runtime's run), total (request received -> response ready).

Every hot-path update happens on the event loop thread, so the values are plain
Python numbers with no locks (prometheus_client takes a lock per update, about a
dozen per request); a collector turns them into metric families at scrape time.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

LATENCY_BUCKETS_S = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
STAGES = ("queue_wait", "batch_formation", "compute", "total")


class LoopHistogram:
    """A histogram updated only from the event loop thread."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last slot is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, float]]:
        out, running = [], 0
        for bound, count in zip(
            (*(str(float(b)) for b in self.bounds), "+Inf"), self.counts, strict=True
        ):
            running += count
            out.append((bound, running))
        return out


@dataclass
class EndpointMetrics:
    endpoint: str
    queue_wait: LoopHistogram = field(default_factory=lambda: LoopHistogram(LATENCY_BUCKETS_S))
    batch_formation: LoopHistogram = field(default_factory=lambda: LoopHistogram(LATENCY_BUCKETS_S))
    compute: LoopHistogram = field(default_factory=lambda: LoopHistogram(LATENCY_BUCKETS_S))
    total: LoopHistogram = field(default_factory=lambda: LoopHistogram(LATENCY_BUCKETS_S))
    batch_size: LoopHistogram = field(default_factory=lambda: LoopHistogram(BATCH_BUCKETS))
    responses: dict[int, int] = field(default_factory=dict)  # HTTP status -> count
    rejections: dict[str, int] = field(default_factory=dict)  # reason -> count
    # Refusals that say the deployment lacks capacity (what burst modes react to): not
    # those of a deadline no idle deployment could meet, nor of one a mode shortened.
    overload_refusals: int = 0
    queue_depth: int = 0
    inflight: int = 0
    ready: bool = False

    def count_response(self, status: int) -> None:
        self.responses[status] = self.responses.get(status, 0) + 1

    def count_rejection(self, reason: str, overload: bool = False) -> None:
        self.rejections[reason] = self.rejections.get(reason, 0) + 1
        if overload:
            self.overload_refusals += 1


class Metrics(Collector):
    def __init__(self) -> None:
        self.endpoints: dict[str, EndpointMetrics] = {}
        self.unrouted = EndpointMetrics("")  # answers that never reached an endpoint
        self.registry = CollectorRegistry()
        self.registry.register(self)

    def for_endpoint(self, endpoint: str) -> EndpointMetrics:
        found = self.endpoints.get(endpoint)
        if found is None:  # built only once: this runs per answered request
            found = self.endpoints[endpoint] = EndpointMetrics(endpoint)
        return found

    def count_unrouted(self, status: int) -> None:
        self.unrouted.count_response(status)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def collect(self) -> Iterator[Metric]:
        everyone = [*self.endpoints.values(), self.unrouted]
        requests = CounterMetricFamily(
            "surge_requests", "Answered requests", labels=["endpoint", "code"]
        )
        rejected = CounterMetricFamily(
            "surge_rejected_requests", "Requests refused, by reason", labels=["endpoint", "reason"]
        )
        for m in everyone:
            for status, count in sorted(m.responses.items()):
                requests.add_metric([m.endpoint, str(status)], count)
            for reason, count in sorted(m.rejections.items()):
                rejected.add_metric([m.endpoint, reason], count)
        yield requests
        yield rejected
        latency = HistogramMetricFamily(
            "surge_stage_latency_seconds", "Request latency per stage", labels=["endpoint", "stage"]
        )
        batches = HistogramMetricFamily(
            "surge_batch_size_rows", "Rows per executed batch", labels=["endpoint"]
        )
        depth = GaugeMetricFamily(
            "surge_queue_depth_requests", "Requests waiting in the queue", labels=["endpoint"]
        )
        inflight = GaugeMetricFamily(
            "surge_inflight_requests", "Requests admitted and not yet answered", labels=["endpoint"]
        )
        ready = GaugeMetricFamily(
            "surge_endpoint_ready", "1 when the endpoint serves", labels=["endpoint"]
        )
        for m in self.endpoints.values():
            for stage in STAGES:
                h: LoopHistogram = getattr(m, stage)
                latency.add_metric([m.endpoint, stage], h.cumulative(), h.sum)
            batches.add_metric([m.endpoint], m.batch_size.cumulative(), m.batch_size.sum)
            depth.add_metric([m.endpoint], m.queue_depth)
            inflight.add_metric([m.endpoint], m.inflight)
            ready.add_metric([m.endpoint], 1 if m.ready else 0)
        yield from (latency, batches, depth, inflight, ready)
