"""Replicas as Ray actors, beside the local ones, behind the same batcher.

The gateway keeps admission, deadlines and batching; `RayDeployment` adds actors
(`ray_actor.py`: a `RayReplica` is what the batcher sees of one) to a `Deployment`
and owns their failures: a batch whose actor or node died is queued again for the
next free replica while its requests' deadlines allow (else 503), and the replica is
counted out until a health call to it answers again (Ray restarts the actor up to
`max_restarts`).

Ray is imported here and in `ray_actor.py` only, and these modules only when an
endpoint is placed on Ray.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import asdict
from typing import Any

import ray
import ray.exceptions as rex

from surge.config_placement import RayPlacement
from surge.core.errors import SurgeError
from surge.serving.admission import QueueState
from surge.serving.batcher import QueuedRequest
from surge.serving.deployment import Deployment, Pending
from surge.serving.ray_actor import RayReplica, ReplicaActor, ReplicaLost, connect, wait_healthy

log = logging.getLogger("surge.ray")


class RayDeployment(Deployment):
    """A deployment whose replicas are its local ones plus `placement.replicas` actors."""

    def __init__(self, *args: Any, placement: RayPlacement, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.placement = placement
        self._out: set[RayReplica] = set()
        # Local replicas kept out of the batcher's choice (`serve_on_gateway: false`) unless
        # no Ray replica is ready: then they serve, so the endpoint still answers.
        self._standby: list[Any] = []
        self._fallback = False
        self._probes: set[asyncio.Task[None]] = set()
        self._probing: set[int] = set()  # id() of the actor handles being probed

    @property
    def ray_replicas(self) -> list[RayReplica]:
        return [r for r in self.replicas if isinstance(r, RayReplica)]

    async def start(self) -> None:
        await asyncio.to_thread(connect, self.placement)
        # The actors load while the local replicas do.
        actors = self._create_actors()
        await super().start()
        loop = asyncio.get_running_loop()
        timeout = self.placement.start_timeout_s
        waits = [loop.run_in_executor(r.executor, wait_healthy, r.handle, timeout) for r in actors]
        try:
            await asyncio.gather(*waits)
        except Exception:
            for replica in actors:
                replica.close()
            raise
        for replica in actors:
            replica.ready = True
        self.replicas.extend(actors)
        self._idle.extend(actors)
        if not self.placement.serve_on_gateway:
            self._standby = [r for r in self.replicas if not isinstance(r, RayReplica)]
            self._idle = [r for r in self._idle if r not in self._standby]
        self._wake()
        watch = loop.create_task(self._watch(), name=f"ray-health-{self.name}")
        self._probes.add(watch)
        watch.add_done_callback(self._probes.discard)

    def _create_actors(self) -> list[RayReplica]:
        spec, p = self.spec, self.placement
        top = spec.batching.max_batch_size
        settings = asdict(spec.settings)
        settings["threads"] = p.threads_per_replica or max(1, int(p.num_cpus))
        summarize = self.watch.summarize if self.watch is not None else None
        actor_cls = ray.remote(ReplicaActor)
        options = {
            "num_cpus": p.num_cpus,
            "num_gpus": p.num_gpus,
            "max_restarts": p.max_restarts,
            "max_task_retries": 0,  # the gateway retries, within the requests' deadlines
            "namespace": p.namespace,
        }
        out = []
        for i in range(p.replicas):
            # Named per process: several gateways (or a rollout's candidate) never clash.
            name = f"surge:{self.name}:{self.version}:{os.getpid()}:{id(self):x}:r{i}"
            handle = actor_cls.options(name=name, **options).remote(
                str(spec.version.root),
                spec.version.model,
                spec.version.version,
                settings,
                sorted({1, max(1, top // 4), top}),
                spec.warmup_batches,
            )
            # One slot per batch in flight: each is a replica to the batcher, and all of
            # an actor's slots are counted out and back in together.
            for k in range(p.batches_in_flight):
                slot = f"{self.name}-ray{i}" + (f"/{k}" if k else "")
                out.append(RayReplica(slot, handle, summarize))
        return out

    async def stop(self) -> None:
        for probe in self._probes:
            probe.cancel()
        await super().stop()

    # -- failures ------------------------------------------------------------------

    async def _isolate_failure(self, replica: Any, batch: list[Pending], exc: Exception) -> None:
        if not isinstance(exc, ReplicaLost):
            await super()._isolate_failure(replica, batch, exc)
            return
        log.warning("replica %s counted out: %s", replica.name, exc)
        self._count_out(replica)
        self._retry(batch)

    def _launch(self, replica: Any, batch: list[Pending], now: float) -> None:
        replica = self._least_loaded(replica)
        replica.running = True
        super()._launch(replica, batch, now)
        if replica in self._idle:  # no live request left: handed straight back
            replica.running = False

    def _least_loaded(self, popped: Any) -> Any:
        """The idle replica whose actor runs the fewest batches: the batcher pops the
        last released one, which would leave a free actor waiting behind a busy one's
        second slot (and a restarted actor unused)."""
        running: dict[int, int] = {}
        for r in self.ray_replicas:
            if r.running:
                running[id(r.handle)] = running.get(id(r.handle), 0) + 1

        def load(r: Any) -> int:
            return running.get(id(r.handle), 0) if isinstance(r, RayReplica) else 0

        best = min(self._idle, key=load, default=popped)
        if load(best) >= load(popped):
            return popped
        self._idle.remove(best)
        self._idle.append(popped)
        return best

    def _release(self, replica: Any) -> None:
        replica.running = False
        if replica in self._out or (replica in self._standby and not self._fallback):
            self._wake()  # a counted-out replica takes no batch until it is healthy again
            return
        super()._release(replica)

    def _retry(self, batch: list[Pending]) -> None:
        """Queue the batch's requests again, first in line, for the next free replica
        (local or Ray); a request whose deadline cannot fit one more batch gets 503."""
        now = self.clock()
        key_of = self.replicas[0].runtime.batch_key
        for pending in batch:
            if pending.future.done():
                continue
            ctx = pending.ctx
            if ctx.deadline - now <= self.latency.estimate_s(ctx.rows):
                self._count_refusal("replica_unavailable", ctx)
                self._fail(
                    pending,
                    SurgeError(
                        "replica_unavailable",
                        f"the replica running this request's batch of {self.name!r} was "
                        "lost and the deadline leaves no time to run it on another",
                        503,
                        1.0,
                    ),
                )
                continue
            arrival = ctx.stamps.get("admitted", now)
            self.batcher.push(
                QueuedRequest(pending, ctx.rows, arrival, ctx.deadline, key_of(pending.tensors))
            )
        self._wake()

    def _slots(self, replica: RayReplica) -> list[RayReplica]:
        return [r for r in self.ray_replicas if r.handle is replica.handle]

    def _count_out(self, replica: RayReplica) -> None:
        for slot in self._slots(replica):
            slot.ready = False
            self._out.add(slot)
            if slot in self._idle:
                self._idle.remove(slot)
        if self._standby and not any(r.ready for r in self.ray_replicas):
            self._fallback = True
            self._idle.extend(r for r in self._standby if r not in self._idle)
        if id(replica.handle) in self._probing:
            return
        self._probing.add(id(replica.handle))
        probe = asyncio.get_running_loop().create_task(self._probe(replica))
        self._probes.add(probe)
        probe.add_done_callback(self._probes.discard)

    async def _probe(self, replica: RayReplica) -> None:
        """Ask the actor until it answers (Ray restarting it reruns its load and warm-up),
        then count it back in."""
        interval = self.placement.health_interval_s
        try:
            while self.state in ("ready", "draining"):
                await asyncio.sleep(interval)
                try:
                    ref = replica.handle.health.remote()
                    await asyncio.wait_for(asyncio.wrap_future(ref.future()), 10 * interval)
                except (TimeoutError, rex.RayError):
                    continue
                self._count_in(replica)
                log.warning("replica %s is back", replica.name)
                return
        finally:
            self._probing.discard(id(replica.handle))

    async def _watch(self) -> None:
        """An idle actor fails no batch, so its death (or its node's) would go unseen
        until traffic found it: ask each ready actor every ten health intervals."""
        interval = self.placement.health_interval_s
        while self.state in ("ready", "draining"):
            await asyncio.sleep(10 * interval)
            for replica in {id(r.handle): r for r in self.ray_replicas if r.ready}.values():
                try:
                    ref = replica.handle.health.remote()
                    await asyncio.wait_for(asyncio.wrap_future(ref.future()), 10 * interval)
                except (TimeoutError, rex.RayError) as exc:
                    if replica.ready:
                        log.warning(
                            "replica %s counted out: no health answer (%r)", replica.name, exc
                        )
                        self._count_out(replica)

    def _count_in(self, replica: RayReplica) -> None:
        if self._fallback:
            self._fallback = False
            self._idle = [r for r in self._idle if r not in self._standby]
        for slot in self._slots(replica):
            self._out.discard(slot)
            slot.ready = True
            # A slot still running its (failing) batch joins when `_release` frees it.
            if self.state == "ready" and not slot.running:
                self._idle.append(slot)
        self._wake()

    def queue_state(self) -> QueueState:
        """Capacity as admission should see it: the local replicas that serve and the
        Ray actors that are ready (one each, whatever their batches in flight)."""
        state = super().queue_state()
        serving_local = [
            r
            for r in self.replicas
            if not isinstance(r, RayReplica) and (self._fallback or r not in self._standby)
        ]
        actors: dict[int, bool] = {}  # ready actor -> busy
        for r in self.ray_replicas:
            if r.ready:
                actors[id(r.handle)] = actors.get(id(r.handle), False) or r.running
        busy_local = sum(r not in self._idle for r in serving_local)
        return QueueState(
            queued_requests=state.queued_requests,
            queued_rows=state.queued_rows,
            busy_replicas=busy_local + sum(actors.values()),
            replicas=max(1, len(serving_local) + len(actors)),
        )

    def _next_batch_s(self, now: float) -> float:
        # As the base class, with "every replica idle" read over the replicas that serve.
        rows = min(self.batcher.queued_rows, self.spec.batching.max_batch_size)
        if self.queue_state().busy_replicas == 0:
            return self.latency.idle_estimate_s(rows, now)
        return self.latency.estimate_s(rows)

    @property
    def ready_replicas(self) -> int:
        ray_replicas = self.ray_replicas
        local = len(self.replicas) - len(ray_replicas)
        return local + len({id(r.handle) for r in ray_replicas if r.ready})

    @property
    def capacity_replicas(self) -> int:
        return len(self.replicas) - len(self.ray_replicas) + self.placement.replicas

    def describe(self) -> dict[str, Any]:
        ray_replicas = self.ray_replicas
        local = len(self.replicas) - len(ray_replicas)
        ready_ray = len({id(r.handle) for r in ray_replicas if r.ready})
        return {
            **super().describe(),
            "replicas": local + self.placement.replicas,  # actors, not their slots
            "ready_replicas": local + ready_ray,
            "placement": {
                "local": {
                    "replicas": local,
                    "ready": local,
                    "serving": local if self._fallback or not self._standby else 0,
                },
                "ray": {
                    "replicas": self.placement.replicas,
                    "ready": ready_ray,
                    "num_cpus": self.placement.num_cpus,
                    "num_gpus": self.placement.num_gpus,
                },
            },
        }
