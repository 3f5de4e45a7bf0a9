"""Tracing: the caller's traceparent is honoured (or a bad one replaced), sampling follows
the caller then the ratio, and the spans written after the fact carry the promised ids,
the right parents and the request's own stage times."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from surge.config_observe import TracingConfig
from surge.core.context import RequestContext
from surge.observe.span_writer import epoch_ns
from surge.observe.traceparent import TraceState, format_traceparent, parse_traceparent
from surge.observe.tracing import Tracer, build_tracer, stage_spans

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER = "00f067aa0ba902b7"
WALL = 1_700_000_000.0


def context(traceparent: str | None = None, **stamps: float) -> RequestContext:
    ctx = RequestContext("req-1", "digits", deadline=110.0, received=100.0)
    ctx.traceparent = traceparent
    ctx.wall_time = WALL
    ctx.stamps = {"received": 100.0, **stamps}
    return ctx


FULL = {
    "validated": 100.001,
    "routed": 100.0015,
    "admitted": 100.002,
    "batched": 100.005,
    "compute_start": 100.006,
    "compute_end": 100.016,
    "post_routed": 100.0165,
    "responded": 100.018,
}
EVERY_LEG = ["validate", "route", "admit", "queue", "batch", "compute", "post_route", "respond"]


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (f"00-{TRACE}-{CALLER}-01", (int(TRACE, 16), int(CALLER, 16), True)),
        (f"00-{TRACE}-{CALLER}-00", (int(TRACE, 16), int(CALLER, 16), False)),
        (f"  00-{TRACE}-{CALLER}-09 ", (int(TRACE, 16), int(CALLER, 16), True)),
        (f"01-{TRACE}-{CALLER}-01-future-field", (int(TRACE, 16), int(CALLER, 16), True)),
    ],
)
def test_a_valid_traceparent_names_the_callers_trace_and_span(header, expected):
    caller = parse_traceparent(header)
    assert caller is not None
    assert (caller.trace_id, caller.span_id, caller.sampled) == expected


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "garbage",
        f"00-{TRACE}-{CALLER}",  # no flags
        f"00-{TRACE}-{CALLER}-01-extra",  # version 00 has exactly four fields
        f"ff-{TRACE}-{CALLER}-01",  # version ff is forbidden
        f"00-{'0' * 32}-{CALLER}-01",  # all-zero trace id
        f"00-{TRACE}-{'0' * 16}-01",  # all-zero span id
        f"00-{TRACE.upper()}-{CALLER}-01",  # uppercase hex
        f"00-{TRACE[:-1]}-{CALLER}-01",  # short trace id
        f"00-{TRACE}-{CALLER}-0x",  # flags not hex
        f"00-{TRACE}-{CALLER[:-1]}g-01",
    ],
)
def test_a_missing_or_malformed_traceparent_is_ignored_not_an_error(header):
    assert parse_traceparent(header) is None


def test_tracing_is_off_without_an_endpoint():
    assert build_tracer(TracingConfig()) is None


@pytest.fixture
def make_tracer() -> Iterator[Callable[..., tuple[Tracer, InMemorySpanExporter]]]:
    """Tracers exporting in memory, with a fixed sampling draw; shut down after the test."""
    made: list[Tracer] = []

    def make(ratio: float = 1.0, draw: float = 0.5) -> tuple[Tracer, InMemorySpanExporter]:
        exporter = InMemorySpanExporter()
        config = TracingConfig(service_name="surge-test", sample_ratio=ratio)
        made.append(Tracer(config, exporter=exporter, rng=lambda: draw))
        return made[-1], exporter

    yield make
    for tracer in made:
        tracer.shutdown()


def test_begin_joins_the_callers_trace_and_sends_its_own_span_upstream(make_tracer):
    tracer, _ = make_tracer()
    ctx = context(f"00-{TRACE}-{CALLER}-01")
    tracer.begin(ctx)
    state = ctx.trace
    assert state.trace_id == int(TRACE, 16) and state.parent_span_id == int(CALLER, 16)
    assert state.span_id not in (0, int(CALLER, 16))
    assert ctx.outbound_headers == {"traceparent": f"00-{TRACE}-{state.span_id:016x}-01"}
    assert parse_traceparent(ctx.outbound_headers["traceparent"]).span_id == state.span_id


def test_a_bad_traceparent_starts_a_new_trace(make_tracer):
    tracer, _ = make_tracer()
    ctx = context("00-nonsense")
    tracer.begin(ctx)
    assert ctx.trace.parent_span_id is None and ctx.trace.trace_id != 0
    assert parse_traceparent(ctx.outbound_headers["traceparent"]).trace_id == ctx.trace.trace_id


@pytest.mark.parametrize(
    ("flags", "ratio", "draw", "sampled"),
    [
        ("01", 0.0, 0.5, True),  # the caller's yes wins over a ratio of 0
        ("00", 1.0, 0.0, False),  # the caller's no wins over a ratio of 1
        (None, 0.25, 0.2, True),  # no caller: the ratio decides
        (None, 0.25, 0.3, False),
        (None, 0.0, 0.0, False),
    ],
)
def test_sampling_follows_the_caller_then_the_ratio(flags, ratio, draw, sampled, make_tracer):
    tracer, exporter = make_tracer(ratio, draw)
    ctx = context(f"00-{TRACE}-{CALLER}-{flags}" if flags else None, **FULL)
    tracer.begin(ctx)
    assert ctx.trace.sampled is sampled
    assert ctx.outbound_headers["traceparent"].endswith("-01" if sampled else "-00")
    tracer.record(ctx)
    tracer.flush()
    assert len(exporter.get_finished_spans()) == (1 + len(EVERY_LEG) if sampled else 0)


def test_stages_tile_the_request_and_skip_the_ones_it_never_reached():
    names = [name for name, _, _ in stage_spans(context(**FULL))]
    assert names == EVERY_LEG
    refused = stage_spans(context(validated=100.001, responded=100.003))
    assert refused == [("validate", 100.0, 100.001), ("respond", 100.001, 100.003)]


def test_record_writes_a_server_span_with_the_promised_ids_and_stage_children(make_tracer):
    tracer, exporter = make_tracer()
    ctx = context(f"00-{TRACE}-{CALLER}-01", **FULL)
    ctx.status = 200
    ctx.tenant = "acme"
    ctx.decide("split", "digits@1", "canary share")
    ctx.runs.append({"model": "digits@1", "role": "live", "rows": 1, "batch_rows": 4,
                     "compute_s": 0.0025, "queue_s": 0.003})  # fmt: skip
    tracer.begin(ctx)
    tracer.record(ctx)
    assert tracer.flush()
    spans = {span.name: span for span in exporter.get_finished_spans()}
    server = spans.pop("surge digits")
    assert server.kind is SpanKind.SERVER
    assert server.context.trace_id == int(TRACE, 16)
    assert server.context.span_id == ctx.trace.span_id  # what upstreams were told
    assert server.parent.span_id == int(CALLER, 16) and server.parent.is_remote
    assert server.start_time == int(WALL * 1e9)
    assert server.end_time == epoch_ns(ctx, FULL["responded"])
    assert server.resource.attributes["service.name"] == "surge-test"
    attributes = server.attributes
    assert attributes["surge.request_id"] == "req-1" and attributes["surge.model"] == "digits@1"
    assert attributes["surge.decisions"] == 1 and attributes["surge.tenant"] == "acme"
    assert attributes["http.response.status_code"] == 200
    assert [e.attributes["surge.batch_rows"] for e in server.events] == [4]
    assert set(spans) == set(EVERY_LEG)
    for child in spans.values():
        assert child.parent.span_id == server.context.span_id
        assert child.context.trace_id == server.context.trace_id
    compute = spans["compute"]
    assert compute.start_time == epoch_ns(ctx, FULL["compute_start"])
    assert compute.end_time - compute.start_time == pytest.approx(10_000_000, abs=2)
    assert compute.attributes["surge.batch_rows"] == 4


def test_a_request_that_starts_the_trace_gets_a_root_span_with_its_chosen_trace_id(make_tracer):
    tracer, exporter = make_tracer()
    ctx = context(None, **FULL)
    ctx.status = 503
    ctx.error = "overloaded"
    tracer.begin(ctx)
    tracer.record(ctx)
    tracer.flush()
    server = next(s for s in exporter.get_finished_spans() if s.name == "surge digits")
    assert server.parent is None
    assert (server.context.trace_id, server.context.span_id) == (
        ctx.trace.trace_id,
        ctx.trace.span_id,
    )
    assert server.status.status_code is StatusCode.ERROR
    assert server.attributes["error.type"] == "overloaded"


def test_later_spans_get_fresh_ids_not_the_pinned_ones(make_tracer):
    tracer, exporter = make_tracer()
    ctx = context(f"00-{TRACE}-{CALLER}-01", **FULL)
    tracer.begin(ctx)
    tracer.record(ctx)
    tracer.flush()
    ids = [span.context.span_id for span in exporter.get_finished_spans()]
    assert len(set(ids)) == len(ids) == 1 + len(EVERY_LEG)


def test_a_context_without_trace_state_records_nothing(make_tracer):
    tracer, exporter = make_tracer()
    tracer.record(context(**FULL))  # begin never ran (e.g. a context made before tracing)
    ctx = context(**FULL)
    ctx.trace = TraceState(1, 2, None, sampled=False)
    tracer.record(ctx)
    tracer.flush()
    assert exporter.get_finished_spans() == ()


def test_format_traceparent_pads_ids():
    assert format_traceparent(1, 2, True) == f"00-{1:032x}-{2:016x}-01"


def test_with_tracing_off_nothing_of_opentelemetry_is_imported():
    # A fresh interpreter: this test module itself has imported the SDK.
    probe = (
        "import sys\n"
        "from surge.config_observe import TracingConfig\n"
        "from surge.observe.tracing import build_tracer\n"
        "assert build_tracer(TracingConfig()) is None\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_an_endpoint_switches_tracing_on():
    tracer = build_tracer(TracingConfig(otlp_endpoint="http://127.0.0.1:9/v1/traces"))
    assert isinstance(tracer, Tracer)
    tracer.shutdown()  # nothing was recorded, so nothing is sent to the dead port
