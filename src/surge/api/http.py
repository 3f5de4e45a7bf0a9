"""What every protocol adapter shares: body limits, deadlines, timing headers."""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING

from starlette.requests import Request

from surge.api.exchange import Exchange
from surge.core.clock import monotonic
from surge.core.context import RequestContext, legs
from surge.core.errors import SurgeError, bad_input
from surge.serving.admission import client_deadline_source
from surge.serving.target import parse_priority

if TYPE_CHECKING:
    from surge.serving.deployment import Deployment
    from surge.serving.mode_driver import ModeDriver


def header(request: Request | Exchange, name: bytes) -> str | None:
    """A request header collected on arrival (lower-case name; `middleware.WANTED`)."""
    return request.scope["surge.headers"].get(name)


def byte_count(raw: str, what: str) -> int:
    """A header's byte count, or a 400 naming it. ASCII digits only: `str.isdigit` also
    passes '²' and other Unicode digits that `int` then refuses (a 500), and a count
    longer than 18 digits is past any body's size (and past what `int` parses cheaply)."""
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 18):
        raise bad_input(f"{what} must be a byte count (ASCII digits), got {raw[:40]!r}")
    return int(raw)


async def read_body(request: Request | Exchange, limit: int) -> bytes:
    """The whole body, refused with 413 as soon as it passes `limit` bytes."""
    declared = header(request, b"content-length")
    if declared is not None and byte_count(declared, "Content-Length") > limit:
        raise _too_large(int(declared), limit)
    chunks: list[bytes] = []
    size = 0
    receive = request.receive
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise SurgeError("client_disconnected", "the client went away mid-request", 400)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _too_large(size, limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    """Undo `Content-Encoding` (tritonclient can gzip or deflate requests), within the limit."""
    if not encoding or encoding == "identity":
        return body
    if encoding not in ("gzip", "deflate"):
        raise SurgeError(
            "unsupported_encoding", f"Content-Encoding {encoding!r} is not supported", 415
        )
    # gzip: header + zlib stream; deflate as HTTP means the zlib format.
    inflater = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
    try:
        out = inflater.decompress(body, limit + 1)  # stop early on a decompression bomb
    except zlib.error as exc:
        raise bad_input(f"body is not valid {encoding} data: {exc}") from None
    if len(out) > limit:
        raise _too_large(len(out), limit)
    return out


def _too_large(size: int, limit: int) -> SurgeError:
    return SurgeError(
        "body_too_large", f"request body of {size}+ bytes exceeds the {limit}-byte limit", 413
    )


def admit_by_mode(exchange: Exchange, modes: ModeDriver) -> None:
    """In a mode that sheds low priorities, refuse such a request before any work."""
    if modes.shed_below is not None:
        modes.admit(parse_priority(exchange.header(b"x-priority")))


def new_context(
    exchange: Exchange, endpoint: str, default_timeout_s: float, modes: ModeDriver
) -> RequestContext:
    """The request's context, with its deadline from `X-Request-Timeout-Ms`, else the
    endpoint's default (shortened by a burst mode's cap when one applies)."""
    scope = exchange.scope
    received = scope.get("surge.received") or monotonic()
    timeout_s = modes.timeout_s(default_timeout_s)
    deadline_from = "endpoint" if timeout_s >= default_timeout_s else "mode"
    raw = exchange.header(b"x-request-timeout-ms")
    if raw is not None:
        try:
            timeout_ms = float(raw)
        except ValueError:
            timeout_ms = -1.0
        if not 0 < timeout_ms < 3_600_000:
            raise bad_input(
                f"X-Request-Timeout-Ms must be milliseconds in (0, 3600000), got {raw!r}"
            )
        timeout_s = timeout_ms / 1000.0
        # A refusal of a deadline below the floor tells burst modes nothing about load.
        deadline_from = client_deadline_source(timeout_s, modes.min_client_deadline_s)
    scope["surge.endpoint"] = endpoint
    ctx = RequestContext(scope["surge.request_id"], endpoint, received + timeout_s, received)
    ctx.deadline_from = deadline_from
    # Kept on the scope so an error answered anywhere later still finishes the context
    # (a receipt for a 429 or 504 too).
    scope["surge.ctx"] = ctx
    exchange.state.observer.begin(ctx, scope["surge.headers"])
    return ctx


def finish_answer(exchange: Exchange, ctx: RequestContext, served_by: Deployment) -> dict[str, str]:
    """Close a 200 answer's books (metrics, receipt, trace, access log); its headers."""
    state = exchange.state
    now = monotonic()
    ctx.stamp("responded", now)
    served_by.metrics.total.observe(now - ctx.received)
    state.count_answer(ctx.endpoint, 200)
    observer = state.observer
    inline = observer.finish(ctx, 200, None, exchange.scope["surge.headers"])
    headers = response_headers(ctx, served_by, observer.stage_timing)
    if inline is not None:
        headers[observer.config.receipts.inline_header] = inline
    return headers


def response_headers(
    ctx: RequestContext, served_by: Deployment, stage_timing: bool = True
) -> dict[str, str]:
    """Server-Timing, the version that answered, `X-Surge-Route` (the final model@version,
    and whether a route escalated, degraded or flagged the request) and, after a bandit's
    choice, `X-Feedback-Token`."""
    route = served_by.spec.version.ref
    if ctx.decisions:  # only routes decide; a plain endpoint skips this
        if any(d.get("action") == "escalate" for d in ctx.decisions):
            route += "; escalated"
        if ctx.degraded:
            route += "; degraded"
        if ctx.needs_review:
            route += "; needs-review"
    headers = {"X-Model-Version": served_by.version, "X-Surge-Route": route}
    if ctx.feedback_token is not None:  # a bandit chose: what rewarding its choice needs
        headers["X-Feedback-Token"] = ctx.feedback_token
    if stage_timing:
        headers["Server-Timing"] = server_timing(ctx)
    return headers


def server_timing(ctx: RequestContext) -> str:
    """`Server-Timing` from the context's stamps: each leg's ms, then the total."""
    walked = legs(ctx.stamps, ctx.received)
    parts = [f"{name};dur={(end - start) * 1000:.2f}" for name, start, end in walked]
    end = walked[-1][2] if walked else ctx.received
    parts.append(f"total;dur={(end - ctx.received) * 1000:.2f}")
    return ", ".join(parts)
