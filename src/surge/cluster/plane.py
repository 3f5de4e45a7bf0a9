"""This process's part in the control plane shared by every process on the registry.

It wires four small pieces, each with its own module: the follower (serve the latest
route revisions), the lease (one rollout leader), presence (heartbeats with what this
process serves and measured) and pending feedback (rewardable from any process); plus
the optional Redis link that carries change notifications and pending feedback.

Nothing here is on the request path but `pending.remember` (a dict insert).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from surge.cluster.follower import Apply, RouteFollower
from surge.cluster.lease import LeaseKeeper
from surge.cluster.pending import PendingFeedback, RedisPending, RegistryPending
from surge.cluster.presence import Presence, new_process_id
from surge.config import Config
from surge.core.errors import SurgeError
from surge.core.periodic import Periodic
from surge.store.registry import ProcessRecord, RegistryStore, redact

log = logging.getLogger("surge.cluster")

CHANGES_CHANNEL = "routes"
ROLLOUT_LEASE = "rollouts"
HOUSEKEEPING_S = 60.0


class ControlPlane:
    def __init__(
        self,
        config: Config,
        store: RegistryStore,
        apply: Apply,
        state: Callable[[], dict[str, Any]],
    ) -> None:
        cluster = config.cluster
        self.store = store
        self.process_id = new_process_id()
        self.redis: Any = None
        if config.redis_url:
            from surge.cluster.redis_link import RedisLink  # redis is an optional extra

            self.redis = RedisLink(config.redis_url, config.registry_namespace)
        self.redis_url = redact(config.redis_url) if config.redis_url else None
        self.follower = RouteFollower(store, apply, cluster.poll_interval_s)
        self.lease = LeaseKeeper(store, ROLLOUT_LEASE, self.process_id, cluster.lease_ttl_s)
        self.presence = Presence(store, self.process_id, state, cluster.process_timeout_s)
        shared = RedisPending(self.redis) if self.redis else RegistryPending(store)
        self.pending = PendingFeedback(shared, cluster.pending_feedback_ttl_s)
        self._timers = [
            Periodic("heartbeat", cluster.heartbeat_interval_s, self.presence.beat, logger=log),
            Periodic("rollout lease", self.lease.renew_interval_s, self.lease.renew, logger=log),
            Periodic("cluster housekeeping", HOUSEKEEPING_S, self._housekeeping, logger=log),
        ]

    async def start(self) -> None:
        """Start following (the caller has applied the registry's routes once already)."""
        if self.redis is not None:
            await self.redis.start()
            self.redis.subscribe(CHANGES_CHANNEL, self.follower.wake)
        await self.lease.renew()
        await self.presence.beat()
        self.follower.start()
        self.pending.start()
        for timer in self._timers:
            timer.start()

    async def stop(self) -> None:
        for timer in self._timers:
            await timer.stop()
        await self.follower.stop()
        await self.pending.stop()
        await self.lease.release()
        await self.presence.leave()
        if self.redis is not None:
            await self.redis.stop()

    # -- changes ---------------------------------------------------------------------

    def require_healthy(self) -> None:
        """Refuse a change (503) while a process could not learn of it: the registry or
        the configured Redis is unreachable. Serving goes on meanwhile."""
        down = [name for name, up in self.links().items() if not up]
        if down:
            raise SurgeError(
                "control_plane_unavailable",
                f"{' and '.join(down)} cannot be reached from this process, so a change "
                "could not reach every process; it is refused until they are back "
                "(answers go on from the last known routes)",
                503,
                1.0,
            )

    async def announce(self, key: str) -> None:
        """Tell the other processes that `key` changed, so they look before their next poll."""
        if self.redis is not None:
            await self.redis.publish(CHANGES_CHANNEL, key)

    def links(self) -> dict[str, bool]:
        links = {"registry": self.follower.healthy and self.presence.healthy}
        if self.redis is not None:
            links["redis"] = bool(self.redis.healthy)
        return links

    async def peers(self) -> list[ProcessRecord]:
        return await self.presence.peers()

    async def _housekeeping(self) -> None:
        if not self.lease.leading:
            return
        now = time.time()
        await asyncio.to_thread(self.store.delete_expired_pending, now)
        # Rows of processes dead for a while: an hour keeps crashes visible in status.
        await asyncio.to_thread(self.store.forget_processes_before, now - 3600)
