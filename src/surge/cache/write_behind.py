"""The response cache's writes to Redis, off the request path and batched: the rows a
miss computed, a claimed computation's answer handed to its waiters, a lock given back.

Why one writer and not a task per write: under load, a task per miss meant hundreds of
concurrent calls, each holding one of GuardedRedis's connection slots. The lookups on
the request path then queued behind them for a slot, and with their time spent
waiting counted against their timeout, timed out (850 in 24 s of saturating load on
this machine, while Redis itself answered within 2 ms) until Redis was marked down.
One writer holds one slot, and every write waiting when it is ready goes in its pipeline:
under load, a few Redis round trips a second carry hundreds of misses' rows.

`offer` never waits. The queue is bounded in writes; past it a write is dropped
(counted): this process's memory has the rows, and a dropped hand-over only makes the
waiters find the lock gone when it expires, and compute themselves.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any

from surge.cache.redis_cache import RedisCache, Write

log = logging.getLogger("surge.cache")

MAX_QUEUED = 4096  # writes waiting; past it, dropped
MAX_BATCH = 256  # writes in one pipeline


class WriteBehind:
    def __init__(self, redis: RedisCache, *, max_queued: int = MAX_QUEUED) -> None:
        self.redis = redis
        self.max_queued = max_queued
        self._queue: deque[Write] = deque()
        self._task: asyncio.Task[None] | None = None
        self.written = 0  # writes sent in a pipeline Redis answered
        self.dropped = 0  # writes not sent: the queue was full, or Redis did not answer
        self.batches = 0

    @property
    def pending(self) -> int:
        return len(self._queue)

    def offer(self, write: Write) -> bool:
        """Queue `write`; False when it was dropped. Starts the writer if it is idle."""
        if len(self._queue) >= self.max_queued:
            self.dropped += 1
            return False
        self._queue.append(write)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="response cache: redis writes"
            )
        return True

    async def _run(self) -> None:
        # Ends when the queue is empty (the next offer starts it again): no task to stop
        # at shutdown, and none left behind by an event loop that is gone.
        while self._queue:
            batch = [self._queue.popleft() for _ in range(min(MAX_BATCH, len(self._queue)))]
            try:
                sent = await self.redis.write_batch(batch)
            except Exception:  # a bug here must not leave the writes queued for good
                log.exception("response cache: a batch of Redis writes failed")
                sent = False
            self.batches += 1
            if sent:
                self.written += len(batch)
            else:
                self.dropped += len(batch)

    async def drain(self) -> None:
        """Wait until every queued write was sent (tests; at shutdown what is queued is
        dropped with this process: its rows were only a copy of what memory held)."""
        while self._task is not None and not self._task.done():
            await asyncio.wait({self._task})

    def stats(self) -> dict[str, Any]:
        return {"pending": self.pending, "written": self.written, "dropped": self.dropped,
                "batches": self.batches}  # fmt: skip
