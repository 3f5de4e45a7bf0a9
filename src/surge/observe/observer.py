"""Everything that watches a request, behind two calls from the protocol adapters:
`begin` when the request context is made, `finish` when its answer (or error) is ready.

What is off costs nothing: tracing is None without an OTLP endpoint, the access log
is one comparison at its default sample of 0, receipts and drift are switched off in
the config, and per-stage timing can be too (for the overhead benchmark).
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

from surge.config import Config
from surge.core.clock import monotonic
from surge.core.context import RequestContext
from surge.observe.access_log import AccessLog
from surge.observe.batch_watch import BatchWatch
from surge.observe.cost import CostCollector, CostLedger
from surge.observe.drift import ModelDriftRegistry, summarize
from surge.observe.drift_metrics import DriftCollector
from surge.observe.energy import EnergyMeter
from surge.observe.metrics import Metrics
from surge.observe.receipt import build_receipt
from surge.observe.receipts import ReceiptLog
from surge.observe.tracing import build_tracer
from surge.runtimes.base import RuntimeSettings

if TYPE_CHECKING:
    from surge.serving.endpoint import Endpoint


class Observer:
    def __init__(self, config: Config, metrics: Metrics, machine_cores: int) -> None:
        observability = config.observability
        self.config = observability
        self.machine_cores = machine_cores
        self.prices = {name: e.cost for name, e in config.endpoints.items()}
        self.costs = CostLedger(self.prices, tenants=config.tenants)
        self.receipts: ReceiptLog | None = None
        if observability.receipts.enabled:
            url = observability.receipts.url or config.registry_url
            self.receipts = ReceiptLog(
                observability.receipts, self.prices, self.costs, url, config.registry_namespace
            )
        self.drift = ModelDriftRegistry(observability.drift)
        self.tracer = build_tracer(observability.tracing)
        self.access = AccessLog(observability.logs)
        self.stage_timing = observability.stage_timing
        self.inline_header = observability.receipts.inline_header.lower().encode("latin-1")
        self.metrics = metrics

    def register(self, endpoints: dict[str, Endpoint]) -> None:
        """Export the cost, energy, receipt and drift metrics of these endpoints."""
        receipts = self.receipts
        self.metrics.registry.register(
            CostCollector(
                self.costs,
                endpoints,
                monotonic,
                receipts.counts if receipts is not None else lambda: (0, 0),
            )
        )
        self.metrics.registry.register(DriftCollector(self.drift))

    def watch_for(self, endpoint: str, version: str, shadow: bool) -> BatchWatch | None:
        """The hooks a deployment of `endpoint`@`version` runs around its batches."""
        record_runs = self.receipts is not None
        drift_on = (
            self.drift is not None and self.config.drift.enabled and not shadow
        )  # a shadow's inputs are live's
        if not record_runs and not drift_on:
            return None
        energy = self.config.energy
        cores = self.machine_cores

        def meter(replica: RuntimeSettings) -> EnergyMeter:
            return EnergyMeter(energy, replica.threads, cores, replica.device)

        monitor = self.drift.monitor_for(endpoint, version) if drift_on else None

        def retire() -> None:
            if monitor is not None:
                self.drift.discard(endpoint, version)

        return BatchWatch(
            meter=meter if record_runs else None,
            summarize=summarize if monitor is not None else None,
            observe=monitor.observe if monitor is not None else None,
            record_runs=record_runs,
            retire=retire,
        )

    def energy_sources(self, endpoints: dict[str, Endpoint]) -> dict[str, str]:
        """Where each model version's energy figures come from (rapl, estimate, +nvml)."""
        out = {}
        for endpoint in endpoints.values():
            for deployment in endpoint.deployments:
                meter = deployment.replicas[0].meter if deployment.replicas else None
                out[deployment.spec.version.ref] = meter.source if meter else "off"
        return out

    async def start(self) -> None:
        if self.receipts is not None:
            await self.receipts.start()

    async def stop(self) -> None:
        if self.receipts is not None:
            await self.receipts.stop()
        if self.tracer is not None:
            self.tracer.shutdown()

    # -- per request -------------------------------------------------------------------------

    def begin(self, ctx: RequestContext, headers: dict[bytes, str]) -> None:
        ctx.wall_time = time.time() - (monotonic() - ctx.received)
        ctx.tenant = headers.get(b"x-tenant")
        ctx.traceparent = headers.get(b"traceparent")
        if self.tracer is not None:
            self.tracer.begin(ctx)

    def finish(
        self, ctx: RequestContext, status: int, error: str | None, headers: dict[bytes, str]
    ) -> str | None:
        """Record the finished request; returns the receipt as JSON when the client asked
        for it inline (the `inline_header` request header set to 1)."""
        ctx.status = status
        ctx.error = error
        if "responded" not in ctx.stamps:
            ctx.stamp("responded", monotonic())
        if self.receipts is not None:
            self.receipts.submit(ctx)
        if self.tracer is not None:
            self.tracer.record(ctx)
        self.access.maybe_log(ctx)
        if headers.get(self.inline_header) == "1":
            # ASCII-only JSON: a header value must be latin-1, and reasons may not be.
            return json.dumps(build_receipt(ctx, self.prices), separators=(",", ":"))
        return None
