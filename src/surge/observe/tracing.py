"""OpenTelemetry traces: one server span per request, a child span per stage.

Off unless `observability.tracing.otlp_endpoint` is set: `build_tracer` then returns None,
nothing from OpenTelemetry is imported, and the hot path pays one `is not None`.

When on, the per-request work is split in two:
- `begin` (when the context is made) reads the caller's `traceparent`, decides sampling
  and picks this request's server span id up front, so the upstream calls a model makes
  while the request runs can already name it as their parent (`ctx.outbound_headers`).
- `record` (on the event loop, once the answer is ready) writes the spans after the fact
  from the context's stamps; the SDK's batch processor exports them from its own thread.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from surge.core.clock import monotonic
from surge.core.context import RequestContext, legs
from surge.observe.traceparent import (
    TraceState,
    format_traceparent,
    new_span_id,
    new_trace_id,
    parse_traceparent,
)

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter

    from surge.config_observe import TracingConfig

log = logging.getLogger(__name__)


def build_tracer(config: TracingConfig) -> Tracer | None:
    """A tracer exporting to the configured OTLP endpoint, or None when tracing is off."""
    if not config.otlp_endpoint:
        return None
    return Tracer(config)


class Tracer:
    def __init__(
        self,
        config: TracingConfig,
        exporter: SpanExporter | None = None,
        rng: Callable[[], float] = random.random,
    ) -> None:
        """`exporter` replaces the OTLP/HTTP exporter (tests pass an in-memory one);
        `rng` draws the sampling decision for requests that arrive without a trace."""
        # Imported here, not at the top: with tracing off nothing of OpenTelemetry loads.
        from surge.observe.span_writer import SpanWriter

        self.sample_ratio = config.sample_ratio
        self.rng = rng
        self.writer = SpanWriter(config, exporter)
        self._warned = False

    def begin(self, ctx: RequestContext) -> None:
        """Join the caller's trace (or start one) and set the headers upstream calls carry."""
        caller = parse_traceparent(ctx.traceparent)
        if caller is None:
            state = TraceState(new_trace_id(), new_span_id(), None, self.rng() < self.sample_ratio)
        else:
            # The caller's sampled flag wins over our ratio: a trace is kept whole or not at all.
            state = TraceState(caller.trace_id, new_span_id(), caller.span_id, caller.sampled)
        ctx.trace = state
        # Sent even when not sampled: the upstream must see the decision (flags 00) to honour it.
        header = format_traceparent(state.trace_id, state.span_id, state.sampled)
        if ctx.outbound_headers is None:
            ctx.outbound_headers = {"traceparent": header}
        else:
            ctx.outbound_headers["traceparent"] = header
        if not ctx.wall_time:  # the observer sets it; a context made elsewhere may not have
            ctx.wall_time = time.time() - (monotonic() - ctx.received)

    def record(self, ctx: RequestContext) -> None:
        """Write the request's spans; a failure here is logged once, never raised."""
        state = ctx.trace
        if not isinstance(state, TraceState) or not state.sampled:
            return
        try:
            self.writer.write(ctx, state, stage_spans(ctx))
        except Exception:  # a trace is never worth failing (or 500-ing) a request for
            if not self._warned:
                self._warned = True
                log.warning("could not record a trace; later failures go unlogged", exc_info=True)

    def flush(self, timeout_ms: int = 30_000) -> bool:
        """Export every span recorded so far; True when all went out in time."""
        return self.writer.flush(timeout_ms)

    def shutdown(self) -> None:
        """Flush and stop the exporter's thread (the lifespan's last word)."""
        self.writer.shutdown()


def stage_spans(ctx: RequestContext) -> list[tuple[str, float, float]]:
    """(span name, start, end) in monotonic seconds for each stage the request stamped:
    the request's legs (`core.context.legs`), so the spans tile the server span."""
    return legs(ctx.stamps, ctx.stamps.get("received", ctx.received))
