"""Drives the autoscaler (routing/autoscale.py) for every endpoint that has `autoscale:`.

Every `SAMPLE_S` it samples each endpoint's live deployment (rows queued or running,
the oldest queued row's wait); every `evaluate_interval_s` it hands the policy the
average of those samples (an instant's count jumps with every batch), takes its
decision and reconciles the deployment's replicas with it (`Deployment.scale_to`, in the
background: loading and warming a replica takes seconds). Each change is audited with
the numbers that chose it, off the tick and under a deadline, and exported
(`surge_replicas{endpoint,state}`, `surge_autoscale_decisions_total{endpoint,action}`).

Each process scales its own replicas on its own load, as each decides its own burst
mode: a load balancer spreads the load, so each sees its share.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from surge.config_autoscale import AutoscaleConfig
from surge.core.clock import monotonic
from surge.routing.autoscale import Autoscaler, ScaleDecision, Signals

if TYPE_CHECKING:
    from surge.serving.endpoint import Endpoint
    from surge.store.registry import RegistryStore

log = logging.getLogger("surge.autoscale")

SAMPLE_S = 0.1  # load samples per evaluation: 10 at the default 1 s interval
AUDIT_TIMEOUT_S = 5.0


class EndpointScaler:
    """One endpoint's autoscaler and what it was fed since its last decision."""

    def __init__(self, name: str, config: AutoscaleConfig, replicas: int, now: float) -> None:
        self.name = name
        self.config = config
        policy = config.policy()
        start = min(max(replicas, policy.min_replicas), policy.max_replicas)
        self.autoscaler = Autoscaler(policy, now=now, replicas=start)
        self.rows_sum = 0.0
        self.samples = 0
        self.wait_s = 0.0
        self.next_decision_at = now + config.evaluate_interval_s
        self.decisions: Counter[str] = Counter()
        self.last: ScaleDecision | None = None
        self.scaling: asyncio.Task[None] | None = None


class AutoscaleDriver:
    def __init__(
        self,
        endpoints: dict[str, Endpoint],
        configs: dict[str, AutoscaleConfig],
        store: RegistryStore,
        actor: str,
        clock: Callable[[], float] = monotonic,
    ) -> None:
        self.endpoints = endpoints
        self.store = store
        self.actor = actor
        self.clock = clock
        now = clock()
        self.scalers = {
            name: EndpointScaler(name, config, len(endpoints[name].stable.replicas), now)
            for name, config in configs.items()
        }
        self._task: asyncio.Task[None] | None = None
        self._audits: set[asyncio.Task[Any]] = set()

    def start(self) -> None:
        if self.scalers:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="autoscale")

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *(s.scaling for s in self.scalers.values())) if t]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, *self._audits, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(SAMPLE_S)
            now = self.clock()
            for scaler in self.scalers.values():
                try:
                    self.tick(scaler, now)
                except Exception:  # one endpoint's trouble must not stop the others
                    log.exception("autoscaling %s failed", scaler.name)

    def tick(self, scaler: EndpointScaler, now: float) -> ScaleDecision | None:
        """Sample the endpoint; when its interval is up, decide and act (None before)."""
        deployment = self.endpoints[scaler.name].stable
        scaler.rows_sum += deployment.inflight_rows
        scaler.samples += 1
        scaler.wait_s = max(scaler.wait_s, deployment.batcher.oldest_wait_s(now))
        if now < scaler.next_decision_at:
            return None
        ready, pending = len(deployment.replicas), deployment.pending_replicas
        # What one replica serves at full batches: lets the policy size an overload by
        # the arrival rate, not by the backlog (which grows to a deadline's worth).
        top = deployment.spec.batching.max_batch_size
        batch_s = deployment.latency.estimate_s(top)
        per_replica = top / batch_s if batch_s > 0 else None
        signals = Signals(
            scaler.rows_sum / scaler.samples, scaler.wait_s, ready, pending, per_replica
        )
        scaler.rows_sum, scaler.samples, scaler.wait_s = 0.0, 0, 0.0
        scaler.next_decision_at = now + scaler.config.evaluate_interval_s
        autoscaler = scaler.autoscaler
        autoscaler.observe(now, signals)
        decision = autoscaler.decide(now)
        scaler.last = decision
        scaler.decisions[decision.action] += 1
        idle = scaler.scaling is None or scaler.scaling.done()  # one change at a time
        if decision.desired != signals.current and idle:
            scaler.scaling = asyncio.get_running_loop().create_task(
                self._scale(scaler.name, decision.desired), name=f"scale-{scaler.name}"
            )
        if decision.action != "hold":
            log.info("%s: %s to %d replicas: %s", scaler.name, decision.action,
                     decision.desired, decision.reason)  # fmt: skip
            self._audit(scaler.name, decision)
        return decision

    async def _scale(self, name: str, count: int) -> None:
        try:
            await self.endpoints[name].stable.scale_to(count)
        except Exception as exc:
            log.warning("%s: could not scale to %d replicas: %s", name, count, exc)

    def _audit(self, name: str, decision: ScaleDecision) -> None:
        numbers = asdict(decision)

        async def write() -> None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(AUDIT_TIMEOUT_S):
                    await asyncio.to_thread(
                        self.store.append_audit, actor=self.actor, action="autoscale",
                        endpoint=name, reason=decision.reason, now=time.time(),
                        before={"replicas": decision.current}, after=numbers,
                    )  # fmt: skip

        task = asyncio.get_running_loop().create_task(write())
        self._audits.add(task)
        task.add_done_callback(self._audits.discard)

    # -- what status and metrics show -----------------------------------------------------

    def status(self, name: str) -> dict[str, Any] | None:
        scaler = self.scalers.get(name)
        if scaler is None:
            return None
        deployment = self.endpoints[name].stable
        last = scaler.last
        return {
            "min_replicas": scaler.config.min_replicas,
            "max_replicas": scaler.config.max_replicas,
            "ready": deployment.ready_replicas,
            "pending": deployment.pending_replicas,
            "desired": scaler.autoscaler.desired,
            "last_decision": None if last is None else asdict(last),
        }

    def collect(self) -> Iterator[Metric]:
        replicas = GaugeMetricFamily(
            "surge_replicas",
            "Replicas of each endpoint's live version: ready (serving) and pending "
            "(loading and warming)",
            labels=["endpoint", "state"],
        )
        for name, endpoint in self.endpoints.items():
            deployment = endpoint.stable
            replicas.add_metric([name, "ready"], deployment.ready_replicas)
            replicas.add_metric([name, "pending"], deployment.pending_replicas)
        decisions = CounterMetricFamily(
            "surge_autoscale_decisions",
            "Autoscaler decisions by endpoint and action (up, down, hold)",
            labels=["endpoint", "action"],
        )
        desired = GaugeMetricFamily(
            "surge_autoscale_desired_replicas",
            "Replicas the autoscaler wants for the endpoint",
            labels=["endpoint"],
        )
        for name, scaler in self.scalers.items():
            for action in ("up", "down", "hold"):
                decisions.add_metric([name, action], scaler.decisions[action])
            desired.add_metric([name], scaler.autoscaler.desired)
        yield from (replicas, decisions, desired)
