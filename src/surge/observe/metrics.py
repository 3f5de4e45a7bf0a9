"""Prometheus metrics, one registry per server (no globals).

Stages: queue_wait (admitted -> picked into a batch), batch_formation (picked ->
compute starts on a replica: assembly and the thread handoff), compute (the
runtime's run), total (request received -> response ready).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS_S = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


@dataclass
class EndpointMetrics:
    """Label children bound once per endpoint, so the hot path does no label lookups."""

    queue_wait: Histogram
    batch_formation: Histogram
    compute: Histogram
    total: Histogram
    batch_size: Histogram
    queue_depth: Gauge
    inflight: Gauge
    _requests: Counter
    _rejected: Counter
    _endpoint: str
    _codes: dict[int, Counter] = field(default_factory=dict)

    def count_response(self, status: int) -> None:
        child = self._codes.get(status)
        if child is None:
            child = self._codes[status] = self._requests.labels(self._endpoint, str(status))
        child.inc()

    def count_rejection(self, reason: str) -> None:
        self._rejected.labels(self._endpoint, reason).inc()


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "surge_requests", "Answered requests", ["endpoint", "code"], registry=r
        )
        self.latency = Histogram(
            "surge_stage_latency_seconds",
            "Request latency per stage",
            ["endpoint", "stage"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.batch_size = Histogram(
            "surge_batch_size_rows", "Rows per executed batch", ["endpoint"],
            buckets=BATCH_BUCKETS, registry=r,
        )  # fmt: skip
        self.queue_depth = Gauge(
            "surge_queue_depth_requests", "Requests waiting in the queue", ["endpoint"], registry=r
        )
        self.inflight = Gauge(
            "surge_inflight_requests", "Requests admitted and not yet answered", ["endpoint"],
            registry=r,
        )  # fmt: skip
        self.rejected = Counter(
            "surge_rejected_requests", "Requests refused, by reason", ["endpoint", "reason"],
            registry=r,
        )  # fmt: skip
        self.ready = Gauge("surge_endpoint_ready", "1 when the endpoint serves", ["endpoint"],
                           registry=r)  # fmt: skip

    def for_endpoint(self, endpoint: str) -> EndpointMetrics:
        stage = self.latency.labels
        return EndpointMetrics(
            queue_wait=stage(endpoint, "queue_wait"),
            batch_formation=stage(endpoint, "batch_formation"),
            compute=stage(endpoint, "compute"),
            total=stage(endpoint, "total"),
            batch_size=self.batch_size.labels(endpoint),
            queue_depth=self.queue_depth.labels(endpoint),
            inflight=self.inflight.labels(endpoint),
            _requests=self.requests,
            _rejected=self.rejected,
            _endpoint=endpoint,
        )

    def count_unrouted(self, status: int) -> None:
        """Answers that never reached an endpoint (unknown model, bad route)."""
        self.requests.labels("", str(status)).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
