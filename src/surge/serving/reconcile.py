"""Making this process serve what the registry says an endpoint's route is.

The registry holds each endpoint's route as one doc with a revision; every process
follows it (`cluster/follower.py` says when it changed). Applying a doc loads and warms
whatever versions it names that this process lacks *before* switching, then switches
the whole route in one step, so a process serves either the old revision or the new one,
never half of one. A version that cannot load leaves the old route serving and is
reported (`failures`): the rollout controller sees it in this process's heartbeat and
waits or rolls back.

The doc (`Rollouts.doc` writes it):
    {"stable": {"model", "version"}, "candidate": {...} | None,
     "mode": "single" | "canary" | "ab" | "shadow", "percent": float, "ab_key": str,
     "rollout": {controller state} | None, "config_version": {"model", "version"}}
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from surge.core.errors import SurgeError
from surge.serving.deployment import Deployment
from surge.serving.endpoint import MODES, Endpoint
from surge.serving.factory import check_compatible
from surge.serving.lifecycle import VersionLifecycle
from surge.serving.rollout_status import version_ref

log = logging.getLogger("surge.routes")


@dataclass(frozen=True)
class LoadFailure:
    revision: int | None
    message: str
    doc: dict[str, Any]  # the route that could not be served


def _same(deployment: Deployment | None, ref: dict[str, str] | None, shadow: bool) -> bool:
    if deployment is None or ref is None:
        return deployment is None and ref is None
    return version_ref(deployment) == ref and deployment.shadow == shadow


def check_doc(doc: dict[str, Any]) -> None:
    """Refuse a doc this code cannot serve (written by hand, or by a newer release)."""
    mode = doc.get("mode", "single")
    if mode not in MODES:
        raise SurgeError("bad_route", f"route mode {mode!r} is not one of {MODES}", 409)
    if (mode == "single") != (doc.get("candidate") is None):
        raise SurgeError("bad_route", f"mode {mode!r} does not match the candidate", 409)
    for key in ("stable", "candidate"):
        ref = doc.get(key)
        if ref is not None and not (
            isinstance(ref, dict)
            and isinstance(ref.get("model"), str)
            and isinstance(ref.get("version"), str)
        ):
            raise SurgeError("bad_route", f"route {key} {ref!r} is not a model version", 409)


class RouteReconciler:
    def __init__(
        self,
        endpoints: dict[str, Endpoint],
        versions: VersionLifecycle,
        on_switch: Callable[[str], None] | None = None,
    ) -> None:
        self.endpoints = endpoints
        self.versions = versions
        self.on_switch = on_switch  # called after a route switched (windows restart)
        self.docs: dict[str, dict[str, Any]] = {}  # the doc each endpoint serves
        self.revisions: dict[str, int] = {}  # the registry revision of that doc
        self.failures: dict[str, LoadFailure] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def lock(self, name: str) -> asyncio.Lock:
        """Held while an endpoint's route changes: an operator's change and the
        follower's catching up take turns."""
        return self._locks.setdefault(name, asyncio.Lock())

    def serves(self, name: str, revision: int) -> bool:
        return self.revisions.get(name, -1) >= revision

    async def apply(
        self,
        name: str,
        doc: dict[str, Any],
        revision: int | None,
        *,
        preloaded: Deployment | None = None,
        actor: str = "follower",
    ) -> bool:
        """Serve `doc` (the caller holds `lock(name)`). `revision` None: a doc this process
        wrote itself, whose revision the follower records when it reads it back. An older
        revision than the one served is ignored. False when a version could not load."""
        if revision is not None and revision < self.revisions.get(name, -1):
            return True
        endpoint = self.endpoints[name]
        try:
            check_doc(doc)
            stable, candidate = await self._deployments(name, doc, preloaded, actor)
        except SurgeError as error:
            self.failures[name] = LoadFailure(revision, error.message, doc)
            log.error("%s: cannot serve route revision %s: %s", name, revision, error.message)
            return False
        mode = doc.get("mode", "single")
        percent = float(doc.get("percent") or 0.0)
        changed = (
            stable is not endpoint.stable
            or candidate is not endpoint.candidate
            or mode != endpoint.mode
            or percent != endpoint.percent
        )
        before = set(endpoint.deployments)
        endpoint.ab_key = doc.get("ab_key") or endpoint.ab_key
        endpoint.switch(stable, mode, candidate, percent)
        for deployment in before - {stable, candidate}:
            self.versions.retire(deployment)
        self.docs[name] = doc
        if revision is not None:
            self.revisions[name] = revision
        self.failures.pop(name, None)
        if changed:
            for deployment in endpoint.deployments:
                endpoint.stats[deployment.version].reset_window()
            log.info("%s: serving route revision %s (%s)", name, revision, describe(doc))
            if self.on_switch is not None:
                self.on_switch(name)
        return True

    async def _deployments(
        self, name: str, doc: dict[str, Any], preloaded: Deployment | None, actor: str
    ) -> tuple[Deployment, Deployment | None]:
        """The doc's stable and candidate: the running ones where they match, else loaded
        and warmed now. What this call loaded is stopped again if the rest fails."""
        endpoint = self.endpoints[name]
        have = [*endpoint.deployments, *([preloaded] if preloaded is not None else [])]
        shadow = doc.get("mode") == "shadow"
        loaded: list[Deployment] = []

        async def find_or_load(ref: dict[str, str], as_shadow: bool) -> Deployment:
            for deployment in have:
                if _same(deployment, ref, as_shadow) and deployment.state == "ready":
                    return deployment
            deployment = await self.versions.load(name, ref, shadow=as_shadow, actor=actor)
            loaded.append(deployment)
            return deployment

        try:
            stable = await find_or_load(doc["stable"], False)
            candidate = None
            if doc.get("candidate") is not None:
                candidate = await find_or_load(doc["candidate"], shadow)
                check_compatible(stable, candidate)
        except BaseException:
            for deployment in loaded:
                await deployment.stop()
            raise
        return stable, candidate


def describe(doc: dict[str, Any]) -> str:
    stable = doc.get("stable") or {}
    text = f"stable {stable.get('model')}@{stable.get('version')}"
    candidate = doc.get("candidate")
    if candidate:
        text += (
            f", {doc.get('mode')} of {candidate.get('model')}@{candidate.get('version')}"
            f" at {float(doc.get('percent') or 0):g} %"
        )
    return text
