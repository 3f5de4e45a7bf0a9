"""Requests awaiting bandit feedback, findable from any process, taken exactly once.

A bandit route answers request R with arm A for segment S; later `POST /v1/feedback`
for R may reach any process. Each answer is remembered in a local buffer (no I/O on the
request path) and flushed in batches every `flush_interval_s` to the shared store:
Redis with a TTL when `redis_url` is set, else the registry. Taking is exclusive: an
entry still in the local buffer is popped there (no other process can see it yet); one
being flushed is taken from the shared store once its flush lands; anything else is a
delete-and-return in the shared store, which only one taker wins.

A feedback that outruns the other process's flush (a client that reports at once)
looks again for a little longer than one flush interval before answering 404.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol

import orjson

from surge.core.errors import SurgeError

log = logging.getLogger("surge.feedback")

Entry = tuple[str, str, str]  # (route, segment, arm)
# Remembered locally while the shared store is unreachable (oldest forgotten first).
MAX_UNSENT = 100_000


class SharedPending(Protocol):
    async def put(self, entries: list[tuple[str, Entry]], ttl_s: float) -> None: ...

    async def take(self, request_id: str) -> Entry | None: ...


class RegistryPending:
    def __init__(self, store: Any, wall_clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.wall_clock = wall_clock

    async def put(self, entries: list[tuple[str, Entry]], ttl_s: float) -> None:
        rows = [(rid, *entry) for rid, entry in entries]
        await asyncio.to_thread(self.store.put_pending, rows, self.wall_clock() + ttl_s)

    async def take(self, request_id: str) -> Entry | None:
        found = await asyncio.to_thread(self.store.take_pending, request_id, self.wall_clock())
        return None if found is None else tuple(found)  # type: ignore[return-value]


class RedisPending:
    def __init__(self, link: Any) -> None:
        self.link = link

    async def put(self, entries: list[tuple[str, Entry]], ttl_s: float) -> None:
        payload = [(rid, orjson.dumps(entry)) for rid, entry in entries]
        if not await self.link.put_pending(payload, ttl_s):
            raise ConnectionError("redis refused the pending feedback")

    async def take(self, request_id: str) -> Entry | None:
        raw = await self.link.take_pending(request_id)  # raises when it cannot tell
        return None if raw is None else tuple(orjson.loads(raw))  # type: ignore[return-value]


class PendingFeedback:
    def __init__(self, shared: SharedPending, ttl_s: float, flush_interval_s: float = 0.05) -> None:
        self.shared = shared
        self.ttl_s = ttl_s
        self.flush_interval_s = flush_interval_s
        self._unsent: OrderedDict[str, Entry] = OrderedDict()
        self._sending: dict[str, Entry] = {}
        self._flushed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.flush_failures = 0

    def remember(self, request_id: str, route: str, segment: str, arm: str) -> None:
        """On the request path: one dict insert."""
        self._unsent[request_id] = (route, segment, arm)
        if len(self._unsent) > MAX_UNSENT:
            self._unsent.popitem(last=False)

    async def take(self, request_id: str, wait_s: float | None = None) -> Entry | None:
        loop = asyncio.get_running_loop()
        wait = self.flush_interval_s * 4 + 0.25 if wait_s is None else wait_s
        deadline = loop.time() + wait
        while True:
            found = self._unsent.pop(request_id, None)
            if found is not None:
                return found
            if request_id in self._sending:
                await self._flushed.wait()  # in the shared store (or back here) after it
                continue
            try:
                found = await self.shared.take(request_id)
            except Exception as exc:
                raise SurgeError(
                    "feedback_unavailable",
                    f"pending feedback cannot be looked up right now ({exc}); retry",
                    503,
                    1.0,
                ) from None
            if found is not None or loop.time() >= deadline:
                return found
            # Another process may not have flushed it yet.
            await asyncio.sleep(self.flush_interval_s)

    async def flush(self) -> int:
        if not self._unsent:
            return 0
        self._sending = dict(self._unsent)
        self._unsent.clear()
        self._flushed.clear()
        try:
            await self.shared.put(list(self._sending.items()), self.ttl_s)
        except Exception as exc:
            # Kept for the next flush (entries taken meanwhile from `_sending` stay taken
            # only locally: they go back to the buffer, not to the store).
            if not self.flush_failures:
                log.warning("pending feedback cannot be shared (%s); kept locally", exc)
            self.flush_failures += 1
            for rid, entry in self._sending.items():
                self._unsent.setdefault(rid, entry)
            return 0
        finally:
            sent, self._sending = len(self._sending), {}
            self._flushed.set()
        if self.flush_failures:
            log.info("pending feedback is shared again")
        self.flush_failures = 0
        return sent

    def start(self) -> None:
        async def run() -> None:
            while True:
                await asyncio.sleep(self.flush_interval_s)
                await self.flush()

        self._task = asyncio.get_running_loop().create_task(run(), name="pending feedback")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait({task})
        await self.flush()  # what was answered last is still rewardable elsewhere
