"""The rollout controller's driver, run by the one process that holds the rollout lease.

Every `evaluate_interval_s` it judges each canary or shadow on the merge of every live
process's window for the route's current revision (each process publishes its windows
in its heartbeat, `cluster/presence.py`; its own are read live), and writes what the
sans-IO `RolloutController` decides as the next route revision, fenced by the lease.

Before judging, every live process must serve the revision: one still loading makes
the step wait; one that could not load the candidate rolls the rollout back, since a
version some processes cannot serve must not take the endpoint's traffic.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from surge.core.periodic import Periodic
from surge.routing.rollout import Advance, Decision, Hold, Promote, Rollback, Snapshot
from surge.serving import route_docs
from surge.serving.rollouts import Rollouts, policy_of
from surge.serving.version_stats import WindowCounts
from surge.store.registry import ProcessRecord

log = logging.getLogger("surge.rollouts")

Peers = Callable[[], Awaitable[list[ProcessRecord]]]


def local_windows(rollouts: Rollouts, name: str) -> dict[str, Any] | None:
    """This process's windows for `name`'s rollout, as its heartbeat publishes them."""
    endpoint = rollouts.endpoints[name]
    revision = rollouts.reconciler.revisions.get(name)
    if endpoint.candidate is None or revision is None:
        return None
    return {
        "revision": revision,
        "versions": {
            d.version: endpoint.stats[d.version].counts.to_dict() for d in endpoint.deployments
        },
    }


class RolloutLeader:
    def __init__(
        self,
        rollouts: Rollouts,
        process_id: str,
        peers: Peers,
        leading: Callable[[], bool],
        fence: Callable[[], tuple[str, int] | None],
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.rollouts = rollouts
        self.process_id = process_id
        self.peers = peers
        self.leading = leading
        self.fence = fence
        self.wall_clock = wall_clock
        interval = min(
            (e.rollout.evaluate_interval_s for e in rollouts.config.endpoints.values()),
            default=1.0,
        )
        self._ticker = Periodic("rollout evaluation", interval, self.evaluate_all, logger=log)

    def start(self) -> None:
        self._ticker.start()

    async def stop(self) -> None:
        await self._ticker.stop()

    async def evaluate_all(self) -> None:
        if not self.leading():
            return
        active = [n for n in self.rollouts.endpoints if self.rollouts.controller(n) is not None]
        if not active:
            return
        peers = await self.peers()
        for name in active:
            if self.rollouts.reconciler.lock(name).locked():
                continue  # an operator's change is under way; judge again next tick
            try:
                await self.evaluate(name, peers)
            except Exception:  # one endpoint's failure must not skip the others; logged
                log.exception("rollout evaluation of %s failed", name)

    async def evaluate(self, name: str, peers: list[ProcessRecord]) -> Decision | None:
        rollouts = self.rollouts
        failure = rollouts.reconciler.failures.get(name)
        if failure is not None and failure.doc.get("candidate") is not None:
            # This process could not serve the rollout's latest revision.
            judged, state = failure.doc, {}
            decision: Decision | None = Rollback(
                f"process {self.process_id} could not load route revision "
                f"{failure.revision}: {failure.message}"
            )
        else:
            judged = rollouts.doc(name) or {}
            decision, state = self._judge(name, judged, peers)
        if decision is None:
            return None
        if isinstance(decision, Hold):
            rollouts.waiting[name] = decision.waiting_for
            return decision
        rollouts.waiting.pop(name, None)
        change = _carry_out(decision, judged, state)
        action = {Advance: "advance", Promote: "promote", Rollback: "rollback"}[type(decision)]
        fence = self.fence()
        if fence is None:
            return None  # the lease ran out while judging: the next leader decides
        await rollouts.change_route(
            name, change, "controller", action, decision.reason, fence=fence
        )
        return decision

    def _judge(
        self, name: str, doc: dict[str, Any], peers: list[ProcessRecord]
    ) -> tuple[Decision | None, dict[str, Any]]:
        """The controller's decision on the merged windows, and its state after it."""
        revision = self.rollouts.reconciler.revisions.get(name)
        now = self.wall_clock()
        if not doc or revision is None or doc.get("candidate") is None:
            return None, {}
        controller = route_docs.controller_of(doc, policy_of(self.rollouts.config, name), now)
        if controller is None:
            return None, {}
        decision = self._blocked(name, revision, peers)
        if decision is None:
            decision = controller.evaluate(now, self._snapshot(name, doc, revision, peers))
        return decision, route_docs.rollout_state(controller)

    def _blocked(self, name: str, revision: int, peers: list[ProcessRecord]) -> Decision | None:
        """A rollback when a process could not load this revision; a hold while one has
        not loaded it yet; None when every live process serves it."""
        behind = 0
        serving = 0
        for peer in peers:
            if peer.id == self.process_id:
                continue  # this process's own state is read live, below
            routes = peer.state.get("routes") or {}
            if name not in routes:
                continue  # a process whose config has no such endpoint
            serving += 1
            failure = (peer.state.get("failures") or {}).get(name)
            if failure and failure.get("revision") == revision:
                return Rollback(
                    f"process {peer.id} could not load route revision {revision}: "
                    f"{failure.get('message')}"
                )
            if int(routes[name] or -1) < revision:
                behind += 1
        if behind:
            return Hold(f"{behind} of {serving + 1} processes to serve revision {revision}")
        return None

    def _snapshot(
        self, name: str, doc: dict[str, Any], revision: int, peers: list[ProcessRecord]
    ) -> Snapshot:
        totals: dict[str, WindowCounts] = {}
        published = [
            (peer.state.get("windows") or {}).get(name)
            for peer in peers
            if peer.id != self.process_id
        ]
        for windows in [local_windows(self.rollouts, name), *published]:
            if not windows or windows.get("revision") != revision:
                continue
            for version, counts in (windows.get("versions") or {}).items():
                totals.setdefault(version, WindowCounts()).merge(WindowCounts.from_dict(counts))
        stable = totals.get(doc["stable"]["version"], WindowCounts())
        candidate = totals.get(doc["candidate"]["version"], WindowCounts())
        return Snapshot(
            stable=stable.window(),
            candidate=candidate.window(),
            shadow_compared=candidate.compared,
            shadow_agreement=candidate.shadow_agreement,
        )


def _carry_out(
    decision: Decision, judged: dict[str, Any], controller_state: dict[str, Any]
) -> Callable[[dict[str, Any] | None], dict[str, Any] | None]:
    """The registry change that carries out `decision` about the route `judged`, applied
    to the route as it is when written: an advance or promotion only if nothing changed
    since it was judged; a rollback as long as the same candidate is still out."""

    def change(before: dict[str, Any] | None) -> dict[str, Any] | None:
        if before is None or before.get("candidate") != judged.get("candidate"):
            return None
        if isinstance(decision, Rollback):
            return route_docs.single(before, before["stable"])
        if before != judged:
            return None  # changed since it was judged: judge the new route next tick
        if isinstance(decision, Advance):
            return {**judged, "percent": decision.percent, "rollout": controller_state}
        return route_docs.single(judged, judged["candidate"])

    return change
