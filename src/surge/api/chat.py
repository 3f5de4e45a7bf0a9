"""`POST /v1/chat/completions`: OpenAI-compatible chat, streamed (`stream: true`, as
server-sent events) or whole.

The request goes through the same gates as every inference call (key and scope, burst
mode, rate limits with its tokens, budget) before a chat target opens an answer. The
HTTP status is decided only once the first token is in, so a backend that fails before
it is retried elsewhere or answered with a real 4xx/5xx; after it, the answer is
relayed piece by piece as it arrives (nothing is buffered), and:
- the request's deadline ends the stream with a last chunk whose finish_reason is
  "deadline" (a whole answer: the text so far, finish_reason "deadline");
- a backend failing mid-answer ends it with finish_reason "error" and an error event;
- a client that disconnects cancels the answer, which closes the upstream request
  (`inference_routes.py` watches for the disconnect).
The receipt is written when the answer ends: tokens, cost, time to first token and time
per output token (Server-Timing cannot follow a stream).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from typing import Any

from starlette.routing import Route

from surge.api.exchange import Answer, Exchange, via_starlette
from surge.api.guard import admit_quota, authorize
from surge.api.http import admit_by_mode, new_context, read_body
from surge.core.clock import monotonic
from surge.core.context import RequestContext
from surge.core.errors import SurgeError
from surge.llm.answer import ChatAnswer
from surge.llm.asked import Asked
from surge.llm.chat_cache import CACHE_BACKEND, replayed
from surge.llm.chat_request import (
    ChatRequest,
    count_tokens_estimate,
    parse_chat_request,
    prompt_text,
)
from surge.llm.gateway import ChatGateway
from surge.llm.openai_chunks import DONE, ChunkWriter, completion, completion_id
from surge.llm.stream import BackendError, ChatCall, Finish
from surge.serving.target import Hints

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


async def chat_completions(exchange: Exchange) -> Answer:
    state = exchange.state
    gateway: ChatGateway | None = state.chat
    body = await read_body(exchange, state.config.server.max_body_bytes)
    request = parse_chat_request(body)
    if gateway is None:
        raise SurgeError("model_not_found", f"unknown chat model {request.model!r}", 404)
    target = gateway.target(request.model)
    authorize(exchange, target.name)
    modes = state.modes
    assert modes is not None  # started by the lifespan before any request
    admit_by_mode(exchange, modes)
    ctx = new_context(exchange, target.name, target.timeout_s, modes)
    call = request.call.with_changes(max_tokens=target.resolve_max_tokens(request.max_tokens_asked))
    text = prompt_text(call)
    counted = gateway.count_prompt_tokens(target, text)
    prompt_tokens = counted if counted is not None else count_tokens_estimate(request.prompt_chars)
    ctx.stamp("validated", monotonic())
    await admit_quota(exchange, 1, prompt_tokens + call.max_tokens)
    hints = Hints(
        exchange.scope["headers"],
        {"user": call.user} if call.user else None,
        request.body_bytes,
        decided=exchange.scope["surge.headers"],
    )
    asked = Asked(hints, request.prompt_chars, prompt_tokens, text if _reviewed(target) else "")
    gateway.take_stream()
    try:
        ctx.stamp("routed", monotonic())
        answer = await _open(gateway, target, ctx, call, asked)
    except BaseException:
        gateway.release_stream()
        raise
    headers = _headers(exchange, ctx, answer)
    if request.stream:
        relay = _relay(exchange, ctx, answer, request)
        return Answer(b"", 200, {**headers, **SSE_HEADERS}, "text/event-stream", stream=relay)
    try:
        return await _whole(exchange, ctx, answer, request, headers)
    finally:
        gateway.release_stream()


async def _open(
    gateway: ChatGateway, target: Any, ctx: RequestContext, call: ChatCall, asked: Asked
) -> ChatAnswer:
    """The answer: reused from the name's cache when the same request was answered
    before (deterministically), else opened on the target (and kept when it completes)."""
    cache = gateway.caches.get(target.name)
    key = cache.key(call, ctx.tenant) if cache is not None else None
    if cache is None or key is None:
        return await target.open(ctx, call, asked)
    cached = await cache.get(key)
    cosine, vector = 1.0, None
    if cached is None and cache.semantic is not None:
        cached, cosine, vector = await cache.similar(prompt_text(call), ctx.tenant)
    if cached is not None:
        usage = cached.usage
        first = target.models[0]  # what the answer would have cost again, at its prices
        saved = first.price(usage.prompt_tokens, usage.completion_tokens)
        ctx.cache_hit = True
        ctx.cache = {
            "result": "hit", "rows": 1, "hit_rows": 1, "coalesced": False, "stale": False,
            "saved_cost": saved, "saved_tokens": usage.total_tokens,
        }  # fmt: skip
        if cosine < 1.0:  # a similar prompt's answer, not this one's
            ctx.cache["result"] = "similar"
            ctx.cache["cosine"] = round(cosine, 4)
            ctx.decide("cache", CACHE_BACKEND, f"a similar prompt was answered (cosine "
                       f"{cosine:.3f})", cosine=round(cosine, 4))  # fmt: skip
        else:
            ctx.decide("cache", CACHE_BACKEND, "the same request was answered before")
        return replayed(target.name, cached, ctx.deadline)
    answer = await target.open(ctx, call, asked)
    ctx.cache = {"result": "miss", "rows": 1, "hit_rows": 0, "coalesced": False, "stale": False}
    cache.keep(key, answer, vector, ctx.tenant)
    return answer


def _reviewed(target: Any) -> bool:
    """Whether the target may queue the answer for review (a cascade): then it keeps the
    prompt's text for the review item."""
    return hasattr(target, "review")


def _headers(exchange: Exchange, ctx: RequestContext, answer: ChatAnswer) -> dict[str, str]:
    route = f"{answer.model}@{answer.backend}"
    if any(d.get("action") == "escalate" for d in ctx.decisions):
        route += "; escalated"
    if ctx.degraded:
        route += "; degraded"
    headers = {"X-Surge-Route": route, "X-Model-Version": answer.backend}
    if ctx.feedback_token is not None:
        headers["X-Feedback-Token"] = ctx.feedback_token
    limits = exchange.scope.get("surge.ratelimit")
    if limits is not None:
        headers.update(limits)
    return headers


async def _whole(
    exchange: Exchange,
    ctx: RequestContext,
    answer: ChatAnswer,
    request: ChatRequest,
    headers: dict[str, str],
) -> Answer:
    """`stream: false`: the answer read to its end (or its deadline), then sent whole."""
    answer.text_parts = []
    entries: list[dict[str, Any]] | None = [] if request.call.logprobs else None
    reason = "stop"
    try:
        async with asyncio.timeout(_seconds_left(ctx)):
            async for item in answer.items():
                if isinstance(item, Finish):
                    reason = item.reason
                elif entries is not None and item.logprob_entries:
                    entries.extend(item.logprob_entries)
    except TimeoutError:
        reason = "deadline"
    except BackendError as exc:
        if exc.code != "deadline_exceeded":
            _finish(exchange, ctx, exc.status, exc.code)
            raise
        reason = "deadline"
    assert answer.end is not None
    body = completion(
        completion_id(), request.model, "".join(answer.text_parts), reason,
        answer.end.usage, entries,
    )  # fmt: skip
    inline = _finish(exchange, ctx, 200, None if reason != "deadline" else "deadline_mid_answer")
    if inline is not None:  # the receipt asked inline: only a whole answer can carry it
        headers[exchange.state.observer.config.receipts.inline_header] = inline
    return Answer(body, 200, headers)


async def _relay(
    exchange: Exchange, ctx: RequestContext, answer: ChatAnswer, request: ChatRequest
) -> AsyncIterator[bytes]:
    """The SSE events of a streamed answer, as its pieces arrive."""
    writer = ChunkWriter(completion_id(), request.model, request.call.logprobs)
    status, error = 200, None
    try:
        yield writer.role()
        reason = "stop"
        try:
            async with asyncio.timeout(_seconds_left(ctx)):
                async for item in answer.items():
                    if isinstance(item, Finish):
                        reason = item.reason
                    else:
                        yield writer.piece(item)
        except TimeoutError:
            reason = "deadline"
        except BackendError as exc:
            if exc.code == "deadline_exceeded":
                reason = "deadline"
            else:
                error = exc.code
                yield writer.finish("error")
                yield writer.error(exc.code, exc.message)
                return
        if reason == "deadline":
            error = "deadline_mid_answer"
        yield writer.finish(reason)
        if request.include_usage and answer.end is not None:
            yield writer.usage(answer.end.usage)
        yield DONE
    except BaseException:
        status, error = 499, "client_disconnected"  # nginx's code for a client that left
        raise
    finally:
        await answer.aclose()  # a no-op when the answer ended by itself
        exchange.state.chat.release_stream()
        _finish(exchange, ctx, status, error)


def _seconds_left(ctx: RequestContext) -> float:
    left = ctx.remaining_s(monotonic())
    return max(0.0, left) if math.isfinite(left) else 3600.0


def _finish(exchange: Exchange, ctx: RequestContext, status: int, error: str | None) -> str | None:
    """Close the request's books; the receipt as JSON when the client asked for it inline."""
    state = exchange.state
    ctx.stamp("responded", monotonic())
    state.count_answer(ctx.endpoint, status)
    return state.observer.finish(ctx, status, error, exchange.scope["surge.headers"])


# POSTs are answered by `inference_routes.InferenceRoutes` in front of Starlette.
INFER_ROUTES = [Route("/v1/chat/completions", via_starlette(chat_completions), methods=["POST"])]
