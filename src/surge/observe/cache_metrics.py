"""Prometheus metrics of the response caches, read from each endpoint's cache at scrape
time (the counts are plain numbers updated on the event loop)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from surge.serving.endpoint import Endpoint


class CacheCollector(Collector):
    def __init__(self, endpoints: dict[str, Endpoint]) -> None:
        self.endpoints = endpoints

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "surge_cache_requests",
            "Requests by what the response cache did: hit (every row cached), miss "
            "(some computed), coalesced (waited for an identical request), stale",
            labels=["endpoint", "result"],
        )
        rows = CounterMetricFamily(
            "surge_cache_rows", "Rows found (hit) or computed (miss)", labels=["endpoint", "result"]
        )
        saved = CounterMetricFamily(
            "surge_cache_saved_compute_seconds",
            "Model time the cache saved (the latency model's estimate for the rows reused)",
            labels=["endpoint"],
        )
        size = GaugeMetricFamily(
            "surge_cache_bytes", "Bytes held in this process's cache", labels=["endpoint"]
        )
        entries = GaugeMetricFamily("surge_cache_entries", "Entries held", labels=["endpoint"])
        evictions = CounterMetricFamily(
            "surge_cache_evictions", "Entries evicted to stay within max_bytes", labels=["endpoint"]
        )
        redis_up = GaugeMetricFamily(
            "surge_cache_redis_up",
            "1 while the shared cache (Redis) answers, 0 while serving goes on uncached by it",
            labels=["endpoint"],
        )
        writes = CounterMetricFamily(
            "surge_cache_redis_writes",
            "Writes to the shared cache (a miss's rows, a hand-over, a release): written, or "
            "dropped (the write-behind queue was full, or Redis did not take the batch)",
            labels=["endpoint", "result"],
        )
        for name, endpoint in self.endpoints.items():
            cache = endpoint.cache
            if cache is None:
                continue
            for result in ("hit", "miss", "coalesced", "stale"):
                requests.add_metric([name, result], cache.results[result])
            for result in ("hit", "miss"):
                rows.add_metric([name, result], cache.rows[result])
            saved.add_metric([name], cache.saved_compute_s)
            memory = cache.memory.stats()
            size.add_metric([name], memory["bytes"])
            entries.add_metric([name], memory["entries"])
            evictions.add_metric([name], memory["evictions"])
            if cache.redis is not None:
                redis_up.add_metric([name], 1.0 if cache.redis.healthy else 0.0)
            if cache.writer is not None:
                writes.add_metric([name, "written"], cache.writer.written)
                writes.add_metric([name, "dropped"], cache.writer.dropped)
        yield from (requests, rows, saved, size, entries, evictions, redis_up, writes)
