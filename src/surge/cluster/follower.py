"""Following the registry: every process serves the latest revision of every route.

A change made through any process bumps the route's revision in the registry and is
announced on the bus (Redis pub/sub); a notification only wakes the follower early.
The follower itself always compares revisions with the registry, every
`poll_interval_s` at the latest, so a lost notification, a Redis outage or a process
that was paused still converges on the registry's truth.

When the registry cannot be read, the process goes on serving the routes it has (it
never drops what it serves for lack of news), says so once in the log, and reports
itself unhealthy so that changes are refused with a 503 until it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from surge.core.clock import monotonic
from surge.store.registry import RegistryStore

log = logging.getLogger("surge.follower")

# Applies the doc of one key at a revision; False when it could not (retried later).
Apply = Callable[[str, dict[str, Any], int], Awaitable[bool]]

# A revision a process could not apply (a version that would not load) is tried again
# after this long, unless a newer revision comes first.
RETRY_FAILED_S = 10.0


def followed(key: str) -> bool:
    """Route docs and the operator's mode; not the bandits' shared counts, which are
    rewritten every few seconds and read by their own sync."""
    return not key.startswith("*bandit*")


class RouteFollower:
    def __init__(
        self,
        store: RegistryStore,
        apply: Apply,
        poll_interval_s: float,
        clock: Callable[[], float] = monotonic,
    ) -> None:
        self.store = store
        self.apply = apply
        self.poll_interval_s = poll_interval_s
        self.clock = clock
        self.seen: dict[str, int] = {}  # key -> the revision applied
        self.healthy = True  # the last read of the registry succeeded
        self.polls = 0
        self._failed: dict[str, tuple[int, float]] = {}  # key -> (revision, retry at)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def wake(self, _message: bytes = b"") -> None:
        """A notification arrived (or a resubscription, after which anything may have
        changed): look now rather than at the next poll."""
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="route follower")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait({task})

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_interval_s)
            self._wake.clear()
            try:
                await self.catch_up()
            except Exception:  # a bug in applying one doc must not stop the following
                log.exception("following the registry failed; trying again")

    async def catch_up(self) -> list[str]:
        """Apply every followed key whose revision differs from the one applied; the keys
        applied. Store errors mark the registry unreachable and apply nothing."""
        self.polls += 1
        try:
            revisions = await asyncio.to_thread(self.store.route_revisions)
        except Exception as exc:
            self._unreachable(exc)
            return []
        self._reachable()
        applied = []
        now = self.clock()
        for key, revision in revisions.items():
            if not followed(key) or self.seen.get(key) == revision:
                continue
            failed = self._failed.get(key)
            if failed is not None and failed[0] == revision and now < failed[1]:
                continue
            try:
                doc = await asyncio.to_thread(self.store.load_route, key)
            except Exception as exc:
                self._unreachable(exc)
                return applied
            # The doc read may be newer than `revision` (a change in between), never
            # older: recording the older number only means reading it once more.
            if doc is None:
                continue
            if await self.apply(key, doc, revision):
                self.seen[key] = revision
                self._failed.pop(key, None)
                applied.append(key)
            else:
                self._failed[key] = (revision, now + RETRY_FAILED_S)
        return applied

    def _unreachable(self, exc: Exception) -> None:
        if self.healthy:
            log.warning(
                "the registry cannot be read (%s); serving the last known routes, and "
                "refusing changes until it is back",
                exc,
            )
        self.healthy = False

    def _reachable(self) -> None:
        if not self.healthy:
            log.info("the registry is reachable again; following its routes")
        self.healthy = True
