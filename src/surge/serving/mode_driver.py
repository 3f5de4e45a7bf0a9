"""Burst modes, driven: every interval the live signals (queue fill, p99 against its
target, share refused) go to the sans-IO `ModeController`, and the current mode's
switches are applied to the endpoints, routes and adapters. Changes are logged with
their reason and audited; an operator may force a mode and release it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from surge.config import ModesConfig
from surge.core.clock import monotonic
from surge.core.errors import SurgeError
from surge.core.periodic import Periodic
from surge.observe.metrics import LATENCY_BUCKETS_S, Metrics
from surge.observe.quantiles import histogram_quantile
from surge.routing.modes import LoadSignals, ModeChange, ModeController, ModePolicy, default_policy
from surge.serving.endpoint import Endpoint
from surge.serving.routes import CascadeRoute, Route
from surge.store.background_writer import BackgroundWriter
from surge.store.registry import RegistryStore

log = logging.getLogger("surge.modes")

MODE_KEY = "*mode*"  # the registry key of the operator's forced mode


# Mode changes come at most one per `min_dwell_s` on the way down: 64 unwritten audit
# entries is minutes of a registry outage, and each change is in the log all the same.
AUDIT_CAPACITY = 64
AUDIT_TIMEOUT_S = 5.0  # per write; the tick never waits for it
AUDIT_DRAIN_S = 2.0  # at shutdown


def policy_from(config: ModesConfig) -> ModePolicy:
    base = default_policy()
    return ModePolicy(
        base.levels,
        hold_s=config.hold_s,
        min_dwell_s=config.min_dwell_s,
        min_requests=config.min_requests_per_interval,
    )


class ModeDriver:
    def __init__(
        self,
        config: ModesConfig,
        endpoints: dict[str, Endpoint],
        routes: dict[str, Route],
        metrics: Metrics,
        store: RegistryStore,
        clock: Callable[[], float] = monotonic,
    ) -> None:
        self.config = config
        self.endpoints = endpoints
        self.routes = routes
        self.metrics = metrics
        self.store = store
        self.clock = clock
        self.controller = ModeController(policy_from(config), clock())
        self.signals = LoadSignals(0.0, 0.0, 0.0)
        # Read on the request path: plain attributes, refreshed when the mode changes.
        self.shed_below: int | None = None
        self.timeout_cap_s: float | None = None
        # Client deadlines under this are no evidence of overload when refused (admission).
        self.min_client_deadline_s = config.min_client_deadline_ms / 1000.0
        self._last_counts: tuple[list[int], int, int] | None = None
        self._ticker = Periodic(
            "mode evaluation", config.evaluate_interval_s, self.tick, logger=log
        )
        self.changes_total = 0
        # Set by the server once the control plane exists.
        self.process_id = "local"
        self.require_healthy: Callable[[], None] = lambda: None
        self.announce: Callable[[str], Awaitable[Any]] | None = None
        # Automatic changes are audited off the tick: a slow registry never delays a mode
        # decision, and a dead one costs audit entries (logged), never the change itself.
        self._audit: BackgroundWriter[dict[str, Any]] = BackgroundWriter(
            "mode audit",
            lambda entry: self.store.append_audit(**entry),
            capacity=AUDIT_CAPACITY,
            batch_size=AUDIT_CAPACITY,
            write_timeout_s=AUDIT_TIMEOUT_S,
            logger=log,
        )

    @property
    def mode(self) -> str:
        return self.controller.mode

    # -- the request path ----------------------------------------------------------------

    def admit(self, priority: int) -> None:
        """Refuse at once (503) a request the current mode sheds."""
        if self.shed_below is not None and priority < self.shed_below:
            raise SurgeError(
                "shed",
                f"the server is in {self.mode} mode and sheds priority below "
                f"{self.shed_below}; retry later or send a higher X-Priority",
                503,
                self.config.hold_s,
            )

    def timeout_s(self, endpoint_default_s: float) -> float:
        cap = self.timeout_cap_s
        return endpoint_default_s if cap is None else min(cap, endpoint_default_s)

    # -- the timer -------------------------------------------------------------------------

    def start(self) -> None:
        if self.config.enabled:
            self._audit.start()
            self._ticker.start()

    async def stop(self) -> None:
        await self._ticker.stop()
        await self._audit.close(AUDIT_DRAIN_S)

    async def tick(self) -> ModeChange | None:
        self.signals = self.sample()
        change = self.controller.observe(self.clock(), self.signals)
        if change is not None:
            self._apply(change)
        return change

    def sample(self) -> LoadSignals:
        """The signals over the interval since the last sample."""
        fill = 0.0
        for endpoint in self.endpoints.values():
            for d in endpoint.deployments:
                fill = max(fill, len(d.batcher) / d.spec.max_queue)
        buckets = [0] * (len(LATENCY_BUCKETS_S) + 1)
        answered = refused = 0
        for m in self.metrics.endpoints.values():
            for i, count in enumerate(m.total.counts):
                buckets[i] += count
            answered += sum(m.responses.values())
            # Only refusals that show a lack of capacity: not the mode's own sheds and
            # capped deadlines, nor deadlines no idle deployment could meet (admission.py).
            refused += m.overload_refusals
        last = self._last_counts or (buckets, answered, refused)
        self._last_counts = (buckets, answered, refused)
        delta = [a - b for a, b in zip(buckets, last[0], strict=True)]
        offered = answered - last[1]
        p99 = histogram_quantile(delta, LATENCY_BUCKETS_S, 0.99) or 0.0  # None: nothing answered
        return LoadSignals(
            queue_fill=min(1.0, fill),
            p99_ratio=p99 / (self.config.target_p99_ms / 1000.0),
            rejection_rate=min(1.0, (refused - last[2]) / offered) if offered else 0.0,
            offered=max(0, offered),
        )

    # -- operator ---------------------------------------------------------------------
    # A forced mode is the operator's, so it applies in every process: it is written to
    # the registry under MODE_KEY (one audit entry), served here at once, and every
    # other process applies it when it follows that key (`follow`), without auditing
    # it again. Automatic changes stay each process's own (README: "Many processes").

    async def force(self, mode: str, reason: str, actor: str) -> dict[str, Any]:
        if mode not in [level.name for level in self.controller.policy.levels]:
            known = ", ".join(level.name for level in self.controller.policy.levels)
            raise SurgeError("invalid_input", f"unknown mode {mode!r}; modes: {known}", 400)
        self.require_healthy()
        why = f"{actor}: {reason}"
        await self._write({"forced": mode, "reason": why}, actor, f"{self.mode} -> {mode}: {why}")
        await self.follow(MODE_KEY, {"forced": mode, "reason": why}, None)
        return self.describe()

    async def release(self, reason: str, actor: str) -> dict[str, Any]:
        self.require_healthy()
        why = f"{actor}: {reason}"
        if self.controller.forced:
            await self._write({"forced": None, "reason": why}, actor, f"{self.mode} -> "
                              f"{self.mode}: {why}")  # fmt: skip
        await self.follow(MODE_KEY, {"forced": None, "reason": why}, None)
        return self.describe()

    async def _write(self, doc: dict[str, Any], actor: str, reason: str) -> None:
        await asyncio.to_thread(
            self.store.update_route, MODE_KEY, lambda _: doc, actor=actor, action="mode",
            reason=reason, now=time.time(),
        )  # fmt: skip
        if self.announce is not None:
            await self.announce(MODE_KEY)

    async def follow(self, key: str, doc: dict[str, Any], revision: int | None) -> bool:
        """Apply the operator's mode from the registry (the follower's hook for MODE_KEY)."""
        if key != MODE_KEY:
            return True
        forced, reason = doc.get("forced"), str(doc.get("reason") or "operator")
        now = self.clock()
        if isinstance(forced, str):  # anything else: released, or a doc of an old release
            if self.controller.forced and self.controller.mode == forced:
                return True
            try:
                change = self.controller.force(forced, now, reason)
            except ValueError:
                log.error("the registry forces mode %r, which this process does not know", forced)
                return True
        else:
            change = self.controller.release(now, reason)
            if change is None:
                return True
        self._switch(change)
        return True

    def describe(self) -> dict[str, Any]:
        s = self.controller.switches
        return {
            "mode": self.mode,
            "forced": self.controller.forced,
            "automatic": self.config.enabled,
            "switches": {
                "shadow": s.shadow,
                "allowed_tiers": s.allowed_tiers,
                "default_timeout_ms": s.default_timeout_ms,
                "shed_priorities_below": s.shed_priorities_below,
            },
            "signals": {
                "queue_fill": round(self.signals.queue_fill, 4),
                "p99_ratio": round(self.signals.p99_ratio, 4),
                "rejection_rate": round(self.signals.rejection_rate, 4),
            },
            "history": [
                {
                    "at": c.at,
                    "from": c.from_mode,
                    "to": c.to_mode,
                    "reason": c.reason,
                    "forced": c.forced,
                }
                for c in self.controller.history[-20:]
            ],
        }

    def _switch(self, change: ModeChange) -> None:
        """Set the mode's switches on the endpoints, routes and adapters."""
        self.changes_total += 1
        switches = self.controller.switches
        for endpoint in self.endpoints.values():
            endpoint.shadow_enabled = switches.shadow
        for route in self.routes.values():
            if isinstance(route, CascadeRoute):
                route.limit_tiers(switches.allowed_tiers, change.to_mode)
        self.shed_below = switches.shed_priorities_below
        cap = switches.default_timeout_ms
        self.timeout_cap_s = None if cap is None else cap / 1000.0
        level = logging.INFO if change.to_mode == change.from_mode else logging.WARNING
        log.log(level, "mode %s -> %s: %s", change.from_mode, change.to_mode, change.reason)

    def _apply(self, change: ModeChange) -> None:
        """An automatic change: this process's own, applied now and audited as such by
        the background writer."""
        self._switch(change)
        self._audit.offer(
            {
                "actor": "modes",
                "action": "mode",
                "endpoint": None,
                "reason": f"{change.from_mode} -> {change.to_mode}: {change.reason} "
                f"(process {self.process_id})",
                "now": time.time(),
            }
        )
