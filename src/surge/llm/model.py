"""A public chat model: its backends in fallback order, each behind a circuit breaker,
its bound on answers in progress, its prices and its measured speed.

Per request the backends are tried in order. One is skipped while its breaker is open
or while it asked us to wait (a 429's or 503's Retry-After); one that refuses, fails or
times out before its first token hands the request to the next, and the receipt says
why. Only when every backend has failed or is skipped does the client get an error:
429 when all of them were busy (with the soonest Retry-After), 503 when all were
skipped, else the last failure's 502 or 504. A missed deadline is never retried.

Once the first token is in, the answer belongs to that backend: it is relayed as it
comes, and a failure after it ends the stream (see `api/chat.py`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from surge.config_llm import ChatModelConfig
from surge.core.clock import monotonic
from surge.core.errors import SurgeError, bad_input
from surge.llm.answer import AnswerEnd, ChatAnswer
from surge.llm.speed import ModelSpeed
from surge.llm.stream import BackendError, ChatBackend, ChatCall, Finish, Piece
from surge.routing.breaker import OPEN, CircuitBreaker

if TYPE_CHECKING:
    from surge.core.context import RequestContext
    from surge.llm.asked import Asked
    from surge.llm.metrics import ChatMetrics

DEADLINE_CODES = frozenset({"deadline_exceeded"})


@dataclass(eq=False)
class BackendSlot:
    """One backend of a model, with what the model knows of its health."""

    backend: ChatBackend
    breaker: CircuitBreaker
    cooldown_until: float = 0.0  # a 429/503 Retry-After: skipped until then

    @property
    def name(self) -> str:
        return self.backend.name


class ChatModel:
    def __init__(
        self,
        name: str,
        config: ChatModelConfig,
        slots: list[BackendSlot],
        metrics: ChatMetrics,
        clock: Callable[[], float] = monotonic,
    ) -> None:
        self.name = name
        self.config = config
        self.slots = slots
        self.metrics = metrics
        self.clock = clock
        self.speed = ModelSpeed()
        self.open_streams = 0

    @property
    def accepting(self) -> bool:
        return True

    @property
    def timeout_s(self) -> float:
        return self.config.timeout_ms / 1000

    @property
    def models(self) -> list[ChatModel]:
        return [self]

    def resolve_max_tokens(self, asked: int | None) -> int:
        limit = self.config.max_tokens_limit
        if asked is None:
            return min(self.config.default_max_tokens, limit)
        if asked > limit:
            raise bad_input(f"'max_tokens' is {asked}; model {self.name!r} allows at most {limit}")
        return asked

    def price(self, prompt_tokens: int, completion_tokens: int) -> float:
        c = self.config
        return (
            prompt_tokens * c.price_per_1k_prompt_tokens
            + completion_tokens * c.price_per_1k_completion_tokens
        ) / 1000

    def _take_stream(self) -> None:
        if self.open_streams >= self.config.max_concurrent_streams:
            self.metrics.refused(self.name, "too_many_streams")
            raise SurgeError(
                "too_many_streams",
                f"model {self.name!r} has {self.open_streams} answers in progress, its "
                "limit (max_concurrent_streams); retry shortly",
                429,
                retry_after_s=max(1.0, min(30.0, self.speed.estimate_s(64))),
            )
        self.open_streams += 1

    async def open(self, ctx: RequestContext, call: ChatCall, asked: Asked) -> ChatAnswer:
        """The answer from the first backend that starts one (see the module docstring)."""
        self._take_stream()
        try:
            return await self._first_that_answers(ctx, call, asked.prompt_chars)
        except BaseException:
            self.open_streams -= 1
            raise

    async def _first_that_answers(
        self, ctx: RequestContext, call: ChatCall, prompt_chars: int
    ) -> ChatAnswer:
        errors: list[tuple[BackendSlot, BackendError]] = []
        skipped: list[tuple[BackendSlot, float]] = []  # (slot, seconds until it may be tried)
        for slot in self.slots:
            now = self.clock()
            if now < slot.cooldown_until:
                skipped.append((slot, slot.cooldown_until - now))
                continue
            if not slot.breaker.allow(now):
                skipped.append((slot, slot.breaker.retry_after_s(now)))
                continue
            if errors or skipped:
                ctx.decide("fallback", slot.name, _why_next(errors, skipped), action="fallback")
                ctx.degraded = True
            if ctx.remaining_s(now) <= 0:
                break
            stream = slot.backend.stream(call, ctx.deadline)
            ctx.stamp("compute_start", now)
            try:
                first = await anext(stream)
            except StopAsyncIteration:
                first = Finish("stop")
            except BackendError as exc:
                self._failed(slot, exc)
                if exc.code in DEADLINE_CODES:
                    raise
                errors.append((slot, exc))
                continue
            except BaseException:  # cancelled (the client left) while waiting: no verdict
                slot.breaker.record_cancelled(self.clock())
                await stream.aclose()
                raise
            return self._started(ctx, slot, stream, first, now, prompt_chars)
        raise self._all_failed(errors, skipped)

    def _started(
        self,
        ctx: RequestContext,
        slot: BackendSlot,
        stream: Any,
        first: Piece | Finish,
        sent_at: float,
        prompt_chars: int,
    ) -> ChatAnswer:
        now = self.clock()
        slot.breaker.record_success(now)
        self.metrics.first_token(self.name, now - sent_at)

        def on_close(answer: ChatAnswer, end: AnswerEnd) -> None:
            self.open_streams -= 1
            self._record(ctx, slot, answer, end)

        return ChatAnswer(self.name, slot.name, first, stream, sent_at, now, prompt_chars,
                          on_close, deadline=ctx.deadline)  # fmt: skip

    def _failed(self, slot: BackendSlot, exc: BackendError) -> None:
        now = self.clock()
        self.metrics.backend_failed(self.name, slot.name, exc.code)
        if exc.code in DEADLINE_CODES:
            slot.breaker.record_cancelled(now)  # the request's budget ran out, not the backend
            return
        if exc.status in (429, 503) and exc.retry_after_s:
            slot.cooldown_until = max(slot.cooldown_until, now + exc.retry_after_s)
        if exc.status == 429:
            slot.breaker.record_cancelled(now)  # busy is not broken: the cooldown covers it
        else:
            slot.breaker.record_failure(now)

    def _all_failed(
        self,
        errors: list[tuple[BackendSlot, BackendError]],
        skipped: list[tuple[BackendSlot, float]],
    ) -> SurgeError:
        if errors and all(e.status == 429 for _, e in errors):
            waits = [e.retry_after_s or 1.0 for _, e in errors] + [w for _, w in skipped]
            return SurgeError(
                "upstream_busy",
                f"every backend of {self.name!r} is busy: "
                + "; ".join(f"{s.name}: {e.message}" for s, e in errors),
                429,
                retry_after_s=min(waits),
            )
        if errors:
            last = errors[-1][1]
            tried = "; ".join(f"{s.name}: {e.message}" for s, e in errors)
            status = last.status if last.status >= 500 else 502
            return SurgeError(
                last.code, f"no backend of {self.name!r} answered: {tried}", status,
                last.retry_after_s,
            )  # fmt: skip
        wait = min((w for _, w in skipped), default=1.0)
        return SurgeError(
            "no_backend_available",
            f"every backend of {self.name!r} is resting (breaker open or asked to wait): "
            + ", ".join(s.name for s, _ in skipped),
            503,
            retry_after_s=max(wait, 0.001),
        )

    def _record(
        self, ctx: RequestContext, slot: BackendSlot, answer: ChatAnswer, end: AnswerEnd
    ) -> None:
        now = self.clock()
        usage = end.usage
        if end.error is not None:
            self._failed(slot, end.error)
        elif end.reason != "cancelled":
            self.speed.observe(end.ttft_s, usage.completion_tokens, end.decode_s)
        self.metrics.answer_ended(self.name, slot.name, answer, end)
        ctx.stamp("compute_end", now)
        ctx.runs.append(
            {
                "model": slot.name,
                "endpoint": self.name,
                "version": slot.name,
                "role": ctx.role,
                "rows": 1,
                "batch_rows": 1,
                "compute_s": now - answer.sent_at,
                "queue_s": 0.0,
                "cpu_s": 0.0,
                "energy_j": 0.0,
                "energy_source": None,
                "cost": self.price(usage.prompt_tokens, usage.completion_tokens),
                "currency": self.config.currency,
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
                "usage_source": usage.source,
                "ttft_ms": round(end.ttft_s * 1000, 3),
                "tpot_ms": _tpot_ms(end.decode_s, usage.completion_tokens),
                "finish_reason": end.reason,
            }
        )

    def breaker_states(self) -> dict[str, str]:
        return {s.name: s.breaker.state for s in self.slots}

    def any_open(self) -> bool:
        return any(s.breaker.state == OPEN for s in self.slots)


def _tpot_ms(decode_s: float, tokens: int) -> float | None:
    """Time per output token after the first (None for answers of one token or none)."""
    return round(decode_s / (tokens - 1) * 1000, 3) if tokens > 1 else None


def _why_next(
    errors: list[tuple[BackendSlot, BackendError]], skipped: list[tuple[BackendSlot, float]]
) -> str:
    parts = [f"{s.name} failed ({e.code}, {e.status})" for s, e in errors[-1:]]
    parts += [f"{s.name} resting for {math.ceil(w)} s" for s, w in skipped[-1:]]
    return "; ".join(parts)
