"""Drift as Prometheus metrics, built at scrape time from each monitor's cached status."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.metrics_core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from surge.observe.drift import ModelDriftRegistry


class DriftCollector(Collector):
    def __init__(self, drift: ModelDriftRegistry) -> None:
        self.drift = drift

    def collect(self) -> Iterator[Metric]:
        psi = GaugeMetricFamily(
            "surge_drift_psi",
            "Population stability index of a signal's live window against its reference "
            "window (absent until both windows hold enough rows)",
            labels=["endpoint", "version", "signal"],
        )
        ks = GaugeMetricFamily(
            "surge_drift_ks_statistic",
            "Two-sample Kolmogorov-Smirnov statistic of a signal's live window against its "
            "reference window",
            labels=["endpoint", "version", "signal"],
        )
        drifting = GaugeMetricFamily(
            "surge_model_drifting",
            "1 while any signal of the model version is at or over its drift threshold",
            labels=["endpoint", "version"],
        )
        confidence = HistogramMetricFamily(
            "surge_model_confidence",
            "Top class probability of every row the model version answered",
            labels=["endpoint", "version"],
        )
        for (endpoint, version), monitor in self.drift.monitors.items():
            signals = monitor.status()
            for s in signals:
                if s["psi"] is not None:
                    psi.add_metric([endpoint, version, s["signal"]], s["psi"])
                    ks.add_metric([endpoint, version, s["signal"]], s["ks"])
            flagged = any(s["drifting"] for s in signals)
            drifting.add_metric([endpoint, version], 1 if flagged else 0)
            if monitor.confidence.total:  # models without probabilities have no histogram
                confidence.add_metric(
                    [endpoint, version], monitor.confidence.cumulative(), monitor.confidence.sum
                )
        yield from (psi, ks, drifting, confidence)
