"""Routes: public names whose requests a policy spreads over endpoints (or other routes).

The async drivers of the sans-IO policies in `routing/`: a cascade runs the cheapest
tier and escalates only the rows it is unsure of; a deadline ladder picks the best
target whose live estimate fits the time the caller has left; a fallback tries its
targets in order behind circuit breakers. Each records its decisions on the request
context, which the response (`X-Surge-Route`) and receipts show.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from surge.config_routes import CascadeConfig, FallbackConfig, LadderConfig, RulesConfig
from surge.core.clock import monotonic
from surge.core.context import RequestContext
from surge.core.errors import SurgeError
from surge.core.tensors import Tensors
from surge.routing.breaker import BreakerPolicy, CircuitBreaker
from surge.routing.cascade import CascadePolicy, CascadeTier, TierOutcome, judge, merge
from surge.routing.deadline_ladder import Rung, choose_rung
from surge.routing.rules import first_match, parse_rules
from surge.serving.admission import completion_estimate_s
from surge.serving.bandit_route import BanditRoute, Remember
from surge.serving.endpoint import Endpoint
from surge.serving.target import Hints, RouteBase, Served, Target, rows_of
from surge.store.registry import RegistryStore

log = logging.getLogger("surge.routes")

# Called with (route name, request context, row indices, inputs, the answer, confidences,
# who served it) for rows a cascade's last tier is unsure of; persists them for review.
ReviewSink = Callable[
    [str, RequestContext, np.ndarray, Tensors, Tensors, np.ndarray, str], Awaitable[None]
]


class CascadeRoute(RouteBase):
    """Tiers cheapest first; rows below a tier's confidence threshold go to the next tier."""

    def __init__(
        self, name: str, config: CascadeConfig, targets: list[Target], review: ReviewSink
    ) -> None:
        self.name = name
        self.targets = targets
        self.policy = CascadePolicy(
            tuple(CascadeTier(t.target, t.threshold, t.confidence) for t in config.tiers),
            review=config.review,
        )
        self.review = review
        # A burst mode may skip the costly tiers: how many may run, and which mode says so.
        self.allowed_tiers: int | None = None
        self.limiting_mode: str | None = None
        self.counts: Counter[tuple[str, str]] = Counter()  # (model@version, action) -> requests

    @property
    def first(self) -> Target:
        return self.targets[0]

    @property
    def accepting(self) -> bool:
        return self.targets[0].accepting

    def limit_tiers(self, allowed: int | None, mode: str) -> None:
        """A burst mode's switch: run at most `allowed` tiers (None: all of them)."""
        self.allowed_tiers = allowed
        self.limiting_mode = mode if allowed is not None else None

    async def infer(self, ctx: RequestContext, tensors: Tensors, hints: Hints) -> Served:
        policy = self.policy
        allowed = self.allowed_tiers
        if allowed is not None and allowed >= len(policy.tiers):
            allowed = None
        rows = rows_of(tensors)
        indices = np.arange(rows)  # which of the request's rows the current tier sees
        current = tensors
        answered: list[tuple[np.ndarray, Tensors]] = []
        for i in range(len(policy.tiers)):
            served = await self.targets[i].infer(ctx, current, hints)
            outcome = judge(policy, i, served.outputs, allowed)
            answered.append((indices, served.outputs))
            ref = served.deployment.spec.version.ref
            action = self._record(ctx, policy, outcome, len(indices), ref, self.limiting_mode)
            self.counts[ref, action] += 1
            if len(outcome.review_rows):
                review = outcome.review_rows
                ctx.needs_review = indices[review].tolist()
                await self.review(
                    self.name,
                    ctx,
                    indices[review],
                    {k: v[review] for k, v in current.items()},
                    {k: v[review] for k, v in served.outputs.items()},
                    outcome.confidence[review],
                    ref,
                )
            if not len(outcome.escalate_rows):
                return Served(merge(rows, answered), served.deployment)
            indices = indices[outcome.escalate_rows]
            current = {k: v[outcome.escalate_rows] for k, v in current.items()}
        raise AssertionError("the last tier never escalates")

    @staticmethod
    def _record(
        ctx: RequestContext,
        policy: CascadePolicy,
        outcome: TierOutcome,
        rows: int,
        ref: str,
        mode: str | None,
    ) -> str:
        tier = policy.tiers[outcome.tier]
        lowest = float(np.min(outcome.confidence)) if len(outcome.confidence) else 1.0
        numbers = {
            "tier": outcome.tier,
            "confidence": round(lowest, 4),
            "threshold": tier.threshold,
        }
        below = f"below {tier.threshold:g} {tier.confidence}"
        if len(outcome.escalate_rows):
            up = policy.tiers[outcome.tier + 1].target
            reason = f"{len(outcome.escalate_rows)} of {rows} row(s) {below}: escalated to {up}"
            ctx.decide("cascade", ref, reason, action="escalate", **numbers)
            return "escalate"
        if len(outcome.degraded_rows):
            up = policy.tiers[outcome.tier + 1].target
            reason = (
                f"{len(outcome.degraded_rows)} of {rows} row(s) {below} would escalate to {up}, "
                f"but burst mode {mode!r} runs only {outcome.tier + 1} tier(s): answered here, "
                "degraded"
            )
            ctx.degraded = True
            ctx.decide("cascade", ref, reason, action="degraded", mode=mode, **numbers)
            return "degraded"
        if len(outcome.review_rows):
            reason = (
                f"{len(outcome.review_rows)} of {rows} row(s) {below} at the last tier: "
                "answered, flagged needs_review and queued for review"
            )
            ctx.decide("cascade", ref, reason, action="review", **numbers)
            return "review"
        reason = f"lowest confidence {lowest:.3f} >= {tier.threshold:g}: accepted"
        ctx.decide("cascade", ref, reason, action="accept", **numbers)
        return "accept"


class LadderRoute(RouteBase):
    """Time-boxed inference: the best rung whose live estimate fits the remaining budget."""

    def __init__(self, name: str, config: LadderConfig, targets: list[Target]) -> None:
        self.name = name
        self.targets = {t.name: t for t in targets}
        self.rungs = [Rung(t.name) for t in targets]
        self.safety_margin = config.safety_margin
        self.counts: Counter[tuple[str, str]] = Counter()  # (target, "best" | "degraded")

    @property
    def first(self) -> Target:
        return self.targets[self.rungs[0].target]

    @property
    def accepting(self) -> bool:
        return all(t.accepting for t in self.targets.values())

    def estimate_s(self, target: Target, rows: int, now: float) -> float:
        """Queue wait + compute for `rows` more rows on the target at `now`, from the
        deployment's measured batch latency and the queue ahead: admission's own
        estimate, so a rung admission would take is never skipped (an idle one included)."""
        d = target.interface()
        return completion_estimate_s(rows, d.queue_state(), d.latency, d.admission, now)

    async def infer(self, ctx: RequestContext, tensors: Tensors, hints: Hints) -> Served:
        now = monotonic()
        rows = rows_of(tensors)
        estimates = {name: self.estimate_s(t, rows, now) for name, t in self.targets.items()}
        choice = choose_rung(self.rungs, estimates, ctx.remaining_s(now), self.safety_margin)
        ctx.decide(
            "ladder", choice.target, choice.reason, degraded=choice.degraded,
            estimate_ms=round(choice.estimate_s * 1000, 2),
            remaining_ms=round(choice.remaining_s * 1000, 2),
        )  # fmt: skip
        self.counts[choice.target, "degraded" if choice.degraded else "best"] += 1
        if choice.degraded:
            ctx.degraded = True
            if choice.estimate_s > choice.remaining_s * self.safety_margin:
                cached = self._cached_answer(ctx, tensors, hints)
                if cached is not None:
                    return cached
        return await self.targets[choice.target].infer(ctx, tensors, hints)

    def _cached_answer(self, ctx: RequestContext, tensors: Tensors, hints: Hints) -> Served | None:
        """When not even the cheapest rung fits: an answer a rung's cache holds for this
        input (the best rung's first), marked degraded, rather than a 504."""
        for rung in self.rungs:
            endpoint = self.targets[rung.target]
            cache = getattr(endpoint, "cache", None)
            if cache is None:
                continue
            deployment = endpoint.interface()
            outputs = cache.cached_answer(deployment, ctx, tensors, hints.parameters)
            if outputs is not None:
                self.counts[rung.target, "cached"] += 1
                ctx.decide("ladder", f"{rung.target} (cached answer)",
                           "no rung fits the time left: a cached answer instead",
                           degraded=True)  # fmt: skip
                return Served(outputs, deployment)
        return None


class FallbackRoute(RouteBase):
    """Targets in order; an error or a timeout falls through to the next. A breaker per
    target stops sending to one that keeps failing until a probe succeeds."""

    def __init__(self, name: str, config: FallbackConfig, targets: list[Target]) -> None:
        self.name = name
        self.targets = targets
        policy = BreakerPolicy(config.failure_threshold, config.window_s, config.open_s)
        self.breakers = {t.name: CircuitBreaker(policy, t.name) for t in targets}
        self.counts: Counter[tuple[str, str]] = Counter()  # (target, "served" | "failed" | ...)

    @property
    def first(self) -> Target:
        return self.targets[0]

    @property
    def accepting(self) -> bool:
        return any(t.accepting for t in self.targets)

    async def infer(self, ctx: RequestContext, tensors: Tensors, hints: Hints) -> Served:
        last_error: SurgeError | None = None
        for i, target in enumerate(self.targets):
            breaker = self.breakers[target.name]
            now = monotonic()
            if not breaker.allow(now):
                self.counts[target.name, "skipped_open"] += 1
                wait = breaker.retry_after_s(now)
                ctx.decide("fallback", target.name, f"breaker open for {wait:.1f} s more: skipped")
                continue
            try:
                served = await target.infer(ctx, tensors, hints)
            except SurgeError as error:
                if error.status < 500 and error.status != 429:
                    breaker.record_cancelled(monotonic())
                    raise  # the client's fault: the next target would refuse it too
                breaker.record_failure(monotonic())
                self.counts[target.name, "failed"] += 1
                last_error = error
                ctx.decide(
                    "fallback", target.name, f"{error.code}: falling back", status=error.status
                )
                if ctx.remaining_s(monotonic()) <= 0:
                    break
                continue
            except asyncio.CancelledError:
                breaker.record_cancelled(monotonic())
                raise
            breaker.record_success(monotonic())
            self.counts[target.name, "served"] += 1
            if i:
                ctx.degraded = True
            return served
        if last_error is not None:
            raise last_error
        wait = min(b.retry_after_s(monotonic()) for b in self.breakers.values())
        raise SurgeError(
            "all_targets_open",
            f"route {self.name!r}: every target's circuit breaker is open; retry in {wait:.0f} s",
            503,
            max(wait, 1.0),
        )


class RulesRoute(RouteBase):
    """The first rule whose conditions all hold names the target; else the default."""

    def __init__(self, name: str, config: RulesConfig, targets: list[Target]) -> None:
        self.name = name
        self.rules = parse_rules(config.rules)
        self.default = config.default
        self.targets = {t.name: t for t in targets}
        self.counts: Counter[tuple[str, str]] = Counter()  # (target, rule name | "default")

    @property
    def first(self) -> Target:
        return self.targets[self.default]

    @property
    def accepting(self) -> bool:
        return all(t.accepting for t in self.targets.values())

    async def infer(self, ctx: RequestContext, tensors: Tensors, hints: Hints) -> Served:
        match = first_match(self.rules, hints.facts(rows_of(tensors)))
        if match is None:
            target, rule, reason = self.default, "default", "no rule matched: the default"
        else:
            target, rule, reason = match.target, match.rule, match.reason
        self.counts[target, rule] += 1
        ctx.decide("rules", target, reason, rule=rule)
        return await self.targets[target].infer(ctx, tensors, hints)


Route = CascadeRoute | LadderRoute | FallbackRoute | BanditRoute | RulesRoute


def build_routes(
    configs: dict[str, Any],
    endpoints: dict[str, Endpoint],
    review: ReviewSink,
    store: RegistryStore,
    remember: Remember,
) -> dict[str, Route]:
    """Every configured route, built after the routes it targets (the config has
    already refused unknown targets and cycles). `remember` records what a bandit
    answered, for feedback through any process."""
    routes: dict[str, Route] = {}
    pending = dict(configs)
    while pending:
        for name, config in list(pending.items()):
            names = config.targets()
            if any(t in pending for t in names):
                continue  # a target route is not built yet
            targets = [endpoints[t] if t in endpoints else routes[t] for t in names]
            if config.cascade is not None:
                routes[name] = CascadeRoute(name, config.cascade, targets, review)
            elif config.ladder is not None:
                routes[name] = LadderRoute(name, config.ladder, targets)
            elif config.bandit is not None:
                routes[name] = BanditRoute(name, config.bandit, targets, store, remember)
            elif config.rules is not None:
                routes[name] = RulesRoute(name, config.rules, targets)
            else:
                routes[name] = FallbackRoute(name, config.fallback, targets)
            del pending[name]
    return routes
