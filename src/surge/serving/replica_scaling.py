"""Changing a deployment's replica count while it serves (the autoscaler's hands).

Mixed into `Deployment`: new replicas are loaded and warmed on their own threads, off
the event loop, and join the idle set only once warm, so no request waits on a cold
replica; surplus replicas leave at once when idle, else when their batch is done, so no
batch is cut short.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from surge.serving.replica import Replica


class ReplicaScaling:
    if TYPE_CHECKING:
        state: str
        replicas: list[Replica]
        pending_replicas: int
        _idle: list[Replica]
        _retiring: set[Replica]
        _scaling: asyncio.Lock
        _next_replica: int
        name: str
        spec: Any
        watch: Any

        def _load_and_warm(self, replica: Replica) -> None: ...

        def _wake(self) -> None: ...

    @property
    def ready_replicas(self) -> int:
        """Replicas serving now (a Ray deployment counts each actor once, not per slot)."""
        return len(self.replicas)

    @property
    def capacity_replicas(self) -> int:
        """Replicas this deployment keeps warm, serving or not: what idle capacity costs."""
        return len(self.replicas)

    def _new_replica(self, number: int) -> Replica:
        runtime = self.spec.runtime_cls(self.spec.version, self.spec.settings)
        meter = summarize = None
        if self.watch is not None:
            meter = self.watch.meter(self.spec.settings) if self.watch.meter else None
            summarize = self.watch.summarize
        name = f"{self.name}-r{number}"
        return Replica(name, runtime, self.spec.compute_nice, meter, summarize)

    async def scale_to(self, count: int) -> None:
        """Run `count` replicas (at least 1): new ones are loaded and warmed on their own
        threads, off the event loop, and take batches only once warm (counted in
        `pending_replicas` meanwhile); surplus ones leave when their batch is done."""
        count = max(1, count)
        async with self._scaling:  # one change at a time: counts stay consistent
            if self.state != "ready":
                return
            # Local replicas only: Ray actors are placed by their own placement config.
            adding = count - sum(1 for r in self.replicas if isinstance(r, Replica))
            if adding > 0:
                await self._add_replicas(adding)
            elif adding < 0:
                self._retire_replicas(-adding)

    async def _add_replicas(self, n: int) -> None:
        loop = asyncio.get_running_loop()
        fresh = [self._new_replica(self._next_replica + i) for i in range(n)]
        self._next_replica += n
        self.pending_replicas += n
        try:
            await asyncio.gather(
                *(loop.run_in_executor(r.executor, self._load_and_warm, r) for r in fresh)
            )
        except BaseException:
            for replica in fresh:
                replica.close()
            raise
        finally:
            self.pending_replicas -= n
        if self.state != "ready":  # stopped or draining while they warmed
            for replica in fresh:
                replica.close()
            return
        for replica in fresh:
            replica.busy_s = 0.0
            self.replicas.append(replica)
            self._idle.append(replica)
        self._wake()

    def _retire_replicas(self, n: int) -> None:
        # The newest first; an idle one leaves now, a busy one when its batch is done.
        local = [r for r in self.replicas if isinstance(r, Replica)]
        for replica in local[::-1][:n]:
            self.replicas.remove(replica)
            if replica in self._idle:
                self._idle.remove(replica)
                replica.close()
            else:
                self._retiring.add(replica)
