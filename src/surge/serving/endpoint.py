"""An endpoint: the public name a client calls, and the deployments (versions) behind it.

This is the async driver of an endpoint's route: it picks the deployment for each
request (stable; a weighted canary; a sticky A/B arm; a pinned version), retries a
request that failed on the canary once on stable, and mirrors a copy of live traffic
to a shadow candidate. Which version gets what share is decided by the rollout
operations (`serving/rollouts.py`); the split arithmetic is in `routing/split.py`.

With a single version the request path is one attribute check and a call.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from surge.core.clock import monotonic
from surge.core.context import RequestContext
from surge.core.errors import SurgeError
from surge.core.tensors import Tensors
from surge.routing.agreement import agreement
from surge.routing.split import WeightedSplit, sticky_arm
from surge.serving.deployment import Deployment
from surge.serving.target import Hints, Served, rows_of
from surge.serving.version_stats import VersionStats

if TYPE_CHECKING:
    from surge.serving.response_cache import EndpointCache

log = logging.getLogger("surge.endpoint")

MODES = ("single", "canary", "ab", "shadow")


class Endpoint:
    def __init__(
        self,
        name: str,
        stable: Deployment,
        *,
        retry_on_stable: bool = True,
        ab_key: str = "header:x-user-id",
        clock: Callable[[], float] = monotonic,
    ) -> None:
        self.name = name
        self.stable = stable
        self.candidate: Deployment | None = None
        self.mode = "single"
        self.percent = 0.0  # candidate's live share
        self.retry_on_stable = retry_on_stable
        self.ab_key = ab_key  # where a sticky A/B split reads the user key
        self.shadow_enabled = True  # burst modes turn shadow mirrors off
        self.cache: EndpointCache | None = None  # set by the server when configured
        self.clock = clock
        self.stats: dict[str, VersionStats] = {stable.version: VersionStats()}
        self._split: WeightedSplit | None = None
        self._shadow_tasks: set[asyncio.Task[None]] = set()

    # -- the route -----------------------------------------------------------------

    @property
    def deployments(self) -> list[Deployment]:
        return [self.stable] if self.candidate is None else [self.stable, self.candidate]

    @property
    def accepting(self) -> bool:
        return self.stable.accepting

    @property
    def versions(self) -> list[str]:
        return [d.version for d in self.deployments]

    def interface(self, version: str | None = None) -> Deployment:
        return self.pinned(version) if version else self.stable

    def refuse_early(self, ctx: RequestContext, version: str | None = None) -> None:
        """Refuse now, before the body is read and decoded, a request that even one row
        could not get through admission with (a full queue, a deadline no batch can
        meet): under overload half the requests end here, and decoding them took CPU
        the model needed. Only when one version serves: a split may send it elsewhere."""
        if version is None and self.candidate is None:
            self.stable.admit_or_refuse(ctx, 1, self.clock())

    def set_route(self, mode: str, candidate: Deployment | None, percent: float) -> None:
        """Switch the route in one step (the event loop runs nothing in between)."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}")
        if (mode == "single") != (candidate is None):
            raise ValueError("a candidate is needed for every mode but single")
        self.mode, self.candidate, self.percent = mode, candidate, percent
        self._split = None
        if candidate is not None:
            self.stats.setdefault(candidate.version, VersionStats())
            if mode == "canary":
                self._split = WeightedSplit(
                    {self.stable.version: 100.0 - percent, candidate.version: percent}
                )

    def switch(
        self, stable: Deployment, mode: str, candidate: Deployment | None, percent: float
    ) -> None:
        """Serve `stable` (and `candidate` in `mode` at `percent`) from the next request
        on: one step, so no request sees half of a route (the event loop runs nothing
        in between)."""
        self.stats.setdefault(stable.version, VersionStats())
        self.stable = stable
        self.set_route(mode, candidate, percent)

    def swap_stable(self, new_stable: Deployment) -> Deployment:
        """Make `new_stable` the only version; returns the old stable (to drain)."""
        old = self.stable
        self.stable = new_stable
        self.stats.setdefault(new_stable.version, VersionStats())
        self.set_route("single", None, 0.0)
        return old

    def weights(self) -> dict[str, float]:
        if self.candidate is None or self.mode == "shadow":
            return {self.stable.version: 100.0}
        return {self.stable.version: 100.0 - self.percent, self.candidate.version: self.percent}

    def pinned(self, version: str) -> Deployment:
        for deployment in self.deployments:
            if deployment.version == version:
                return deployment
        serving = ", ".join(repr(d.version) for d in self.deployments)
        raise SurgeError(
            "version_not_found",
            f"model {self.name!r} has no version {version!r} serving (serving: {serving})",
            404,
        )

    def _why(self, chosen: Deployment, user_key: str | None) -> str:
        """The reason a receipt gives for the version a split picked."""
        share = self.weights()[chosen.version]
        if self.mode == "ab":
            if user_key is None:
                return "A/B split: no user key, so the stable arm"
            return f"A/B split: user key sticks to this arm ({share:g}% of users)"
        return f"canary split: {share:g}% of requests go to this version"

    def _choose(self, user_key: str | None) -> Deployment:
        candidate = self.candidate
        assert candidate is not None
        if self.mode == "ab":
            if user_key is None:  # no key: the stable arm, so a user without one is consistent
                return self.stable
            arm = sticky_arm(user_key, self.weights())
            return candidate if arm == candidate.version else self.stable
        if self.mode == "canary" and self._split is not None:
            return candidate if self._split.pick() == candidate.version else self.stable
        return self.stable

    # -- requests --------------------------------------------------------------------

    async def infer(self, ctx: RequestContext, tensors: Tensors, hints: Hints) -> Served:
        rows = rows_of(tensors)
        if hints.version is not None:
            pinned = self.pinned(hints.version)
            return Served(await self._run(pinned, ctx, tensors, rows, hints), pinned)
        if self.candidate is None:
            return Served(await self._run(self.stable, ctx, tensors, rows, hints), self.stable)
        user_key = hints.user_key(self.ab_key) if self.mode == "ab" else None
        target = self._choose(user_key)
        if self.mode != "shadow":
            ctx.decide(self.mode, target.spec.version.ref, self._why(target, user_key))
        started = self.clock()
        try:
            outputs = await self._run(target, ctx, tensors, rows, hints)
        except SurgeError as error:
            self.stats[target.version].record(self.clock() - started, ok=error.status < 500)
            if not self._may_retry(target, error, ctx):
                raise
            self.stats[target.version].retried_on_stable_total += 1
            failed = f"{target.spec.version.ref} answered {error.status} ({error.code})"
            ctx.decide("retry", self.stable.spec.version.ref, f"{failed}; retried on stable")
            return Served(await self._on_stable(ctx, tensors, rows, hints), self.stable)
        latency = self.clock() - started
        self.stats[target.version].record(latency, ok=True)
        if self.mode == "shadow" and self.shadow_enabled:
            self._mirror(ctx, tensors, rows, outputs, latency)
        return Served(outputs, target)

    def _may_retry(self, target: Deployment, error: SurgeError, ctx: RequestContext) -> bool:
        """A canary's failure (or refusal) is retried once on stable while time is left;
        stable's own admission then decides whether the rest of the deadline suffices."""
        return (
            self.retry_on_stable
            and target is not self.stable
            and error.status in (429, 500, 502, 503, 504)
            and ctx.remaining_s(self.clock()) > 0
        )

    async def _run(
        self, deployment: Deployment, ctx: RequestContext, tensors: Tensors, rows: int,
        hints: Hints,
    ) -> Tensors:  # fmt: skip
        """The version's answer, through the response cache when the endpoint has one (a
        shadow copy never reads or fills it: it is there to measure the model)."""
        cache = self.cache
        if cache is None or ctx.role != "live":
            return await deployment.infer(ctx, tensors, rows)

        def compute(part: Tensors, part_rows: int) -> Awaitable[Tensors]:
            return deployment.infer(ctx, part, part_rows)

        return await cache.run(deployment, ctx, tensors, rows, hints.parameters, compute)

    async def _on_stable(
        self, ctx: RequestContext, tensors: Tensors, rows: int, hints: Hints
    ) -> Tensors:
        started = self.clock()
        try:
            outputs = await self._run(self.stable, ctx, tensors, rows, hints)
        except SurgeError as error:
            self.stats[self.stable.version].record(self.clock() - started, error.status < 500)
            raise
        self.stats[self.stable.version].record(self.clock() - started, ok=True)
        return outputs

    # -- shadow traffic ----------------------------------------------------------------

    def _mirror(
        self, ctx: RequestContext, tensors: Tensors, rows: int, live: Tensors, live_s: float
    ) -> None:
        """Send a copy to the shadow candidate, unless either queue is already busy:
        shadow work is the first thing dropped under load, and the client's answer
        never waits for it."""
        candidate = self.candidate
        assert candidate is not None
        stats = self.stats[candidate.version]
        batch = candidate.spec.batching.max_batch_size
        if candidate.batcher.queued_rows >= batch or self.stable.batcher.queued_rows >= batch:
            stats.shadow_dropped_total += 1
            ctx.decide("shadow", candidate.spec.version.ref, "dropped: a queue holds a batch")
            return
        now = self.clock()
        shadow_ctx = RequestContext(
            f"{ctx.request_id}/shadow", self.name, now + candidate.spec.timeout_s, now
        )
        # The copy's run lands on the live request's receipt (role "shadow"), if it
        # finishes before the receipt is written.
        shadow_ctx.runs = ctx.runs
        shadow_ctx.role = "shadow"
        shadow_ctx.tenant = ctx.tenant
        ctx.decide("shadow", candidate.spec.version.ref, "mirrored after the answer")
        task = asyncio.get_running_loop().create_task(
            self._shadow(candidate, shadow_ctx, tensors, rows, live, live_s)
        )
        self._shadow_tasks.add(task)
        task.add_done_callback(self._shadow_tasks.discard)

    async def _shadow(
        self,
        candidate: Deployment,
        ctx: RequestContext,
        tensors: Tensors,
        rows: int,
        live: Tensors,
        live_s: float,
    ) -> None:
        stats = self.stats[candidate.version]
        started = self.clock()
        try:
            outputs = await candidate.infer(ctx, tensors, rows)
        except SurgeError as error:
            stats.record(self.clock() - started, ok=error.status < 500)
            if error.status < 500 or error.code in ("queue_full", "not_ready"):
                stats.shadow_dropped_total += 1
            else:
                stats.shadow_failed_total += 1
            return
        except Exception:  # a shadow must never take anything down; it is logged and counted
            log.exception("shadow request to %s failed", candidate.spec.version.ref)
            stats.shadow_failed_total += 1
            return
        latency = self.clock() - started
        stats.record(latency, ok=True)
        stats.record_shadow(agreement(live, outputs), latency - live_s)

    async def close(self) -> None:
        for task in list(self._shadow_tasks):
            task.cancel()
