"""The server's state, owned by the lifespan and handed to handlers via `app.state.surge`."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from surge.cache.keys import endpoint_prefix
from surge.cache.redis_cache import RedisCache
from surge.cluster.plane import ControlPlane
from surge.config import Config
from surge.config_cache import CacheConfig
from surge.core.clock import monotonic
from surge.core.context import RequestContext
from surge.core.errors import SurgeError
from surge.core.tensors import Tensors
from surge.llm.gateway import ChatGateway
from surge.observe.cache_metrics import CacheCollector
from surge.observe.cluster_metrics import ClusterCollector
from surge.observe.metrics import Metrics
from surge.observe.observer import Observer
from surge.observe.rollout_metrics import RolloutCollector
from surge.observe.route_metrics import ModeCollector, RouteCollector
from surge.repository import ModelRepository
from surge.security.admin_keys import AdminAuth
from surge.security.auth import Authenticator
from surge.security.key_admin import KeyAdmin
from surge.security.keys import KEYS_KEY, KeyRing
from surge.security.quotas import Quotas
from surge.serving.autoscale_driver import AutoscaleDriver
from surge.serving.bandit_route import BanditRoute
from surge.serving.cores import cpu_count, plan_cores
from surge.serving.deployment import Deployment
from surge.serving.endpoint import Endpoint
from surge.serving.factory import DeploymentFactory
from surge.serving.mode_driver import MODE_KEY, ModeDriver
from surge.serving.response_cache import EndpointCache
from surge.serving.review_pruner import ReviewPruner
from surge.serving.rollout_leader import RolloutLeader, local_windows
from surge.serving.rollouts import Rollouts
from surge.serving.routes import Route, build_routes
from surge.serving.target import Hints, Target
from surge.store.background_writer import BackgroundWriter
from surge.store.registry import RegistryStore, open_store
from surge.store.review_writer import DRAIN_S as REVIEW_DRAIN_S
from surge.store.review_writer import PendingReview, pending_reviews, review_writer

log = logging.getLogger("surge.server")
EMBED_TIMEOUT_S = 1.0  # a semantic cache's embedding of a prompt: a miss past it


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
    plane: ControlPlane | None = None
    leader: RolloutLeader | None = None
    reviews: BackgroundWriter[PendingReview] | None = None
    auth: Authenticator | None = None  # who is calling (client keys)
    keys: KeyAdmin | None = None  # making and following the client keys
    quotas: Quotas | None = None  # rate limits and budgets
    review_pruner: ReviewPruner | None = None  # review queues' retention and caps
    autoscaler: AutoscaleDriver | None = None  # replica counts that follow the load
    chat: ChatGateway | None = None  # language models behind /v1/chat/completions
    cache_redis: RedisCache | None = None  # the response caches' shared level

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
        self.store = store = await asyncio.to_thread(
            open_store, config.registry_url, config.registry_namespace
        )
        self.reviews = review_writer(store)
        self.reviews.start()
        self.metrics.registry.register(self.reviews)
        self.rollouts = rollouts = Rollouts(config, self.endpoints, factory, store)
        self.plane = plane = ControlPlane(config, store, self._follow, self._published_state)
        rollouts.require_healthy = plane.require_healthy
        rollouts.announce = plane.announce
        self.keys = KeyAdmin(store, KeyRing(config.auth.verify_concurrency), plane.announce)
        await self.keys.reload()
        self.auth = Authenticator(config, self.keys.ring)
        self.quotas = quotas = Quotas(config)
        await quotas.start()
        self.metrics.registry.register(quotas)
        if self.observer.receipts is not None:
            self.observer.receipts.listeners.append(quotas.record_spend)
        self.metrics.registry.register(RolloutCollector(self.endpoints, rollouts))
        self.metrics.registry.register(ClusterCollector(plane, rollouts))
        docs = await asyncio.to_thread(store.load_routes)
        # One after another: deployments warming at the same time would compete for the
        # cores and seed each other's latency models with contended timings.
        for name in config.endpoints:
            endpoint = await rollouts.open_endpoint(name, docs.get(name))
            _log_ready(endpoint.stable)
        await self._open_caches()
        self.routes = build_routes(
            config.routes, self.endpoints, self._queue_for_review, store, plane.pending.remember
        )
        self.review_pruner = ReviewPruner.for_routes(
            config.routes, store, leading=lambda: plane.lease.leading
        )
        for route in self.bandits:
            await route.sync()  # start from what every process has learned so far
            route.start()
        self.metrics.registry.register(RouteCollector(self.routes))
        self.chat = ChatGateway(config.llm)
        await self.chat.start(
            store, plane.pending.remember, self._queue_chat_for_review, self.cache_redis,
            self._embedder,
        )  # fmt: skip
        self.metrics.registry.register(self.chat.metrics)
        self.modes = modes = ModeDriver(
            config.modes, self.endpoints, self.routes, self.metrics, store
        )
        modes.process_id = plane.process_id
        modes.require_healthy = plane.require_healthy
        modes.announce = plane.announce
        self.metrics.registry.register(ModeCollector(modes))
        # Serve what the registry says now (a rollout under way, a forced mode) before
        # answering anyone; from here on the follower keeps it so.
        await plane.follower.catch_up()
        self.observer.register(self.endpoints)
        await self.observer.start()
        await plane.start()
        self.leader = RolloutLeader(
            rollouts,
            plane.process_id,
            plane.peers,
            lambda: plane.lease.leading,
            lambda: plane.lease.fence,
        )
        self.leader.start()
        modes.start()
        self.keys.start()
        self.review_pruner.start()
        scaled = {n: e.autoscale for n, e in config.endpoints.items() if e.autoscale is not None}
        self.autoscaler = AutoscaleDriver(
            self.endpoints, scaled, store, f"autoscaler@{plane.process_id}"
        )
        self.metrics.registry.register(self.autoscaler)
        self.autoscaler.start()

    async def _follow(self, key: str, doc: dict[str, Any], revision: int) -> bool:
        """The follower's hook: a route doc changed in the registry."""
        if key == MODE_KEY:
            assert self.modes is not None
            return await self.modes.follow(key, doc, revision)
        if key == KEYS_KEY:
            assert self.keys is not None
            return await self.keys.follow(key, doc, revision)
        if key in self.endpoints:
            assert self.rollouts is not None
            return await self.rollouts.follow(key, doc, revision)
        if key.startswith("*cache*:"):  # another process purged an endpoint's cache
            endpoint = self.endpoints.get(key.partition(":")[2])
            if endpoint is not None and endpoint.cache is not None:
                endpoint.cache.memory.purge(endpoint_prefix(endpoint.name))
            return True
        return True  # a key of another config (another endpoint set) or of a newer release

    def _published_state(self) -> dict[str, Any]:
        """What this process's heartbeat says: the revisions it serves, what it could
        not load, its rollout windows (the leader merges them), and its mode."""
        rollouts, plane = self.rollouts, self.plane
        assert rollouts is not None and plane is not None
        reconciler = rollouts.reconciler
        windows = {}
        for name in self.endpoints:
            published = local_windows(rollouts, name)
            if published is not None:
                windows[name] = published
        return {
            "routes": dict(reconciler.revisions),
            "failures": {
                name: {"revision": f.revision, "message": f.message}
                for name, f in reconciler.failures.items()
            },
            "windows": windows,
            "leader": plane.lease.leading,
            "waiting_for": dict(rollouts.waiting) if plane.lease.leading else {},
            "mode": self.modes.mode if self.modes else None,
            "forced": bool(self.modes and self.modes.controller.forced),
            "draining": self.draining,
            "links": plane.links(),
        }

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
        """Hand each row the cascade's last tier was unsure of to the review writer. The
        answer is ready: it never waits on the database (a full queue drops and counts)."""
        writer = self.reviews
        assert writer is not None
        now = time.time()
        for item in pending_reviews(
            route, ctx.request_id, rows, inputs, answer, confidence, served_by, now
        ):
            writer.offer(item)

    def _queue_chat_for_review(
        self, route: str, ctx: RequestContext, prompt: str, answer: str, confidence: float,
        served_by: str,
    ) -> None:  # fmt: skip
        """A chat cascade's doubtful last answer, handed to the review writer."""
        writer = self.reviews
        assert writer is not None
        writer.offer(
            PendingReview(
                route,
                ctx.request_id,
                {"prompt": prompt},
                {"text": answer},
                confidence,
                served_by,
                time.time(),
            )
        )

    def _embedder(self, name: str) -> Callable[[list[str]], Awaitable[np.ndarray]]:
        """Texts to unit vectors by the embeddings endpoint `name` (a semantic cache's)."""
        endpoint = self.endpoint(name)
        texts_input = [t.name for t in endpoint.interface().replicas[0].runtime.inputs]
        if len(texts_input) != 1:
            raise ValueError(f"{name!r} must take one BYTES input to embed prompts")

        async def embed(texts: list[str]) -> np.ndarray:
            now = monotonic()
            ctx = RequestContext("semantic-cache", name, now + EMBED_TIMEOUT_S, now)
            tensors = {texts_input[0]: np.array([t.encode() for t in texts], dtype=object)}
            served = await endpoint.infer(ctx, tensors, Hints())
            return served.outputs["embedding"]

        return embed

    @property
    def feedback_routes(self) -> dict[str, Any]:
        """Every route that may await feedback: bandits over endpoints and over chat models."""
        if self.chat is None or not self.chat.routes:
            return self.routes
        return {**self.routes, **self.chat.routes}

    async def _open_caches(self) -> None:
        """Each endpoint's response cache, with one shared Redis level for all of them."""
        cached = {n: e.cache for n, e in self.config.endpoints.items() if e.cache is not None}
        llm = self.config.llm
        chat_redis = any(
            c.cache is not None and c.cache.redis
            for c in [*llm.models.values(), *llm.routes.values()]
        )
        url = self.config.redis_url
        if url and (chat_redis or any(c.redis for c in cached.values())):
            timeout_s = min([c.redis_timeout_ms for c in cached.values()] or [50.0]) / 1000
            stale_s = max([c.stale_in_emergency_s for c in cached.values()] + [0.0])
            self.cache_redis = RedisCache(url, self.config.registry_namespace,
                                          timeout_s=timeout_s, stale_window_s=stale_s)  # fmt: skip
            await self.cache_redis.start()
        for name, cfg in cached.items():

            def stale_allowed_s(cfg: CacheConfig = cfg) -> float:
                emergency = self.modes is not None and self.modes.mode == "emergency"
                return cfg.stale_in_emergency_s if emergency else 0.0

            self.endpoints[name].cache = EndpointCache(name, cfg, self.cache_redis, stale_allowed_s)
        self.metrics.registry.register(CacheCollector(self.endpoints))

    def _all_deployments(self) -> list[Deployment]:
        return [d for e in self.endpoints.values() for d in e.deployments]

    async def shutdown(self) -> None:
        self.draining = True
        grace = self.config.server.shutdown_grace_s
        await asyncio.gather(*(d.drain(grace) for d in self._all_deployments()))
        if self.leader is not None:
            await self.leader.stop()
        if self.modes is not None:
            await self.modes.stop()
        if self.keys is not None:
            await self.keys.stop()
        if self.quotas is not None:
            await self.quotas.stop()
        if self.review_pruner is not None:
            await self.review_pruner.stop()
        if self.autoscaler is not None:
            await self.autoscaler.stop()
        if self.plane is not None:
            await self.plane.stop()
        if self.rollouts is not None:
            await self.rollouts.stop()
        for route in self.bandits:
            await route.stop()
        if self.chat is not None:
            await self.chat.stop()
        if self.cache_redis is not None:
            await self.cache_redis.stop()
        for endpoint in self.endpoints.values():
            await endpoint.close()
        for deployment in self._all_deployments():
            deployment.metrics.ready = False
            await deployment.stop()
        await self.observer.stop()
        if self.reviews is not None:
            await self.reviews.close(REVIEW_DRAIN_S)
        if self.store is not None:
            self.store.close()

    def begin_draining(self) -> None:
        """SIGTERM: refuse new work with 503 while queued work finishes."""
        self.draining = True
        for deployment in self._all_deployments():
            if deployment.state == "ready":
                deployment.state = "draining"


def _log_ready(deployment: Deployment) -> None:
    estimate = deployment.latency.estimate_s(deployment.spec.batching.max_batch_size)
    log.info(
        "%s ready: %s (%s), warm batch of %d rows takes %.1f ms",
        deployment.name, deployment.spec.version.ref, deployment.spec.version.manifest.runtime,
        deployment.spec.batching.max_batch_size, estimate * 1000,
    )  # fmt: skip
