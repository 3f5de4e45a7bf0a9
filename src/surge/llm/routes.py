"""The routing policies for language models: cascade, time-boxed, rules and bandit.

Each is a chat target like a `ChatModel`: `open(ctx, call, asked)` returns an answer
that has started. The decisions themselves are the sans-IO policies the rest of surge
uses (rules.py, bandit.py, speed.py); these classes wire them to models.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

from surge.config_llm import ChatCascadeConfig, ChatRulesConfig, ChatTimeBoxConfig
from surge.core.clock import monotonic
from surge.core.context import RequestContext
from surge.core.errors import SurgeError, bad_input
from surge.llm.answer import AnswerEnd, ChatAnswer
from surge.llm.asked import Asked
from surge.llm.model import ChatModel
from surge.llm.speed import choose_in_time
from surge.llm.stream import ChatCall, Finish, Piece
from surge.routing.rules import first_match, parse_rules
from surge.serving.bandit_route import BanditRoute

log = logging.getLogger("surge.llm")


class ChatTarget(Protocol):
    name: str

    @property
    def timeout_s(self) -> float: ...

    @property
    def models(self) -> list[ChatModel]: ...

    def resolve_max_tokens(self, asked: int | None) -> int: ...

    async def open(self, ctx: RequestContext, call: ChatCall, asked: Asked) -> ChatAnswer: ...


class ChatRouteBase:
    """A route's limits are the tightest of its models', so any choice can honour them."""

    name: str
    targets: dict[str, ChatModel]

    @property
    def models(self) -> list[ChatModel]:
        return list(self.targets.values())

    @property
    def accepting(self) -> bool:
        return True

    @property
    def timeout_s(self) -> float:
        return max(m.timeout_s for m in self.models)

    def resolve_max_tokens(self, asked: int | None) -> int:
        limit = min(m.config.max_tokens_limit for m in self.models)
        if asked is None:
            return min(min(m.config.default_max_tokens for m in self.models), limit)
        if asked > limit:
            raise bad_input(f"'max_tokens' is {asked}; route {self.name!r} allows at most {limit}")
        return asked


# -- cascade ------------------------------------------------------------------------------

ReviewHook = Callable[[str, RequestContext, str, str, float, str], None]


class ChatCascade(ChatRouteBase):
    """The cheapest model answers first, in full, unseen by the client; its answer goes
    out when its mean token log-probability reaches `min_mean_logprob`, else the next
    tier answers (the receipt says why). The last tier streams straight through, and
    its doubtful answers (below `review_below`) go to the human-review queue."""

    def __init__(
        self, name: str, config: ChatCascadeConfig, tiers: list[ChatModel], review: ReviewHook
    ) -> None:
        self.name = name
        self.config = config
        self.targets = {t.name: t for t in tiers}
        self.tiers = tiers
        self.review = review
        self.review_below = (
            config.review_below if config.review_below is not None else config.min_mean_logprob
        )

    async def open(self, ctx: RequestContext, call: ChatCall, asked: Asked) -> ChatAnswer:
        judged = call.with_changes(logprobs=True)  # confidence needs them, asked or not
        threshold = self.config.min_mean_logprob
        for tier, following in zip(self.tiers, self.tiers[1:], strict=False):
            try:
                answer = await tier.open(ctx, judged, asked)
                items = [item async for item in answer.items()]
            except SurgeError as exc:
                if exc.status < 500 and exc.status != 429:
                    raise  # the request's fault: the next tier would refuse it too
                ctx.decide("cascade", following.name, f"{tier.name} failed ({exc.code})",
                           action="escalate")  # fmt: skip
                continue
            mean = answer.mean_logprob
            if mean is not None and mean >= threshold:
                why = f"mean token logprob {mean:.3f} >= {threshold:g}"
                ctx.decide("cascade", tier.name, why, mean_logprob=mean)
                return _replay(answer, items)
            seen = (
                "no logprobs" if mean is None else f"mean token logprob {mean:.3f} < {threshold:g}"
            )
            ctx.decide("cascade", following.name, f"{tier.name}: {seen}", action="escalate",
                       mean_logprob=mean)  # fmt: skip
        last = self.tiers[-1]
        answer = await last.open(ctx, judged, asked)
        answer.text_parts = []
        closed_by_model = answer.on_close

        def on_close(done: ChatAnswer, end: AnswerEnd) -> None:
            closed_by_model(done, end)
            mean = done.mean_logprob
            if end.reason in ("stop", "length") and mean is not None and mean < self.review_below:
                ctx.needs_review.append(0)
                text = "".join(done.text_parts or ())
                self.review(self.name, ctx, asked.prompt, text, mean, done.backend)

        answer.on_close = on_close
        return answer


def _replay(answer: ChatAnswer, items: list[Piece | Finish]) -> ChatAnswer:
    """A finished tier's answer, to be relayed as if it were arriving now (its books
    were kept when it was read)."""

    async def rest() -> AsyncIterator[Piece | Finish]:
        for item in items[1:]:
            yield item

    return ChatAnswer(
        answer.model, answer.backend, items[0], rest(), answer.sent_at, answer.first_at,
        answer.prompt_chars, on_close=lambda _a, _e: None, deadline=answer.deadline,
    )  # fmt: skip


# -- time-boxed ---------------------------------------------------------------------------


class ChatTimeBox(ChatRouteBase):
    """The best model whose measured speed gives the whole answer before the deadline;
    else the one that gives the most of it, with max_tokens capped (degraded)."""

    def __init__(
        self,
        name: str,
        config: ChatTimeBoxConfig,
        models: list[ChatModel],
        clock: Callable[[], float] = monotonic,
    ) -> None:
        self.name = name
        self.config = config
        self.targets = {m.name: m for m in models}
        self.clock = clock

    async def open(self, ctx: RequestContext, call: ChatCall, asked: Asked) -> ChatAnswer:
        remaining = ctx.remaining_s(self.clock())
        speeds = {n: m.speed for n, m in self.targets.items()}
        choice = choose_in_time(
            list(self.targets), speeds, remaining, call.max_tokens,
            self.config.safety_margin, self.config.min_max_tokens,
        )  # fmt: skip
        if choice is None:
            ctx.decide("time_boxed", "none", f"no model gives {self.config.min_max_tokens} "
                       f"tokens in {remaining * 1000:.0f} ms")  # fmt: skip
            raise SurgeError(
                "deadline_unreachable",
                f"no model of {self.name!r} can answer within the {remaining * 1000:.0f} ms left",
                504,
            )
        ctx.decide("time_boxed", choice.model, choice.reason, max_tokens=choice.max_tokens,
                   estimate_ms=round(choice.estimate_s * 1000, 1))  # fmt: skip
        ctx.degraded = ctx.degraded or choice.degraded
        if choice.max_tokens != call.max_tokens:
            call = call.with_changes(max_tokens=choice.max_tokens)
        return await self.targets[choice.model].open(ctx, call, asked)


# -- rules --------------------------------------------------------------------------------


class ChatRules(ChatRouteBase):
    """The first rule whose conditions hold picks the model: tenant tier, prompt length
    (prompt_chars, prompt_tokens), a header, the OpenAI `user` (param:user)."""

    def __init__(self, name: str, config: ChatRulesConfig, models: dict[str, ChatModel]) -> None:
        self.name = name
        self.rules = parse_rules(config.rules)
        self.default = config.default
        self.targets = models

    async def open(self, ctx: RequestContext, call: ChatCall, asked: Asked) -> ChatAnswer:
        facts = dataclasses.replace(
            asked.hints.facts(1), prompt_chars=asked.prompt_chars, prompt_tokens=asked.prompt_tokens
        )
        match = first_match(self.rules, facts)
        if match is None:
            chosen, why = self.default, "no rule matched: default"
        else:
            chosen, why = match.target, match.reason
        ctx.decide("rules", chosen, why)
        return await self.targets[chosen].open(ctx, call, asked)


# -- bandit -------------------------------------------------------------------------------


class ChatBandit(BanditRoute):
    """A bandit route over chat models: the same learning, sharing and feedback
    (`POST /v1/feedback` with the answer's X-Feedback-Token) as for other models."""

    @property
    def models(self) -> list[ChatModel]:
        return list(self.targets.values())  # type: ignore[arg-type]

    @property
    def timeout_s(self) -> float:
        return max(m.timeout_s for m in self.models)

    def resolve_max_tokens(self, asked: int | None) -> int:
        return ChatRouteBase.resolve_max_tokens(self, asked)  # type: ignore[arg-type]

    async def infer(self, ctx: Any, tensors: Any, hints: Any) -> Any:
        raise SurgeError("model_not_found", f"{self.name!r} is a chat route", 404)

    async def open(self, ctx: RequestContext, call: ChatCall, asked: Asked) -> ChatAnswer:
        model: ChatModel = self.targets[self.choose_arm(ctx, asked.hints)]  # type: ignore[assignment]
        return await model.open(ctx, call, asked)
