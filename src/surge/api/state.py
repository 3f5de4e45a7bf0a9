"""The server's state, owned by the lifespan and handed to handlers via `app.state.surge`."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from surge.config import Config, cpu_count
from surge.core.errors import SurgeError
from surge.observe.metrics import Metrics
from surge.repository import ModelRepository
from surge.runtimes.base import RuntimeSettings
from surge.runtimes.registry import runtime_class
from surge.serving.batcher import BatchingPolicy
from surge.serving.cores import plan_cores
from surge.serving.deployment import Deployment, DeploymentSpec

log = logging.getLogger("surge.server")


@dataclass
class ServerState:
    config: Config
    metrics: Metrics = field(default_factory=Metrics)
    deployments: dict[str, Deployment] = field(default_factory=dict)
    draining: bool = False

    @property
    def ready(self) -> bool:
        return not self.draining and all(d.accepting for d in self.deployments.values())

    def deployment(self, endpoint: str, version: str | None = None) -> Deployment:
        found = self.deployments.get(endpoint)
        if found is None:
            known = ", ".join(sorted(self.deployments)) or "none"
            raise SurgeError(
                "model_not_found", f"unknown model {endpoint!r}; serving: {known}", 404
            )
        if version and version != found.spec.version.version:
            raise SurgeError(
                "version_not_found",
                f"model {endpoint!r} has no version {version!r} serving "
                f"(serving version {found.spec.version.version!r})",
                404,
            )
        return found

    def count_answer(self, endpoint: str | None, status: int) -> None:
        deployment = self.deployments.get(endpoint) if endpoint else None
        if deployment is not None:
            deployment.metrics.count_response(status)
        else:
            self.metrics.count_unrouted(status)

    async def start(self) -> None:
        config = self.config
        repository = ModelRepository(config.model_repository)
        plan, lines = plan_cores(config, cpu_count())
        for line in lines:
            log.info(line)
        for name, endpoint in config.endpoints.items():
            version = repository.version(config.model_of(name), endpoint.version)
            share = plan[name]
            spec = DeploymentSpec(
                endpoint=name,
                version=version,
                runtime_cls=runtime_class(version.manifest.runtime),
                settings=RuntimeSettings(
                    threads=share.threads_per_replica,
                    device=endpoint.device,
                    quantization=endpoint.quantization,
                    max_batch_size=endpoint.batching.max_batch_size,
                ),
                replicas=share.replicas,
                batching=BatchingPolicy(
                    endpoint.batching.max_batch_size,
                    endpoint.batching.max_queue_delay_ms / 1000.0,
                    tuple(endpoint.batching.preferred_batch_sizes),
                ),
                max_queue=endpoint.max_queue,
                timeout_s=endpoint.timeout_ms / 1000.0,
                warmup_batches=endpoint.warmup_batches,
                compute_nice=config.server.compute_nice,
            )
            self.deployments[name] = Deployment(spec, self.metrics.for_endpoint(name))
        # One after another: deployments warming at the same time would compete for the
        # cores and seed each other's latency models with contended timings.
        for deployment in self.deployments.values():
            await self._start_one(deployment)

    async def _start_one(self, deployment: Deployment) -> None:
        await deployment.start()
        deployment.metrics.ready = True
        estimate = deployment.latency.estimate_s(deployment.spec.batching.max_batch_size)
        log.info(
            "%s ready: %s (%s), warm batch of %d rows takes %.1f ms",
            deployment.name, deployment.spec.version.ref, deployment.spec.version.manifest.runtime,
            deployment.spec.batching.max_batch_size, estimate * 1000,
        )  # fmt: skip

    async def shutdown(self) -> None:
        self.draining = True
        grace = self.config.server.shutdown_grace_s
        await asyncio.gather(*(d.drain(grace) for d in self.deployments.values()))
        for deployment in self.deployments.values():
            deployment.metrics.ready = False
            await deployment.stop()

    def begin_draining(self) -> None:
        """SIGTERM: refuse new work with 503 while queued work finishes."""
        self.draining = True
        for deployment in self.deployments.values():
            if deployment.state == "ready":
                deployment.state = "draining"
