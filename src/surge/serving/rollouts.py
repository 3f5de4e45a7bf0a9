"""Rollout operations: deploy a version beside the live one, step a canary, promote,
roll back; the registry keeps every change, so a restart resumes where it was.

The admin API and the CLI are two faces of these operations. Decisions about when
a canary advances or rolls back are the sans-IO `RolloutController`'s; this module
feeds it measurements on a timer and carries out what it decides: switching the
route, draining and unloading the version that lost, persisting and auditing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from surge.config import Config
from surge.core.clock import monotonic
from surge.core.errors import SurgeError
from surge.core.periodic import Periodic
from surge.routing.rollout import (
    Advance,
    Decision,
    Hold,
    Promote,
    Rollback,
    RolloutController,
    RolloutPolicy,
    Snapshot,
)
from surge.serving.deployment import Deployment
from surge.serving.endpoint import Endpoint
from surge.serving.factory import DeploymentFactory, check_compatible
from surge.serving.lifecycle import VersionLifecycle
from surge.serving.rollout_status import describe_route, version_ref
from surge.store.registry import RegistryStore

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
        clock: Callable[[], float] = monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.endpoints = endpoints
        self.factory = factory
        self.store = store
        self.clock = clock
        self.wall_clock = wall_clock
        self.controllers: dict[str, RolloutController] = {}
        self.waiting_for: dict[str, str] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self.versions = VersionLifecycle(factory, store, config.server.shutdown_grace_s, wall_clock)
        self._ticker: Periodic | None = None

    # -- start-up: the registry says what serves --------------------------------------

    async def restore(self, name: str, doc: dict[str, Any], stable: Deployment) -> None:
        """Bring back a rollout the registry recorded for `name` (its stable already runs)."""
        candidate_ref = doc.get("candidate")
        if not candidate_ref:
            return
        endpoint = self.endpoints[name]
        mode = doc["mode"]
        candidate = await self.versions.load(
            name, candidate_ref, shadow=mode == "shadow", actor="restart"
        )
        check_compatible(stable, candidate)
        percent = float(doc.get("percent", 0.0))
        saved = doc.get("rollout")
        if saved and mode in ("canary", "shadow"):
            # The step resumes where it was; its measurement window restarts with the
            # process, since what was measured before the restart was held in memory.
            controller = RolloutController.from_dict(policy_of(self.config, name), saved)
            controller.step_started_at = self.clock()
            self.controllers[name] = controller
            percent = controller.percent
        endpoint.ab_key = doc.get("ab_key") or endpoint.ab_key
        endpoint.set_route(mode, candidate, percent)
        log.info(
            "%s: resumed %s of %s at %.1f %%",
            name,
            mode,
            candidate.spec.version.ref,
            endpoint.percent,
        )

    def config_ref(self, name: str) -> dict[str, str]:
        """The version the config file names for `name`."""
        return {"model": self.config.model_of(name), "version": self.config.endpoints[name].version}

    async def persist_configured(self, name: str, previous: dict[str, Any] | None) -> None:
        """Record that `name` serves what the config names (first start, or a config change)."""
        ref = self.config_ref(name)
        reason = f"serving {ref['model']}@{ref['version']} from the config"
        if previous is not None:
            was = previous.get("stable", {})
            reason += f" (the registry had {was.get('model')}@{was.get('version')}"
            if previous.get("candidate"):
                reason += f" and a {previous.get('mode')} of {previous['candidate']}"
            reason += "; the config changed since)"
        await self._persist(name, "config", "configure", reason)

    async def abandon(self, name: str, reason: str) -> None:
        """A recorded rollout that cannot resume: serve stable only, and say so."""
        self.controllers.pop(name, None)
        await self._persist(name, "restart", "rollback", reason)

    def doc(self, name: str) -> dict[str, Any]:
        """The endpoint's route as the registry stores it."""
        endpoint = self.endpoints[name]
        controller = self.controllers.get(name)
        return {
            "stable": version_ref(endpoint.stable),
            "candidate": version_ref(endpoint.candidate) if endpoint.candidate else None,
            "mode": endpoint.mode,
            "percent": endpoint.percent,
            "ab_key": endpoint.ab_key,
            "rollout": controller.to_dict() if controller else None,
            "config_version": self.config_ref(name),
        }

    def start(self) -> None:
        interval = min(
            (e.rollout.evaluate_interval_s for e in self.config.endpoints.values()), default=1.0
        )
        self._ticker = Periodic("rollout evaluation", interval, self._evaluate_all, logger=log)
        self._ticker.start()

    async def stop(self) -> None:
        if self._ticker is not None:
            await self._ticker.stop()
        await self.versions.wait_retired()

    # -- operations -------------------------------------------------------------------

    def _endpoint(self, name: str) -> Endpoint:
        endpoint = self.endpoints.get(name)
        if endpoint is None:
            known = ", ".join(sorted(self.endpoints)) or "none"
            raise SurgeError(
                "endpoint_not_found", f"unknown endpoint {name!r}; known: {known}", 404
            )
        return endpoint

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

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
        if self.config.server.workers > 1:
            raise SurgeError(
                "unsupported",
                "rollouts change one process's routes; with server.workers > 1 the other "
                "workers would not follow yet. Run rollouts with workers: 1",
                409,
            )
        if mode not in DEPLOY_MODES:
            raise SurgeError(
                "invalid_input", f"mode must be one of {', '.join(DEPLOY_MODES)}, got {mode!r}", 400
            )
        if percent is not None and not 0 < percent <= 100:
            raise SurgeError("invalid_input", f"percent must be in (0, 100], got {percent}", 400)
        async with self._lock(name):
            if endpoint.candidate is not None:
                raise SurgeError(
                    "rollout_in_progress",
                    f"{name} is already running a {endpoint.mode} of "
                    f"{endpoint.candidate.spec.version.ref}; promote or roll it back first",
                    409,
                )
            if version == endpoint.stable.version:
                # Versions are addressed by number alone (/v2/models/{m}/versions/{v}).
                raise SurgeError(
                    "already_serving",
                    f"{name} already serves version {version!r} "
                    f"({endpoint.stable.spec.version.ref}); deploy another version number",
                    409,
                )
            # Built before the candidate loads: a policy that cannot be built refuses the
            # deploy with nothing loaded to clean up.
            policy = policy_of(self.config, name) if mode in ("canary", "shadow") else None
            candidate = await self.versions.load(
                name, {"model": model, "version": version}, shadow=mode == "shadow", actor=actor
            )
            try:
                check_compatible(endpoint.stable, candidate)
            except SurgeError:
                await candidate.stop()
                raise
            now = self.clock()
            if mode == "swap":
                self.versions.retire(endpoint.swap_stable(candidate))
                reason = f"hot swap to {model}@{version}"
            elif mode == "ab":
                share = 50.0 if percent is None else percent
                endpoint.ab_key = ab_key or self.config.endpoints[name].ab_key
                endpoint.set_route("ab", candidate, share)
                reason = f"sticky A/B on {endpoint.ab_key}: {share:g} % to v{version}"
            else:
                assert policy is not None
                controller = RolloutController(policy, stage=mode, step=0, step_started_at=now)
                if mode == "canary" and percent is not None:
                    # --canary 5%: start at the first configured step at or above it.
                    controller.step = next(
                        i for i, p in enumerate(policy.steps_percent) if p >= percent
                    )
                self.controllers[name] = controller
                endpoint.set_route(mode, candidate, controller.percent)
                self._reset_windows(endpoint)
                reason = (
                    f"canary of v{version} at {controller.percent:g} %"
                    if mode == "canary"
                    else f"shadowing v{version}"
                )
            await self._persist(name, actor, "deploy", reason)
            return self.status(name)

    async def promote(self, name: str, *, actor: str, reason: str = "operator") -> dict[str, Any]:
        return await self._operator(name, "promote", actor, reason)

    async def rollback(self, name: str, *, actor: str, reason: str = "operator") -> dict[str, Any]:
        return await self._operator(name, "rollback", actor, reason)

    async def _operator(self, name: str, event: str, actor: str, reason: str) -> dict[str, Any]:
        endpoint = self._endpoint(name)
        async with self._lock(name):
            if endpoint.candidate is None:
                raise SurgeError("no_rollout", f"{name} has no candidate to {event}", 409)
            controller = self.controllers.get(name)
            if event == "promote":
                if controller is not None:
                    controller.promote(self.clock(), reason)
                await self._finish_promotion(name, actor, f"promoted by {actor}: {reason}")
            else:
                if controller is not None:
                    controller.rollback(self.clock(), reason)
                await self._finish_rollback(name, actor, f"rolled back by {actor}: {reason}")
        return self.status(name)

    def status(self, name: str) -> dict[str, Any]:
        endpoint = self._endpoint(name)
        return describe_route(
            endpoint,
            self.controllers.get(name),
            waiting_for=self.waiting_for.get(name, "the first evaluation"),
            ab_key=endpoint.ab_key,
            now=self.clock(),
        )

    async def history(
        self, name: str | None = None, limit: int = 100, action: str | None = None
    ) -> list[dict[str, Any]]:
        if name is not None:
            self._endpoint(name)
        entries = await asyncio.to_thread(self.store.audit, name, limit, action)
        return [e.to_dict() for e in entries]

    # -- the controller loop ---------------------------------------------------------------

    async def _evaluate_all(self) -> None:
        for name in list(self.controllers):
            if self._lock(name).locked():
                continue  # an operator's change is under way; judge again next tick
            try:
                async with self._lock(name):
                    await self.evaluate(name)
            except Exception:  # one endpoint's failure must not skip the others; logged
                log.exception("rollout evaluation of %s failed", name)

    async def evaluate(self, name: str) -> Decision | None:
        """One controller step for `name` (the timer calls it; tests may too)."""
        controller = self.controllers.get(name)
        endpoint = self.endpoints[name]
        if controller is None or endpoint.candidate is None:
            return None
        stable = endpoint.stats[endpoint.stable.version]
        candidate = endpoint.stats[endpoint.candidate.version]
        snapshot = Snapshot(
            stable=stable.window(),
            candidate=candidate.window(),
            shadow_compared=candidate.window_compared,
            shadow_agreement=candidate.shadow_agreement,
        )
        decision = controller.evaluate(self.clock(), snapshot)
        if isinstance(decision, Hold):
            self.waiting_for[name] = decision.waiting_for
        elif isinstance(decision, Advance):
            endpoint.set_route("canary", endpoint.candidate, decision.percent)
            self._reset_windows(endpoint)
            await self._persist(name, "controller", "advance", decision.reason)
        elif isinstance(decision, Promote):
            await self._finish_promotion(name, "controller", decision.reason)
        elif isinstance(decision, Rollback):
            await self._finish_rollback(name, "controller", decision.reason)
        return decision

    # -- carrying out decisions --------------------------------------------------------------

    async def _finish_promotion(self, name: str, actor: str, reason: str) -> None:
        endpoint = self.endpoints[name]
        candidate = endpoint.candidate
        assert candidate is not None
        if endpoint.mode == "shadow":
            # The shadow copy runs at background priority with its own metrics; the
            # version that takes live traffic is loaded afresh at live priority.
            live = await self.versions.load(name, version_ref(candidate), shadow=False, actor=actor)
            endpoint.set_route("single", None, 0.0)
            self.versions.retire(candidate)
            candidate = live
        self.versions.retire(endpoint.swap_stable(candidate))
        self.controllers.pop(name, None)
        self.waiting_for.pop(name, None)
        await self._persist(name, actor, "promote", reason)

    async def _finish_rollback(self, name: str, actor: str, reason: str) -> None:
        endpoint = self.endpoints[name]
        candidate = endpoint.candidate
        assert candidate is not None
        endpoint.set_route("single", None, 0.0)
        self.versions.retire(candidate)
        self.controllers.pop(name, None)
        self.waiting_for.pop(name, None)
        log.warning("%s: rolled back %s: %s", name, candidate.spec.version.ref, reason)
        await self._persist(name, actor, "rollback", reason)

    def _reset_windows(self, endpoint: Endpoint) -> None:
        for deployment in endpoint.deployments:
            endpoint.stats[deployment.version].reset_window()

    async def _persist(self, name: str, actor: str, action: str, reason: str) -> None:
        """The route as it is now, and an audit entry with what it was, in one transaction."""
        after = self.doc(name)
        await asyncio.to_thread(
            self.store.apply_change,
            name,
            after,
            actor=actor,
            action=action,
            reason=reason,
            now=self.wall_clock(),
        )
        log.info("%s: %s by %s: %s", name, action, actor, reason)
