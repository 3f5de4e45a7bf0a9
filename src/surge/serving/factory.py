"""Builds a deployment of any model version for an endpoint, from the endpoint's config.

The server builds its first deployments here at start-up, and rollouts build the
candidate versions they load beside the live ones.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, replace

from surge.config import Config
from surge.core.errors import SurgeError
from surge.observe.batch_watch import BatchWatch
from surge.observe.metrics import EndpointMetrics, Metrics
from surge.repository import ModelRepository, ModelVersion
from surge.runtimes.base import RuntimeSettings
from surge.runtimes.registry import runtime_class
from surge.serving.batcher import BatchingPolicy
from surge.serving.cores import CoreShare
from surge.serving.deployment import Deployment, DeploymentSpec

# Shadow compute yields the CPU to live compute (a higher nice value), so a shadow
# candidate slows live traffic as little as the OS allows on shared cores.
SHADOW_EXTRA_NICE = 5


def version_checksum(version: ModelVersion) -> str:
    """One digest for a version: its manifest's per-file sha256s (which the files are
    verified against at load), so the registry pins every file of the version."""
    doc = {"runtime": version.manifest.runtime, "files": version.manifest.checksums}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


@dataclass
class DeploymentFactory:
    config: Config
    repository: ModelRepository
    plan: dict[str, CoreShare]
    metrics: Metrics
    # (endpoint, version, shadow) -> the observability hooks of its batches, if any
    watch: Callable[[str, str, bool], BatchWatch | None] | None = None

    def version(self, model: str, version: str) -> ModelVersion:
        """The version, its files checked against their sha256 and its runtime's module
        imported. Blocking work (reading, hashing, importing) all gathers here for the
        caller to run in a worker thread: the loop then only builds and starts the
        deployment, whose own check of unchanged files is a stat each."""
        found = self.repository.version(model, version)
        found.verify_checksums()
        runtime_class(found.manifest.runtime)
        return found

    def build(self, endpoint: str, version: ModelVersion, *, shadow: bool = False) -> Deployment:
        cfg = self.config.endpoints[endpoint]
        share = self.plan[endpoint]
        nice = self.config.server.compute_nice
        spec = DeploymentSpec(
            endpoint=endpoint,
            version=version,
            runtime_cls=runtime_class(version.manifest.runtime),
            settings=RuntimeSettings(
                threads=share.threads_per_replica,
                device=cfg.device,
                quantization=cfg.quantization,
                max_batch_size=cfg.batching.max_batch_size,
            ),
            replicas=share.replicas,
            batching=BatchingPolicy(
                cfg.batching.max_batch_size,
                cfg.batching.max_queue_delay_ms / 1000.0,
                tuple(cfg.batching.preferred_batch_sizes),
            ),
            max_queue=cfg.max_queue,
            timeout_s=cfg.timeout_ms / 1000.0,
            warmup_batches=cfg.warmup_batches,
            compute_nice=nice,
        )
        watch = self.watch(endpoint, version.version, shadow) if self.watch else None
        if shadow:
            spec = replace(spec, compute_nice=min(19, nice + SHADOW_EXTRA_NICE))
            # Shadow refusals are not the endpoint's refusals: they get metrics of their own.
            return Deployment(spec, EndpointMetrics(f"{endpoint}@shadow"), watch=watch, shadow=True)
        if (ray_placement := cfg.placement.ray) is not None:
            # Imported here: a server with no endpoint on Ray never imports Ray.
            from surge.serving.ray_replica import RayDeployment

            metrics = self.metrics.for_endpoint(endpoint)
            return RayDeployment(spec, metrics, watch=watch, placement=ray_placement)
        return Deployment(spec, self.metrics.for_endpoint(endpoint), watch=watch)


def check_compatible(live: Deployment, candidate: Deployment) -> None:
    """A candidate must take the same inputs and give the same outputs as what serves,
    or clients written against the endpoint would break when traffic moves."""
    live_rt, cand_rt = live.replicas[0].runtime, candidate.replicas[0].runtime
    problems = []
    for what, a, b in (
        ("inputs", live_rt.inputs, cand_rt.inputs),
        ("outputs", live_rt.outputs, cand_rt.outputs),
    ):
        mine = {(t.name, t.datatype) for t in a}
        theirs = {(t.name, t.datatype) for t in b}
        if mine != theirs:
            problems.append(f"{what} {sorted(theirs)} differ from the live {sorted(mine)}")
    if problems:
        raise SurgeError(
            "incompatible_version",
            f"{candidate.spec.version.ref} cannot serve endpoint {live.name!r}: "
            + "; ".join(problems),
            409,
        )
