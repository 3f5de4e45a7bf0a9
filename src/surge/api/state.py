"""The server's state, owned by the lifespan and handed to handlers via `app.state.surge`."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from surge.config import Config
from surge.core.context import RequestContext
from surge.core.errors import SurgeError
from surge.core.tensors import Tensors
from surge.observe.metrics import Metrics
from surge.observe.observer import Observer
from surge.observe.rollout_metrics import RolloutCollector
from surge.observe.route_metrics import ModeCollector, RouteCollector
from surge.repository import ModelRepository
from surge.security.admin_keys import AdminAuth
from surge.serving.bandit_route import BanditRoute
from surge.serving.cores import cpu_count, plan_cores
from surge.serving.deployment import Deployment
from surge.serving.endpoint import Endpoint
from surge.serving.factory import DeploymentFactory
from surge.serving.mode_driver import ModeDriver
from surge.serving.rollouts import Rollouts
from surge.serving.routes import Route, build_routes
from surge.serving.target import Target
from surge.store.registry import RegistryStore, open_store

log = logging.getLogger("surge.server")


@dataclass
class ServerState:
    config: Config
    metrics: Metrics = field(default_factory=Metrics)
    endpoints: dict[str, Endpoint] = field(default_factory=dict)
    draining: bool = False
    store: RegistryStore | None = None
    rollouts: Rollouts | None = None
    routes: dict[str, Route] = field(default_factory=dict)
    modes: ModeDriver | None = None

    def __post_init__(self) -> None:
        self.admin = AdminAuth(self.config.admin.keys)
        self.observer = Observer(self.config, self.metrics, cpu_count())

    @property
    def ready(self) -> bool:
        return not self.draining and all(e.accepting for e in self.endpoints.values())

    def endpoint(self, name: str) -> Endpoint:
        found = self.endpoints.get(name)
        if found is None:
            known = ", ".join(sorted([*self.endpoints, *self.routes])) or "none"
            raise SurgeError("model_not_found", f"unknown model {name!r}; serving: {known}", 404)
        return found

    @property
    def bandits(self) -> list[BanditRoute]:
        return [r for r in self.routes.values() if isinstance(r, BanditRoute)]

    def target(self, name: str) -> Target:
        """What a public name serves: an endpoint, or a route over endpoints."""
        found = self.routes.get(name)
        return found if found is not None else self.endpoint(name)

    def count_answer(self, endpoint: str | None, status: int) -> None:
        if endpoint in self.endpoints or endpoint in self.routes:
            self.metrics.for_endpoint(endpoint).count_response(status)
        else:
            self.metrics.count_unrouted(status)

    async def start(self) -> None:
        config = self.config
        plan, lines = plan_cores(config, cpu_count())
        for line in lines:
            log.info(line)
        factory = DeploymentFactory(
            config,
            ModelRepository(config.model_repository),
            plan,
            self.metrics,
            self.observer.watch_for,
        )
        self.store = await asyncio.to_thread(open_store, config.registry_url)
        docs = await asyncio.to_thread(self.store.load_routes)
        self.rollouts = rollouts = Rollouts(config, self.endpoints, factory, self.store)
        self.metrics.registry.register(RolloutCollector(self.endpoints, rollouts))
        # One after another: deployments warming at the same time would compete for the
        # cores and seed each other's latency models with contended timings.
        for name, endpoint_config in config.endpoints.items():
            doc = _still_current(docs.get(name), rollouts, name)
            ref = doc["stable"] if doc else rollouts.config_ref(name)
            stable = factory.build(name, factory.version(ref["model"], ref["version"]))
            await rollouts.versions.register(stable, "config")
            await self._start_one(stable)
            self.endpoints[name] = Endpoint(
                name,
                stable,
                retry_on_stable=endpoint_config.rollout.retry_on_stable,
                ab_key=endpoint_config.ab_key,
            )
            if doc is None:
                await rollouts.persist_configured(name, docs.get(name))
            else:
                await self._restore(name, doc, stable)
        self.routes = build_routes(
            config.routes, self.endpoints, self._queue_for_review, self.store
        )
        for route in self.bandits:
            await route.sync()  # start from what every process has learned so far
            route.start()
        self.metrics.registry.register(RouteCollector(self.routes))
        self.modes = ModeDriver(config.modes, self.endpoints, self.routes, self.metrics, self.store)
        self.metrics.registry.register(ModeCollector(self.modes))
        self.observer.register(self.endpoints)
        await self.observer.start()
        rollouts.start()
        self.modes.start()

    async def _queue_for_review(
        self,
        route: str,
        ctx: RequestContext,
        rows: np.ndarray,
        inputs: Tensors,
        answer: Tensors,
        confidence: np.ndarray,
        served_by: str,
    ) -> None:
        """Persist each row the cascade's last tier was unsure of as a review item."""
        store = self.store
        assert store is not None
        now = time.time()

        def persist() -> None:  # one hop off the event loop for all of the request's rows
            for i, row in enumerate(rows.tolist()):
                store.add_review(
                    endpoint=route,
                    request_id=f"{ctx.request_id}#{row}" if len(rows) > 1 else ctx.request_id,
                    inputs={k: _jsonable(v[i]) for k, v in inputs.items()},
                    answer={k: _jsonable(v[i]) for k, v in answer.items()},
                    confidence=float(confidence[i]),
                    served_by=served_by,
                    now=now,
                )

        await asyncio.to_thread(persist)

    async def _restore(self, name: str, doc: dict[str, Any], stable: Deployment) -> None:
        assert self.rollouts is not None
        try:
            await self.rollouts.restore(name, doc, stable)
        except SurgeError as exc:
            # The stable version serves; a candidate that cannot come back is rolled back.
            log.error("%s: could not resume the rollout: %s", name, exc.message)
            await self.rollouts.abandon(name, f"could not resume after restart: {exc.message}")

    async def _start_one(self, deployment: Deployment) -> None:
        await deployment.start()
        deployment.metrics.ready = True
        estimate = deployment.latency.estimate_s(deployment.spec.batching.max_batch_size)
        log.info(
            "%s ready: %s (%s), warm batch of %d rows takes %.1f ms",
            deployment.name, deployment.spec.version.ref, deployment.spec.version.manifest.runtime,
            deployment.spec.batching.max_batch_size, estimate * 1000,
        )  # fmt: skip

    def _all_deployments(self) -> list[Deployment]:
        return [d for e in self.endpoints.values() for d in e.deployments]

    async def shutdown(self) -> None:
        self.draining = True
        grace = self.config.server.shutdown_grace_s
        await asyncio.gather(*(d.drain(grace) for d in self._all_deployments()))
        if self.rollouts is not None:
            await self.rollouts.stop()
        if self.modes is not None:
            await self.modes.stop()
        for route in self.bandits:
            await route.stop()
        for endpoint in self.endpoints.values():
            await endpoint.close()
        for deployment in self._all_deployments():
            deployment.metrics.ready = False
            await deployment.stop()
        await self.observer.stop()
        if self.store is not None:
            self.store.close()

    def begin_draining(self) -> None:
        """SIGTERM: refuse new work with 503 while queued work finishes."""
        self.draining = True
        for deployment in self._all_deployments():
            if deployment.state == "ready":
                deployment.state = "draining"


def _jsonable(value: np.ndarray) -> Any:
    if value.dtype == object:
        return [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in value.ravel()]
    return value.tolist()


def _still_current(doc: dict[str, Any] | None, rollouts: Rollouts, name: str) -> dict | None:
    """The registry's route for `name`, unless the config has named another version
    since it was written: a changed config is the operator's newer intent."""
    if doc is None:
        return None
    if doc.get("config_version") != rollouts.config_ref(name):
        return None
    return doc
