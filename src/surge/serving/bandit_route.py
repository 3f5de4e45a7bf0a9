"""A bandit route: per segment, learn which target earns the most reward.

Each request is sent to the arm the bandit picks for its segment (e.g. the tenant
header); the client later reports how good the answer was with `POST /v1/feedback`
(request id + reward in [0, 1] + the answer's feedback token), through any process: what
each request was answered with is remembered in the shared pending-feedback store
(`cluster/pending.py`). The counts are sufficient statistics, so processes share them by
adding what each learned: every `sync_s` a process adds what it learned since the last
sync to the registry's copy, in one locked read-modify-write, and adopts the sum, so
every worker (and a restart) learns from all of them. The shared copy keeps at most
`max_segments` segments, those most recently learned from by any process.

The feedback token proves that a reward comes from whoever got the answer: an
HMAC-SHA256 of (request id, tenant, arm) under a secret every process of the namespace
shares, sent as `X-Feedback-Token`. Without it a stranger who learned request ids could
reward any arm (feedback poisoning).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import random
import secrets
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import orjson

from surge.config import feedback_secret_from_env
from surge.config_routes import BanditConfig
from surge.core.clock import monotonic
from surge.core.context import RequestContext
from surge.core.errors import SurgeError
from surge.core.periodic import Periodic
from surge.core.tensors import Tensors
from surge.routing.bandit import DEFAULT_SEGMENT, Bandit, bandit_from_dict, make_bandit
from surge.serving.target import Hints, RouteBase, Served, Target
from surge.store.registry import RegistryStore

log = logging.getLogger("surge.bandit")

# Records (request id, route, segment, arm, tenant) for a later reward, from any process.
Remember = Callable[[str, str, str, str, str | None], None]
FEEDBACK_SECRET = "feedback"  # the name of the shared secret in the store
_TOKEN_PURPOSE = "surge feedback 1"  # so a token can never pass for another HMAC's


def feedback_token(secret: bytes, request_id: str, tenant: str | None, arm: str) -> str:
    """The answer's proof for its feedback: HMAC-SHA256, base64url without padding. The
    fields go in as one JSON array, so no two (id, tenant, arm) share a message."""
    message = orjson.dumps([_TOKEN_PURPOSE, request_id, tenant, arm])
    digest = hmac.new(secret, message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def token_matches(secret: bytes, token: str, request_id: str, tenant: str | None, arm: str) -> bool:
    expected = feedback_token(secret, request_id, tenant, arm).encode("ascii")
    # Compared in constant time, so timing tells nothing of how much of a guess was right.
    return hmac.compare_digest(expected, token.encode("utf-8", "replace"))


async def load_feedback_secret(store: RegistryStore) -> bytes:
    """`SURGE_FEEDBACK_SECRET`, else the namespace's shared one (made by the first process
    to ask): every process signs and checks with the same key."""
    configured = feedback_secret_from_env()
    if configured is not None:
        return configured.encode("utf-8")
    shared = await asyncio.to_thread(
        store.shared_secret,
        FEEDBACK_SECRET,
        make=lambda: secrets.token_urlsafe(32),
        now=time.time(),
    )
    return shared.encode("utf-8")


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


def merge_shared(
    base: dict[str, Any] | None, delta: dict[str, Any], max_segments: int
) -> dict[str, Any]:
    """The shared copy after adding a process's delta, keeping the `max_segments` segments
    most recently learned from. Recency is a sync count (`tick`), not a clock: processes'
    clocks differ, and each merge is one step of the shared copy's own history."""
    merged = add_counts(base, delta)
    tick = int((base or {}).get("tick", 0)) + 1
    seen = dict((base or {}).get("seen") or {})
    for segment in delta["segments"]:
        seen[segment] = tick
    named = [s for s in merged["segments"] if s != DEFAULT_SEGMENT]
    named.sort(key=lambda s: seen.get(s, 0))
    dropped = named[: max(0, len(named) - max_segments)]
    for segment in dropped:
        del merged["segments"][segment]
    kept = named[len(dropped) :]
    return {**merged, "tick": tick, "seen": {s: seen.get(s, 0) for s in kept}}


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
        options: dict[str, Any] = {"max_segments": config.max_segments}
        if config.strategy == "epsilon_greedy":
            options["epsilon"] = config.epsilon
        self.bandit: Bandit = make_bandit(config.strategy, list(self.targets), self._rng, **options)
        self.remember = remember
        self.secret: bytes | None = None  # loaded by the first sync, before any request
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
        return await self.targets[self.choose_arm(ctx, hints)].infer(ctx, tensors, hints)

    def choose_arm(self, ctx: RequestContext, hints: Hints) -> str:
        """The arm for this request, with its books: the decision on the receipt, the
        pending entry its feedback will take, and the answer's feedback token."""
        header = self.config.segment_header
        segment = (hints.header(header) or "") if header else ""
        arm = self.bandit.choose(segment)
        self.counts[arm, "chosen"] += 1
        ctx.decide("bandit", arm, f"{self.config.strategy} chose {arm} for segment {segment!r}",
                   segment=segment)  # fmt: skip
        self.remember(ctx.request_id, self.name, segment, arm, ctx.tenant)
        if self.secret is not None:
            ctx.feedback_token = feedback_token(self.secret, ctx.request_id, ctx.tenant, arm)
        return arm

    def token_matches(self, token: str, request_id: str, tenant: str | None, arm: str) -> bool:
        """Whether `token` is the one this route gave the answer to `request_id`."""
        secret = self.secret
        return secret is not None and token_matches(secret, token, request_id, tenant, arm)

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
        if self.secret is None:  # the first sync runs at start-up, before any request
            self.secret = await load_feedback_secret(self.store)
        cap = self.config.max_segments
        delta = self.bandit.take_learned()
        try:
            merged = await asyncio.to_thread(
                self.store.update_state,
                self.key,
                lambda shared: merge_shared(shared, delta, cap),
                now=time.time(),
            )
        except BaseException:
            self.bandit.give_back(delta)  # shared next time instead
            raise
        if merged.get("kind") != self.bandit.kind or merged.get("arms") != list(self.bandit.arms):
            return  # the config changed arms or strategy: keep learning afresh
        # Rebuilt off the loop (up to max_segments of counts); what was learned during
        # the awaits is then added on the loop, and shared next time.
        adopted = await asyncio.to_thread(bandit_from_dict, merged, self._rng, max_segments=cap)
        adopted.absorb(self.bandit)
        self.bandit = adopted

    def start(self) -> None:
        self._ticker.start()

    async def stop(self) -> None:
        await self._ticker.stop()
        try:
            await self.sync()  # keep what was learned since the last sync
        except Exception:
            log.exception("bandit %s: final sync failed", self.name)
