"""Rollout operations: deploy a version beside the live one, promote it, roll it back,
through any process; the registry keeps every change, every process follows it, and a
restart resumes where it was.

An operation is one read-modify-write of the endpoint's route in the registry
(`route_docs.py` computes the new doc from the latest one, inside the transaction),
with one audit entry. The process that made it then serves the new doc at once and
announces it; the others follow within `cluster.poll_interval_s` (at once with Redis).
A deploy loads and warms the version here before the change is written, so a version
that cannot load is refused with nothing changed.

When a canary advances or rolls back is the sans-IO `RolloutController`'s decision,
taken by the one process holding the rollout lease (`rollout_leader.py`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from surge.config import Config
from surge.core.errors import SurgeError
from surge.routing.rollout import RolloutController, RolloutPolicy
from surge.serving import route_docs
from surge.serving.deployment import Deployment
from surge.serving.endpoint import Endpoint
from surge.serving.factory import DeploymentFactory, check_compatible
from surge.serving.lifecycle import VersionLifecycle
from surge.serving.reconcile import RouteReconciler
from surge.serving.rollout_status import describe_route
from surge.store.registry import RegistryStore, RouteUpdate

log = logging.getLogger("surge.rollouts")

DEPLOY_MODES = ("swap", "canary", "shadow", "ab")


def policy_of(config: Config, endpoint: str) -> RolloutPolicy:
    """The endpoint's rollout policy, or a 409 that names the config key to fix. The schema
    refuses what the policy would, so only a config changed in memory since it was
    validated can fail here; that is the server's config at fault, never a 500."""
    try:
        return config.endpoints[endpoint].rollout.policy()
    except ValueError as exc:
        raise SurgeError(
            "invalid_config",
            f"endpoints.{endpoint}.rollout cannot drive a rollout: {exc}; fix the config",
            409,
        ) from None


class Rollouts:
    def __init__(
        self,
        config: Config,
        endpoints: dict[str, Endpoint],
        factory: DeploymentFactory,
        store: RegistryStore,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.endpoints = endpoints
        self.factory = factory
        self.store = store
        self.wall_clock = wall_clock
        self.versions = VersionLifecycle(factory, store, config.server.shutdown_grace_s, wall_clock)
        self.reconciler = RouteReconciler(endpoints, self.versions)
        # Set once the control plane exists: refuses changes while it is unreachable,
        # announces them, and holds the fence of the rollout lease.
        self.require_healthy: Callable[[], None] = lambda: None
        self.announce: Callable[[str], Any] | None = None
        self.fence: Callable[[], tuple[str, int] | None] = lambda: None
        # What the rollout leader waits for, per endpoint: this process's own if it
        # leads, else copied from the leader's heartbeat.
        self.waiting: dict[str, str] = {}

    # -- start-up: the registry says what serves --------------------------------------

    def config_ref(self, name: str) -> dict[str, str]:
        """The version the config names for `name`."""
        return {"model": self.config.model_of(name), "version": self.config.endpoints[name].version}

    async def open_endpoint(self, name: str, doc: dict[str, Any] | None) -> Endpoint:
        """Start serving `name`: the registry's route if the config still names the same
        version, else the config's (recorded once, by whichever process starts first)."""
        config_ref = self.config_ref(name)
        current = route_docs.still_current(doc, config_ref)
        stable_ref = current["stable"] if current else config_ref
        stable = await self.versions.load(name, stable_ref, shadow=False, actor="config")
        endpoint_config = self.config.endpoints[name]
        endpoint = Endpoint(
            name,
            stable,
            retry_on_stable=endpoint_config.rollout.retry_on_stable,
            ab_key=endpoint_config.ab_key,
        )
        self.endpoints[name] = endpoint
        if current is None:
            await self._record_configured(name, config_ref)
        return endpoint

    async def _record_configured(self, name: str, config_ref: dict[str, str]) -> None:
        reason = f"serving {config_ref['model']}@{config_ref['version']} from the config"

        def change(before: dict[str, Any] | None) -> dict[str, Any] | None:
            if route_docs.still_current(before, config_ref) is not None:
                return None  # another process starting with this config recorded it
            return route_docs.configured(config_ref, before)

        if doc := await self._registry_doc(name):
            was = doc.get("stable", {})
            reason += f" (the registry had {was.get('model')}@{was.get('version')}"
            if doc.get("candidate"):
                reason += f" and a {doc.get('mode')} of {doc['candidate']}"
            reason += "; the config changed since)"
        await asyncio.to_thread(
            self.store.update_route, name, change, actor="config", action="configure",
            reason=reason, now=self.wall_clock(),
        )  # fmt: skip

    async def _registry_doc(self, name: str) -> dict[str, Any] | None:
        return await asyncio.to_thread(self.store.load_route, name)

    async def follow(self, key: str, doc: dict[str, Any], revision: int) -> bool:
        """The follower's hook for an endpoint's route (other keys are not ours)."""
        if key not in self.endpoints:
            return True
        async with self.reconciler.lock(key):
            return await self.reconciler.apply(key, doc, revision)

    def doc(self, name: str) -> dict[str, Any] | None:
        """The route this process serves for `name`, as the registry stored it."""
        return self.reconciler.docs.get(name)

    def controller(self, name: str) -> RolloutController | None:
        doc = self.doc(name)
        if doc is None:
            return None
        try:
            return route_docs.controller_of(doc, policy_of(self.config, name), self.wall_clock())
        except (SurgeError, ValueError, KeyError):
            return None

    # -- operations -------------------------------------------------------------------

    def _endpoint(self, name: str) -> Endpoint:
        endpoint = self.endpoints.get(name)
        if endpoint is None:
            known = ", ".join(sorted(self.endpoints)) or "none"
            raise SurgeError(
                "endpoint_not_found", f"unknown endpoint {name!r}; known: {known}", 404
            )
        return endpoint

    async def deploy(
        self,
        name: str,
        model: str,
        version: str,
        *,
        mode: str = "swap",
        percent: float | None = None,
        ab_key: str | None = None,
        actor: str,
    ) -> dict[str, Any]:
        endpoint = self._endpoint(name)
        if mode not in DEPLOY_MODES:
            raise SurgeError(
                "invalid_input", f"mode must be one of {', '.join(DEPLOY_MODES)}, got {mode!r}", 400
            )
        if percent is not None and not 0 < percent <= 100:
            raise SurgeError("invalid_input", f"percent must be in (0, 100], got {percent}", 400)
        self.require_healthy()
        # Built before the candidate loads: a policy that cannot be built refuses the
        # deploy with nothing loaded to clean up.
        policy = policy_of(self.config, name) if mode in ("canary", "shadow") else None
        route_docs.require_no_rollout(name, self.doc(name), version)  # fail fast, unloaded
        ref = {"model": model, "version": version}
        candidate = await self.versions.load(name, ref, shadow=mode == "shadow", actor=actor)
        try:
            check_compatible(endpoint.stable, candidate)
            change, reason = self._deploy_change(name, ref, mode, percent, ab_key, policy)
            used = await self.change_route(name, change, actor, "deploy", reason, candidate)
        except BaseException:
            await candidate.stop()
            raise
        if not used:
            await candidate.stop()
        return await self.status(name)

    def _deploy_change(
        self,
        name: str,
        ref: dict[str, str],
        mode: str,
        percent: float | None,
        ab_key: str | None,
        policy: RolloutPolicy | None,
    ) -> tuple[RouteUpdate, str]:
        version = ref["version"]
        now = self.wall_clock()
        if mode == "swap":
            reason = f"hot swap to {ref['model']}@{version}"
        elif mode == "ab":
            share = 50.0 if percent is None else percent
            key = ab_key or self.config.endpoints[name].ab_key
            reason = f"sticky A/B on {key}: {share:g} % to v{version}"
        else:
            assert policy is not None
            controller = RolloutController(policy, stage=mode, step=0, step_started_at=now)
            if mode == "canary" and percent is not None:
                # --canary 5%: start at the first configured step at or above it.
                controller.step = next(
                    i for i, p in enumerate(policy.steps_percent) if p >= percent
                )
            reason = (
                f"canary of v{version} at {controller.percent:g} %"
                if mode == "canary"
                else f"shadowing v{version}"
            )

        def change(before: dict[str, Any] | None) -> dict[str, Any]:
            before = route_docs.require_no_rollout(name, before, version)
            if mode == "swap":
                return route_docs.single(before, ref)
            if mode == "ab":
                return route_docs.with_candidate(before, ref, "ab", share, ab_key=key)
            return route_docs.with_candidate(
                before, ref, mode, controller.percent, rollout=route_docs.rollout_state(controller)
            )

        return change, reason

    async def promote(self, name: str, *, actor: str, reason: str = "operator") -> dict[str, Any]:
        self._endpoint(name)
        self.require_healthy()

        def change(before: dict[str, Any] | None) -> dict[str, Any]:
            candidate = route_docs.require_candidate(name, before, "promote")
            assert before is not None
            return route_docs.single(before, candidate)

        await self.change_route(name, change, actor, "promote", f"promoted by {actor}: {reason}")
        return await self.status(name)

    async def rollback(self, name: str, *, actor: str, reason: str = "operator") -> dict[str, Any]:
        self._endpoint(name)
        self.require_healthy()

        def change(before: dict[str, Any] | None) -> dict[str, Any]:
            route_docs.require_candidate(name, before, "roll back")
            assert before is not None
            return route_docs.single(before, before["stable"])

        await self.change_route(
            name, change, actor, "rollback", f"rolled back by {actor}: {reason}"
        )
        return await self.status(name)

    async def change_route(
        self,
        name: str,
        change: RouteUpdate,
        actor: str,
        action: str,
        reason: str,
        preloaded: Deployment | None = None,
        fence: tuple[str, int] | None = None,
    ) -> bool:
        """Write the change (one transaction, one audit entry), serve it here at once, and
        tell the other processes. Whether it was written (`change` may decline)."""
        async with self.reconciler.lock(name):
            entry = await asyncio.to_thread(
                self.store.update_route, name, change, actor=actor, action=action,
                reason=reason, now=self.wall_clock(), fence=fence,
            )  # fmt: skip
            if entry is None:
                return False
            assert entry.after is not None
            served = await self.reconciler.apply(
                name, entry.after, entry.revision, preloaded=preloaded, actor=actor
            )
        level = logging.INFO if served else logging.ERROR
        log.log(level, "%s: %s by %s: %s", name, action, actor, reason)
        if self.announce is not None:
            await self.announce(name)
        return served

    async def status(self, name: str) -> dict[str, Any]:
        endpoint = self._endpoint(name)
        doc = describe_route(
            endpoint,
            self.controller(name),
            waiting_for=self.waiting_for(name),
            ab_key=endpoint.ab_key,
            now=self.wall_clock(),
        )
        doc["revision"] = self.reconciler.revisions.get(name)
        failure = self.reconciler.failures.get(name)
        doc["load_failure"] = None if failure is None else failure.message
        return doc

    def waiting_for(self, name: str) -> str:
        """What the rollout leader waits for; set by `RolloutLeader`."""
        return self.waiting.get(name, "the first evaluation")

    async def history(
        self, name: str | None = None, limit: int = 100, action: str | None = None
    ) -> list[dict[str, Any]]:
        if name is not None:
            self._endpoint(name)
        entries = await asyncio.to_thread(self.store.audit, name, limit, action)
        return [e.to_dict() for e in entries]

    async def stop(self) -> None:
        await self.versions.wait_retired()
