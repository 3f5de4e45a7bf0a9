"""The W3C Trace Context `traceparent` header: read the caller's, write the one we send on.

Pure and dependency-free, so the per-request part of tracing (`Tracer.begin`) costs a
split and a few `int(..., 16)` calls, and tests need no OpenTelemetry.
https://www.w3.org/TR/trace-context/#traceparent-header
"""

from __future__ import annotations

import os
from dataclasses import dataclass

SAMPLED_FLAG = 0x01
_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True, slots=True)
class CallerSpan:
    """What a valid `traceparent` says: the trace, the caller's span, its sampled flag."""

    trace_id: int
    span_id: int
    sampled: bool


@dataclass(frozen=True, slots=True)
class TraceState:
    """One request's trace: kept on `RequestContext.trace` between `begin` and `record`.

    `span_id` is this server's span, chosen up front so the upstream calls made while the
    request runs can name it as their parent before the span itself is written.
    """

    trace_id: int
    span_id: int
    parent_span_id: int | None  # the caller's span; None when this request starts the trace
    sampled: bool


def parse_traceparent(value: str | None) -> CallerSpan | None:
    """The caller's span, or None when the header is absent or malformed (never an error:
    a bad header from a client must not fail its request; we start a new trace instead)."""
    if not value:
        return None
    parts = value.strip().split("-")
    if len(parts) < 4:
        return None
    version, trace_hex, span_hex, flags_hex = parts[:4]
    if not (_is_hex(version, 2) and _is_hex(trace_hex, 32) and _is_hex(span_hex, 16)):
        return None
    if not _is_hex(flags_hex, 2) or version == "ff":
        return None
    # Version 00 has exactly four fields; a later version may append more, which we skip.
    if version == "00" and len(parts) != 4:
        return None
    trace_id = int(trace_hex, 16)
    span_id = int(span_hex, 16)
    if trace_id == 0 or span_id == 0:
        return None
    return CallerSpan(trace_id, span_id, bool(int(flags_hex, 16) & SAMPLED_FLAG))


def format_traceparent(trace_id: int, span_id: int, sampled: bool) -> str:
    return f"00-{trace_id:032x}-{span_id:016x}-{'01' if sampled else '00'}"


def new_trace_id() -> int:
    while True:  # all-zero ids are invalid; the loop almost never turns twice
        value = int.from_bytes(os.urandom(16), "big")
        if value:
            return value


def new_span_id() -> int:
    while True:
        value = int.from_bytes(os.urandom(8), "big")
        if value:
            return value


def _is_hex(text: str, length: int) -> bool:
    # Lowercase only: the spec refuses uppercase hex in traceparent.
    return len(text) == length and _HEX.issuperset(text)
