"""Cost and energy totals per endpoint, version and tenant, and the idle line.

The receipt writer adds each written receipt's runs here (on its thread, hence the
lock); a scrape or the dashboard reads the totals. Idle cost is what warm capacity
costs while nobody calls: replica-seconds since a deployment went live minus the
seconds its replicas were busy, at the endpoint's compute price.

The tenant label is bounded: X-Tenant is whatever a caller sends, and each value would
be a new series in every scrape, kept for good. Only the tenants named in the config
(`tenants:`) get their own; any other name is counted under `other`, and requests without
a tenant under "" (receipts keep the tenant as the server decided it).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from surge.config_observe import CostConfig

if TYPE_CHECKING:
    from surge.serving.deployment import Deployment
    from surge.serving.endpoint import Endpoint

NO_TENANT = ""  # the label value for requests without X-Tenant
# The label value of every tenant the config does not name (a configured tenant called
# "other" shares it).
OTHER_TENANT = "other"


@dataclass
class Totals:
    requests: int = 0  # live runs (a cascade's two tiers count twice: both ran)
    rows: int = 0
    compute_s: float = 0.0
    cpu_s: float = 0.0
    cost: float = 0.0
    energy_j: float = 0.0
    prompt_tokens: int = 0  # language-model runs only
    completion_tokens: int = 0


class CostLedger:
    def __init__(self, prices: dict[str, CostConfig], tenants: Collection[str] = ()) -> None:
        self.prices = prices
        self.tenants = frozenset(tenants)  # those labelled by name (`config.tenants`)
        self._lock = threading.Lock()
        self.totals: dict[tuple[str, str, str], Totals] = {}  # (endpoint, version, tenant)
        # endpoint -> [requests answered wholly from the cache, compute s saved, cost saved]
        self.saved: dict[str, list[float]] = {}

    def tenant_label(self, tenant: str | None) -> str:
        if not tenant:
            return NO_TENANT
        return tenant if tenant in self.tenants else OTHER_TENANT

    def add(self, records: list[dict[str, Any]]) -> None:
        """Add receipt records (`observe.receipt.record_of`: runs priced already)."""
        with self._lock:
            for record in records:
                cache = record.get("cache")
                if cache is not None and record["status"] == 200:
                    saved = self.saved.setdefault(cache.get("endpoint") or record["endpoint"],
                                                  [0, 0.0, 0.0])  # fmt: skip
                    saved[0] += 1 if cache["result"] in ("hit", "stale", "coalesced") else 0
                    saved[1] += cache.get("saved_compute_s", 0.0)
                    saved[2] += cache.get("saved_cost", 0.0)
                tenant = self.tenant_label(record["tenant"])
                for run in record["runs"]:
                    key = (run["endpoint"], run["version"], tenant)
                    totals = self.totals.get(key)
                    if totals is None:
                        totals = self.totals[key] = Totals()
                    totals.requests += 1
                    totals.rows += run["rows"]
                    totals.compute_s += run["compute_s"]
                    totals.cpu_s += run["cpu_s"]
                    totals.cost += run["cost"]
                    totals.energy_j += run["energy_j"]
                    totals.prompt_tokens += run.get("prompt_tokens", 0)
                    totals.completion_tokens += run.get("completion_tokens", 0)

    def items(self) -> list[tuple[tuple[str, str, str], Totals]]:
        with self._lock:
            return [(k, Totals(**vars(v))) for k, v in self.totals.items()]

    def idle(self, deployment: Deployment, now: float) -> tuple[float, float]:
        """(idle replica-seconds, their cost) of a live deployment."""
        if deployment.ready_at is None:
            return 0.0, 0.0
        capacity = (now - deployment.ready_at) * deployment.capacity_replicas
        idle_s = max(0.0, capacity - deployment.busy_s)
        price = self.prices.get(deployment.name)
        return idle_s, idle_s * (price.per_compute_second if price else 0.0)

    def snapshot(self, endpoints: dict[str, Endpoint], now: float) -> list[dict[str, Any]]:
        """Per endpoint and version (tenants summed), with the idle line: the dashboard's table."""
        rows: dict[tuple[str, str], dict[str, Any]] = {}
        for (endpoint, version, _tenant), t in self.items():
            row = rows.setdefault((endpoint, version), _row(endpoint, version, self.prices))
            row["requests"] += t.requests
            row["compute_s"] += t.compute_s
            row["cost"] += t.cost
            row["energy_j"] += t.energy_j
            row["prompt_tokens"] += t.prompt_tokens
            row["completion_tokens"] += t.completion_tokens
        for endpoint in endpoints.values():
            for deployment in endpoint.deployments:
                key = (endpoint.name, deployment.version)
                row = rows.setdefault(key, _row(*key, self.prices))
                row["busy_s"] = deployment.busy_s
                row["idle_s"], row["idle_cost"] = self.idle(deployment, now)
        return [rows[k] for k in sorted(rows)]

    def cache_savings(self) -> list[dict[str, Any]]:
        """What the response caches saved, per endpoint (`surge costs`, the dashboard)."""
        with self._lock:
            return [
                {"endpoint": e, "requests_reused": int(s[0]), "compute_s": s[1], "cost": s[2]}
                for e, s in sorted(self.saved.items())
            ]

    def by_tenant(self) -> list[dict[str, Any]]:
        """Per tenant (endpoints summed): requests, tokens and cost; `surge costs` shows it."""
        rows: dict[str, dict[str, Any]] = {}
        for (_endpoint, _version, tenant), t in self.items():
            row = rows.setdefault(tenant, {"tenant": tenant, "requests": 0, "cost": 0.0,
                                           "prompt_tokens": 0, "completion_tokens": 0})  # fmt: skip
            row["requests"] += t.requests
            row["cost"] += t.cost
            row["prompt_tokens"] += t.prompt_tokens
            row["completion_tokens"] += t.completion_tokens
        return [rows[k] for k in sorted(rows)]


def _row(endpoint: str, version: str, prices: dict[str, CostConfig]) -> dict[str, Any]:
    price = prices.get(endpoint)
    return {
        "endpoint": endpoint,
        "version": version,
        "requests": 0,
        "compute_s": 0.0,
        "cost": 0.0,
        "energy_j": 0.0,
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "busy_s": 0.0,
        "idle_s": 0.0,
        "idle_cost": 0.0,
        "currency": price.currency if price else "USD",
    }


class CostCollector(Collector):
    """surge_cost_total, surge_energy_joules_total, surge_compute_seconds_total per endpoint,
    version and tenant; the idle line and busy time per deployment; budgets."""

    def __init__(
        self,
        ledger: CostLedger,
        endpoints: dict[str, Endpoint],
        clock: Callable[[], float],
        receipt_counts: Callable[[], tuple[int, int]],
    ) -> None:
        self.ledger = ledger
        self.endpoints = endpoints
        self.clock = clock
        self.receipt_counts = receipt_counts

    def collect(self) -> Iterator[Metric]:
        labels = ["endpoint", "version", "tenant"]
        cost = CounterMetricFamily(
            "surge_cost",
            "Attributed cost of answered requests (the endpoint's currency)",
            labels=labels,
        )
        energy = CounterMetricFamily(
            "surge_energy_joules", "Attributed energy of answered requests", labels=labels
        )
        compute = CounterMetricFamily(
            "surge_compute_seconds", "Replica time attributed to requests", labels=labels
        )
        cpu = CounterMetricFamily(
            "surge_cpu_seconds", "CPU time of requests' batches", labels=labels
        )
        tokens = CounterMetricFamily(
            "surge_tokens",
            "Language-model tokens of answered requests (kind: prompt or completion)",
            labels=[*labels, "kind"],
        )
        for (endpoint, version, tenant), t in self.ledger.items():
            key = [endpoint, version, tenant]
            cost.add_metric(key, t.cost)
            energy.add_metric(key, t.energy_j)
            compute.add_metric(key, t.compute_s)
            cpu.add_metric(key, t.cpu_s)
            if t.prompt_tokens or t.completion_tokens:
                tokens.add_metric([*key, "prompt"], t.prompt_tokens)
                tokens.add_metric([*key, "completion"], t.completion_tokens)
        yield from (cost, energy, compute, cpu, tokens)
        idle = CounterMetricFamily(
            "surge_idle_cost",
            "Cost of warm replica time nobody used",
            labels=["endpoint", "version"],
        )
        idle_s = CounterMetricFamily(
            "surge_idle_replica_seconds",
            "Warm replica time nobody used",
            labels=["endpoint", "version"],
        )
        busy = CounterMetricFamily(
            "surge_replica_busy_seconds", "Time replicas spent running batches",
            labels=["endpoint", "version"],
        )  # fmt: skip
        now = self.clock()
        for endpoint in self.endpoints.values():
            for deployment in endpoint.deployments:
                key = [endpoint.name, deployment.version]
                seconds, money = self.ledger.idle(deployment, now)
                idle.add_metric(key, money)
                idle_s.add_metric(key, seconds)
                busy.add_metric(key, deployment.busy_s)
        yield from (idle, idle_s, busy)
        budget = GaugeMetricFamily(
            "surge_cost_budget_per_hour", "Configured spend per hour", labels=["endpoint"]
        )
        for name, price in self.ledger.prices.items():
            if price.budget_per_hour is not None:
                budget.add_metric([name], price.budget_per_hour)
        yield budget
        written, dropped = self.receipt_counts()
        yield CounterMetricFamily("surge_receipts_written", "Receipts stored", value=written)
        yield CounterMetricFamily(
            "surge_receipts_dropped", "Receipts dropped because the buffer was full", value=dropped
        )
