"""A bandit route: per segment, learn which target earns the most reward.

Each request is sent to the arm the bandit picks for its segment (e.g. the tenant
header); the client later reports how good the answer was with `POST /v1/feedback`
(request id + reward in [0, 1]), through any process: what each request was answered
with is remembered in the shared pending-feedback store (`cluster/pending.py`). The
counts are sufficient statistics, so processes share them by adding what each
learned: every `sync_s` a process adds its counts since the last sync to the registry's
copy, in one locked read-modify-write, and adopts the sum, so every worker (and a
restart) learns from all of them.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from surge.config_routes import BanditConfig
from surge.core.clock import monotonic
from surge.core.context import RequestContext
from surge.core.errors import SurgeError
from surge.core.periodic import Periodic
from surge.core.tensors import Tensors
from surge.routing.bandit import Bandit, bandit_from_dict, make_bandit
from surge.serving.target import Hints, RouteBase, Served, Target
from surge.store.registry import RegistryStore

log = logging.getLogger("surge.bandit")

# Records (request id, route, segment, arm) for a later reward, from any process.
Remember = Callable[[str, str, str, str], None]


def add_counts(base: dict[str, Any] | None, delta: dict[str, Any]) -> dict[str, Any]:
    """`base` + `delta`, both in `Bandit.to_dict()` form (counts add up across processes)."""
    if base is None:
        return delta
    merged = {**base, "segments": {s: {a: dict(c) for a, c in arms.items()}
                                   for s, arms in base["segments"].items()}}  # fmt: skip
    for segment, arms in delta["segments"].items():
        target = merged["segments"].setdefault(segment, {})
        for arm, counts in arms.items():
            now = target.setdefault(arm, {"chosen": 0, "pulls": 0, "reward_sum": 0.0})
            for key in ("chosen", "pulls", "reward_sum"):
                now[key] += counts[key]
    return merged


def subtract_counts(current: dict[str, Any], synced: dict[str, Any] | None) -> dict[str, Any]:
    """What this process learned since `synced`."""
    if synced is None:
        return current
    delta = {**current, "segments": {}}
    for segment, arms in current["segments"].items():
        before = synced["segments"].get(segment, {})
        delta["segments"][segment] = {
            arm: {
                key: counts[key] - before.get(arm, {}).get(key, 0)
                for key in ("chosen", "pulls", "reward_sum")
            }
            for arm, counts in arms.items()
        }
    return delta


class BanditRoute(RouteBase):
    def __init__(
        self,
        name: str,
        config: BanditConfig,
        targets: list[Target],
        store: RegistryStore,
        remember: Remember,
        rng: random.Random | None = None,
        clock: Callable[[], float] = monotonic,
    ) -> None:
        self.name = name
        self.config = config
        self.targets = {t.name: t for t in targets}
        self.store = store
        self.clock = clock
        self._rng = rng or random.Random()
        options = {"epsilon": config.epsilon} if config.strategy == "epsilon_greedy" else {}
        self.bandit: Bandit = make_bandit(config.strategy, list(self.targets), self._rng, **options)
        self._synced: dict[str, Any] | None = None
        self.remember = remember
        self.counts: Counter[tuple[str, str]] = Counter()  # (target, "chosen" | "rewarded")
        self._ticker = Periodic(
            f"bandit {name} sync", config.sync_s, self.sync, first_tick_now=True, logger=log
        )

    @property
    def key(self) -> str:
        return f"*bandit*:{self.name}"

    @property
    def first(self) -> Target:
        return next(iter(self.targets.values()))

    @property
    def accepting(self) -> bool:
        return all(t.accepting for t in self.targets.values())

    async def infer(self, ctx: RequestContext, tensors: Tensors, hints: Hints) -> Served:
        header = self.config.segment_header
        segment = (hints.header(header) or "") if header else ""
        arm = self.bandit.choose(segment)
        self.counts[arm, "chosen"] += 1
        ctx.decide("bandit", arm, f"{self.config.strategy} chose {arm} for segment {segment!r}",
                   segment=segment)  # fmt: skip
        self.remember(ctx.request_id, self.name, segment, arm)
        return await self.targets[arm].infer(ctx, tensors, hints)

    def reward(self, request_id: str, segment: str, arm: str, reward: float) -> dict[str, Any]:
        """Credit `arm` for the answer to `request_id` (found by the pending store)."""
        if arm not in self.targets:
            raise SurgeError(
                "unknown_request",
                f"request {request_id!r} was answered by arm {arm!r}, which route "
                f"{self.name!r} no longer has",
                404,
            )
        try:
            self.bandit.reward(arm, reward, segment)
        except ValueError as exc:
            raise SurgeError("invalid_input", str(exc), 400) from None
        self.counts[arm, "rewarded"] += 1
        return {"route": self.name, "arm": arm, "segment": segment, "reward": reward}

    # -- sharing the counts -----------------------------------------------------------------

    async def sync(self) -> None:
        """Add what this process learned to the shared counts and adopt the sum."""
        current = self.bandit.to_dict()
        delta = subtract_counts(current, self._synced)
        merged = await asyncio.to_thread(
            self.store.update_state,
            self.key,
            lambda shared: add_counts(shared, delta),
            now=time.time(),
        )
        if merged.get("kind") != self.bandit.kind or merged.get("arms") != list(self.bandit.arms):
            return  # the config changed arms or strategy: keep learning afresh
        # Adopt the sum; counts added since `current` was taken are kept as a new delta.
        since = subtract_counts(self.bandit.to_dict(), current)
        self.bandit = bandit_from_dict(add_counts(merged, since), self._rng)
        self._synced = merged

    def start(self) -> None:
        self._ticker.start()

    async def stop(self) -> None:
        await self._ticker.stop()
        try:
            await self.sync()  # keep what was learned since the last sync
        except Exception:
            log.exception("bandit %s: final sync failed", self.name)
