"""The OpenTelemetry SDK side of tracing: turn a finished request into exported spans.

Imported only when tracing is on (see `tracing.py`). The spans are created after the
fact with explicit start and end times, through the SDK's public `start_span`; the one
thing it would otherwise choose itself is the server span's ids, which `Tracer.begin`
already promised to upstreams. `PinnedIdGenerator` hands those to the SDK for that one
span, so the SDK keeps owning span creation, limits and export.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    set_span_in_context,
)

from surge.config_observe import TracingConfig
from surge.core.context import RequestContext
from surge.observe.traceparent import TraceState

RUN_FIELDS = ("model", "role", "rows", "batch_rows", "compute_s", "queue_s")


class PinnedIdGenerator(IdGenerator):
    """Random ids, except while `pinned`: then the next span made on this thread gets
    the pinned ids (the trace id only matters for a root span, which has no parent)."""

    def __init__(self) -> None:
        self._random = RandomIdGenerator()
        self._local = threading.local()

    @contextmanager
    def pinned(self, trace_id: int, span_id: int) -> Iterator[None]:
        self._local.ids = (trace_id, span_id)
        try:
            yield
        finally:
            self._local.ids = None

    def generate_trace_id(self) -> int:
        ids = getattr(self._local, "ids", None)
        return ids[0] if ids else self._random.generate_trace_id()

    def generate_span_id(self) -> int:
        ids = getattr(self._local, "ids", None)
        return ids[1] if ids else self._random.generate_span_id()

    def is_trace_id_random(self) -> bool:
        return True  # ours come from os.urandom (traceparent.new_trace_id), as the SDK's do


class SpanWriter:
    def __init__(self, config: TracingConfig, exporter: SpanExporter | None = None) -> None:
        self.ids = PinnedIdGenerator()
        # Sampling is decided per request in `Tracer.begin`; whatever reaches here is kept.
        self.provider = TracerProvider(
            sampler=ALWAYS_ON,
            resource=Resource.create({"service.name": config.service_name}),
            id_generator=self.ids,
        )
        if exporter is None:
            exporter = OTLPSpanExporter(endpoint=config.otlp_endpoint)
        # Batching keeps export (HTTP, protobuf) on the processor's thread, off the loop.
        self.provider.add_span_processor(BatchSpanProcessor(exporter))
        self.tracer = self.provider.get_tracer("surge")

    def write(
        self, ctx: RequestContext, state: TraceState, stages: list[tuple[str, float, float]]
    ) -> None:
        start = ctx.stamps.get("received", ctx.received)
        end = ctx.stamps.get("responded") or max([start, *ctx.stamps.values()])
        with self.ids.pinned(state.trace_id, state.span_id):
            server = self.tracer.start_span(
                f"surge {ctx.endpoint}",
                context=_parent_context(state),
                kind=SpanKind.SERVER,
                attributes=_server_attributes(ctx),
                start_time=epoch_ns(ctx, start),
            )
        inside = set_span_in_context(server)
        for name, begun, ended in stages:
            child = self.tracer.start_span(name, context=inside, start_time=epoch_ns(ctx, begun))
            if name == "compute" and ctx.runs:
                child.set_attribute("surge.batch_rows", ctx.runs[-1].get("batch_rows", 0))
            child.end(end_time=epoch_ns(ctx, ended))
        # A run has durations but no start time of its own, so it is an event at the end
        # of compute rather than a span that would claim a time it did not take.
        run_at = epoch_ns(ctx, ctx.stamps.get("compute_end", end))
        for run in list(ctx.runs):  # a copy: a shadow's run may be appended meanwhile
            fields = {f"surge.{k}": run[k] for k in RUN_FIELDS if run.get(k) is not None}
            server.add_event("model run", fields, timestamp=run_at)
        if ctx.status >= 500:
            server.set_status(Status(StatusCode.ERROR, ctx.error or str(ctx.status)))
        server.end(end_time=epoch_ns(ctx, end))

    def flush(self, timeout_ms: int) -> bool:
        return self.provider.force_flush(timeout_ms)

    def shutdown(self) -> None:
        self.provider.shutdown()


def epoch_ns(ctx: RequestContext, at: float) -> int:
    """A monotonic stamp of this request as epoch nanoseconds (what OTLP carries)."""
    return int(ctx.wall_time * 1e9) + int((at - ctx.received) * 1e9)


def _parent_context(state: TraceState) -> Context:
    if state.parent_span_id is None:
        # An explicit empty context: never inherit whatever span is current on this thread.
        return Context()
    caller = SpanContext(
        state.trace_id,
        state.parent_span_id,
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
    )
    return set_span_in_context(NonRecordingSpan(caller), Context())


def _server_attributes(ctx: RequestContext) -> dict[str, Any]:
    served = next((r["model"] for r in reversed(ctx.runs) if r.get("role") == ctx.role), None)
    attributes: dict[str, Any] = {
        "surge.request_id": ctx.request_id,
        "surge.endpoint": ctx.endpoint,
        "http.response.status_code": ctx.status,
        "surge.degraded": ctx.degraded,
        "surge.decisions": len(ctx.decisions),
        "surge.cache_hit": ctx.cache_hit,
        "surge.role": ctx.role,
    }
    optional = {"surge.model": served, "surge.tenant": ctx.tenant, "error.type": ctx.error}
    attributes.update({k: v for k, v in optional.items() if v is not None})
    return attributes
