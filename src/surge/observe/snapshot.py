"""What the live dashboard shows, as one JSON-able dict built from the server's state.

Counters in the state are cumulative; a dashboard wants rates and recent latencies. A
`SnapshotRates` keeps the last few seconds of totals so each snapshot can say what
changed: requests per second against the poll about a second ago, and latency
percentiles, batch sizes and spend over the last `window_s` (falling back to everything
since start when nothing happened in that window, so an idle server still shows figures).

Sans-IO like the policies: it reads plain numbers and takes `now` (monotonic seconds).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from surge.observe.metrics import LATENCY_BUCKETS_S, STAGES, EndpointMetrics
from surge.observe.quantiles import histogram_quantile

if TYPE_CHECKING:
    from surge.observe.observer import Observer

QUANTILES = {"p50_ms": 0.5, "p95_ms": 0.95, "p99_ms": 0.99}
RECEIPTS_SHOWN = 20
WINDOW_S = 10.0  # latencies, batch sizes and spend are over this much recent time
RATE_SPAN_S = 0.8  # throughput is against the newest sample at least this old (polls: ~1 s)
MAX_SAMPLES = 256  # several open dashboards poll at once; memory stays bounded anyway


@dataclass(frozen=True)
class EndpointSample:
    answered: int
    errors: int  # 5xx: failures and overload (503, 504); 4xx and 429 are the client's
    stages: dict[str, tuple[int, ...]]  # stage -> non-cumulative bucket counts
    batch_counts: tuple[int, ...]
    batch_rows: float
    cost: float
    energy_j: float


@dataclass(frozen=True)
class Sample:
    at: float
    endpoints: dict[str, EndpointSample]  # endpoints and routes, by the name clients call
    answered: int  # all answers, with those refused before any endpoint was known


@dataclass
class SnapshotRates:
    """The recent samples a snapshot is compared with (one per poll, `window_s` of them)."""

    window_s: float = WINDOW_S
    rate_span_s: float = RATE_SPAN_S
    samples: deque[Sample] = field(default_factory=lambda: deque(maxlen=MAX_SAMPLES))

    def references(self, now: float) -> tuple[Sample | None, Sample | None]:
        """(the sample to rate throughput against, the oldest sample of the window)."""
        while self.samples and self.samples[0].at < now - self.window_s:
            self.samples.popleft()
        if not self.samples:
            return None, None
        rate_ref = self.samples[0]
        for sample in reversed(self.samples):
            if sample.at <= now - self.rate_span_s:
                rate_ref = sample
                break
        if rate_ref.at >= now:
            return None, None
        return rate_ref, self.samples[0]

    def add(self, sample: Sample) -> None:
        self.samples.append(sample)


# -- statistics ------------------------------------------------------------------------------


def _minus(now: tuple[int, ...], then: tuple[int, ...] | None) -> tuple[int, ...]:
    return now if then is None else tuple(a - b for a, b in zip(now, then, strict=True))


# -- sampling --------------------------------------------------------------------------------


def _sample_endpoint(m: EndpointMetrics, cost: float, energy_j: float) -> EndpointSample:
    return EndpointSample(
        answered=sum(m.responses.values()),
        errors=sum(n for status, n in m.responses.items() if status >= 500),
        stages={stage: tuple(getattr(m, stage).counts) for stage in STAGES},
        batch_counts=tuple(m.batch_size.counts),
        batch_rows=m.batch_size.sum,
        cost=cost,
        energy_j=energy_j,
    )


def _spend_by_endpoint(costs: list[dict[str, Any]]) -> dict[str, tuple[float, float]]:
    spend: dict[str, tuple[float, float]] = {}
    for row in costs:
        cost, energy = spend.get(row["endpoint"], (0.0, 0.0))
        spend[row["endpoint"]] = (cost + row["cost"], energy + row["energy_j"])
    return spend


# -- sections --------------------------------------------------------------------------------


def _receipts(observer: Observer) -> list[dict[str, Any]]:
    if observer.receipts is None:  # receipts switched off in the config
        return []
    rows = []
    for r in observer.receipts.latest(RECEIPTS_SHOWN):
        # The dashboard has no auth (like /metrics): nothing here may let a stranger act
        # on a request (its id is what feedback and receipt lookups take) or say who sent
        # it (tenant; the decisions' reasons quote headers such as a segment or user
        # key). What went where stays: each policy's choice, from the config's names.
        rows.append(
            {
                "time": r["time"],
                "endpoint": r["endpoint"],
                "served_by": r["served_by"],
                "status": r["status"],
                "total_ms": r["total_ms"],
                "cost": r["cost"]["total"],
                "currency": r["cost"]["currency"],
                "energy_j": r["energy"]["joules"],
                "escalated": r["escalated"],
                "degraded": r["degraded"],
                "route": " > ".join(f"{d['policy']}: {d['choice']}" for d in r["decisions"]),
            }
        )
    return rows


def _mode(state: Any) -> dict[str, Any] | None:
    modes = getattr(state, "modes", None)
    if modes is None:  # before the server started
        return None
    signals = modes.signals
    return {
        "name": modes.mode,
        "forced": modes.controller.forced,
        "automatic": modes.config.enabled,
        "levels": [level.name for level in modes.controller.policy.levels],
        "signals": {
            "queue_fill": round(signals.queue_fill, 4),
            "p99_ratio": round(signals.p99_ratio, 4),
            "rejection_rate": round(signals.rejection_rate, 4),
        },
    }


def _versions(state: Any) -> list[dict[str, Any]]:
    rows = []
    for name, endpoint in state.endpoints.items():
        weights = endpoint.weights()
        for deployment in endpoint.deployments:
            stats = endpoint.stats.get(deployment.version)
            rows.append(
                {
                    "endpoint": name,
                    "version": deployment.version,
                    "role": "stable" if deployment is endpoint.stable else endpoint.mode,
                    "traffic_percent": round(float(weights.get(deployment.version, 0.0)), 2),
                    "requests": stats.requests_total if stats else 0,
                    "errors": stats.errors_total if stats else 0,
                }
            )
    return rows


def _routes(state: Any) -> list[dict[str, Any]]:
    return [
        {
            "name": name,
            "policy": type(route).__name__,
            "decisions": [
                {"target": target, "action": action, "count": count}
                for (target, action), count in sorted(route.counts.items())
            ],
        }
        for name, route in state.routes.items()
    ]


def _endpoint_row(
    name: str,
    kind: str,
    m: EndpointMetrics,
    now_sample: EndpointSample,
    rate_ref: tuple[float, EndpointSample | None] | None,
    window_ref: EndpointSample | None,
) -> dict[str, Any]:
    latency, scope = {}, "window"
    recent = {s: _minus(now_sample.stages[s], window_ref and window_ref.stages[s]) for s in STAGES}
    if window_ref is None or sum(recent["total"]) == 0:
        recent, scope = now_sample.stages, "all"  # nothing recent: show since start
    for stage, counts in recent.items():
        figures = {
            k: histogram_quantile(counts, LATENCY_BUCKETS_S, q) for k, q in QUANTILES.items()
        }
        latency[stage] = {
            **{k: None if v is None else round(v * 1000, 3) for k, v in figures.items()},
            "count": sum(counts),
        }
    batches = _minus(now_sample.batch_counts, window_ref and window_ref.batch_counts)
    rows = now_sample.batch_rows - (window_ref.batch_rows if window_ref else 0.0)
    if window_ref is None or sum(batches) == 0:
        batches, rows = now_sample.batch_counts, now_sample.batch_rows
    throughput = None
    if rate_ref is not None:
        elapsed, then = rate_ref
        throughput = (now_sample.answered - (then.answered if then else 0)) / elapsed
    return {
        "name": name,
        "kind": kind,
        "ready": m.ready,
        "requests": now_sample.answered,
        "errors": now_sample.errors,
        "throughput_rps": None if throughput is None else round(throughput, 2),
        "queue_depth": m.queue_depth,
        "inflight": m.inflight,
        "rejections": dict(m.rejections),
        "latency": latency,
        "latency_scope": scope,
        "batches": sum(batches),
        "batch_mean": round(rows / sum(batches), 2) if sum(batches) else None,
    }


def _spend_row(
    name: str, state: Any, now_sample: EndpointSample, window: tuple[float, EndpointSample | None]
) -> dict[str, Any]:
    elapsed, then = window
    cost_rate = (now_sample.cost - (then.cost if then else 0.0)) / elapsed
    watts = (now_sample.energy_j - (then.energy_j if then else 0.0)) / elapsed
    price = state.observer.prices.get(name)
    return {
        "endpoint": name,
        "currency": price.currency if price else "USD",
        "cost_per_hour": cost_rate * 3600,
        "budget_per_hour": price.budget_per_hour if price else None,
        "watts": round(watts, 3),
    }


# -- the snapshot ------------------------------------------------------------------------------


def _cache(state: Any) -> list[dict[str, Any]]:
    """Each response cache: hit rate, bytes, what it saved (the dashboard's cache table)."""
    saved = {s["endpoint"]: s for s in state.observer.costs.cache_savings()}
    rows = []
    for name, endpoint in state.endpoints.items():
        cache = endpoint.cache
        if cache is None:
            continue
        answered = sum(cache.results.values())
        reused = answered - cache.results["miss"]
        memory = cache.memory.stats()
        rows.append({
            "endpoint": name, "requests": answered,
            "hit_rate": round(reused / answered, 4) if answered else None,
            "bytes": memory["bytes"], "evictions": memory["evictions"],
            "redis_up": None if cache.redis is None else cache.redis.healthy,
            "saved_compute_s": cache.saved_compute_s,
            "saved_cost": saved.get(name, {}).get("cost", 0.0),
        })  # fmt: skip
    return rows


def build_snapshot(state: Any, now: float, rates: SnapshotRates | None = None) -> dict[str, Any]:
    """Everything the dashboard draws. `rates` carries the previous polls (keep one per
    server and pass it each time); without it rates and windows are unknown (None)."""
    rates = rates if rates is not None else SnapshotRates()
    costs = state.observer.costs.snapshot(state.endpoints, now)
    spend = _spend_by_endpoint(costs)
    metrics = state.metrics
    samples = {
        name: _sample_endpoint(m, *spend.get(name, (0.0, 0.0)))
        for name, m in metrics.endpoints.items()
    }
    rate_ref, window_ref = rates.references(now)

    answered = sum(s.answered for s in samples.values()) + sum(metrics.unrouted.responses.values())
    rates.add(Sample(now, samples, answered))

    endpoints, spend_rows = [], []
    for name, m in metrics.endpoints.items():
        kind = "route" if name in state.routes else "endpoint"
        rate = None if rate_ref is None else (now - rate_ref.at, rate_ref.endpoints.get(name))
        window = None if window_ref is None else window_ref.endpoints.get(name)
        endpoints.append(_endpoint_row(name, kind, m, samples[name], rate, window))
        if window_ref is not None and kind == "endpoint":
            spend_rows.append(_spend_row(name, state, samples[name], (now - window_ref.at, window)))
    # Each answer is counted once, under the name the client called (a route's answers
    # are the route's, not its tiers'), so the sums are the server's.
    errors = sum(s.errors for s in samples.values()) + sum(
        n for status, n in metrics.unrouted.responses.items() if status >= 500
    )
    throughput = None
    if rate_ref is not None:
        throughput = round((answered - rate_ref.answered) / (now - rate_ref.at), 2)
    return {
        "at": now,
        "window_s": rates.window_s,
        "mode": _mode(state),
        "totals": {
            "requests": answered,
            "errors": errors,
            "throughput_rps": throughput,
            "error_rate": round(errors / answered, 4) if answered else None,
        },
        "endpoints": endpoints,
        "versions": _versions(state),
        "routes": _routes(state),
        "costs": costs,
        "cache": _cache(state),
        "spend": spend_rows,
        "drift": state.observer.drift.snapshot(),
        "receipts": _receipts(state.observer),
    }
