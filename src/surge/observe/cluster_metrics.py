"""This process's view of the control plane, read at scrape time: whether the registry
and Redis answer, whether it leads the rollouts, and which route revision it serves."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from surge.cluster.plane import ControlPlane
    from surge.serving.rollouts import Rollouts


class ClusterCollector(Collector):
    def __init__(self, plane: ControlPlane, rollouts: Rollouts) -> None:
        self.plane = plane
        self.rollouts = rollouts

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "surge_control_plane_up",
            "1 while the shared state answers this process (registry, redis); at 0 it "
            "serves its last known routes and refuses changes with 503",
            labels=["link"],
        )
        for link, healthy in self.plane.links().items():
            up.add_metric([link], 1.0 if healthy else 0.0)
        leader = GaugeMetricFamily(
            "surge_rollout_leader", "1 in the one process whose rollout controller acts"
        )
        leader.add_metric([], 1.0 if self.plane.lease.leading else 0.0)
        revision = GaugeMetricFamily(
            "surge_route_revision",
            "The registry revision of the route this process serves, per endpoint",
            labels=["endpoint"],
        )
        for name, number in self.rollouts.reconciler.revisions.items():
            revision.add_metric([name], float(number))
        failed = GaugeMetricFamily(
            "surge_route_load_failed",
            "1 while this process cannot serve its endpoint's latest route (a version "
            "would not load); it serves the previous one meanwhile",
            labels=["endpoint"],
        )
        for name in self.rollouts.endpoints:
            failed.add_metric([name], 1.0 if name in self.rollouts.reconciler.failures else 0.0)
        evicted = CounterMetricFamily(
            "surge_pending_feedback_evicted",
            "Bandit answers forgotten before they were shared for feedback (the local "
            "buffer was full while the shared store was unreachable)",
        )
        evicted.add_metric([], self.plane.pending.evicted)
        yield from (up, leader, revision, failed, evicted)
