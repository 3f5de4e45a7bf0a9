"""Requests awaiting bandit feedback, findable from any process, taken exactly once, and
only by whoever proves the answer was theirs.

A bandit route answers request R with arm A for segment S and tenant T; later `POST
/v1/feedback` for R may reach any process. Each answer is remembered in a local buffer
(no I/O on the request path) and flushed in batches every `flush_interval_s` to the
shared store: Redis with a TTL when `redis_url` is set, else the registry. Taking is
exclusive: an entry still in the local buffer is popped there (no other process can see
it yet); one being flushed is taken from the shared store once its flush lands; anything
else is a delete-and-return in the shared store, which only one taker wins.

A take carries a `check` of the caller's proof (the answer's feedback token, or a key
of the answer's tenant). The entry is checked before it is used up, so a bad or missing
proof leaves it for its owner: in the local buffer and the registry the check runs
before the removal (the registry in the same transaction); Redis has no conditional
delete we can use, so the entry is taken, checked and, when refused, put back for the
rest of its time (a rightful taker meanwhile finds nothing and looks again, below).

A feedback that outruns the other process's flush (a client that reports at once)
looks again for a little longer than one flush interval before answering 404.

The local buffer is bounded (`max_unsent`): past it, and while the shared store is
unreachable, the oldest answers are forgotten first, and counted (`evicted`).
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
from surge.store.registry import PendingEntry

log = logging.getLogger("surge.feedback")

Entry = PendingEntry  # (route, segment, arm, tenant)
# Raises (a SurgeError) to refuse a taker; the entry then stays where it was.
Check = Callable[[Entry], None]
# Remembered locally before a flush, and while the shared store is unreachable.
MAX_UNSENT = 100_000


class SharedPending(Protocol):
    async def put(self, entries: list[tuple[str, Entry]], ttl_s: float) -> None: ...

    async def take(self, request_id: str, check: Check) -> Entry | None: ...


class RegistryPending:
    def __init__(self, store: Any, wall_clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.wall_clock = wall_clock

    async def put(self, entries: list[tuple[str, Entry]], ttl_s: float) -> None:
        rows = [(rid, *entry) for rid, entry in entries]
        await asyncio.to_thread(self.store.put_pending, rows, self.wall_clock() + ttl_s)

    async def take(self, request_id: str, check: Check) -> Entry | None:
        found = await asyncio.to_thread(
            self.store.take_pending, request_id, self.wall_clock(), check
        )
        return None if found is None else _entry(found)


class RedisPending:
    """Each value is JSON [route, segment, arm, tenant, expires_at]: the expiry travels
    with it, so an entry put back after a refused take keeps its time, not a fresh TTL
    (else a stranger's refused guesses would keep it alive for ever)."""

    def __init__(self, link: Any, wall_clock: Callable[[], float] = time.time) -> None:
        self.link = link
        self.wall_clock = wall_clock

    async def put(self, entries: list[tuple[str, Entry]], ttl_s: float) -> None:
        expires_at = self.wall_clock() + ttl_s
        payload = [(rid, orjson.dumps([*entry, expires_at])) for rid, entry in entries]
        if not await self.link.put_pending(payload, ttl_s):
            raise ConnectionError("redis refused the pending feedback")

    async def take(self, request_id: str, check: Check) -> Entry | None:
        raw = await self.link.take_pending(request_id)  # raises when it cannot tell
        if raw is None:
            return None
        fields = orjson.loads(raw)
        entry = _entry(fields)
        try:
            check(entry)
        except BaseException:
            left = float(fields[4]) - self.wall_clock() if len(fields) > 4 else 0.0
            if left > 0:
                await self.link.put_pending([(request_id, raw)], left)
            raise
        return entry


def _entry(fields: Any) -> Entry:
    # An entry written before tenants were remembered has three fields: no tenant.
    return (fields[0], fields[1], fields[2], fields[3] if len(fields) > 3 else None)


def _unavailable(exc: Exception) -> SurgeError:
    return SurgeError(
        "feedback_unavailable",
        f"pending feedback cannot be looked up right now ({exc}); retry",
        503,
        1.0,
    )


def _accept(entry: Entry) -> None:
    """The check of a take that needs no proof."""


class PendingFeedback:
    def __init__(
        self,
        shared: SharedPending,
        ttl_s: float,
        flush_interval_s: float = 0.05,
        max_unsent: int = MAX_UNSENT,
    ) -> None:
        self.shared = shared
        self.ttl_s = ttl_s
        self.flush_interval_s = flush_interval_s
        self.max_unsent = max_unsent
        self._unsent: OrderedDict[str, Entry] = OrderedDict()  # oldest first
        self._sending: dict[str, Entry] = {}
        self._flushed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.flush_failures = 0
        self.evicted = 0  # answers forgotten before they were shared (buffer full)

    def remember(
        self, request_id: str, route: str, segment: str, arm: str, tenant: str | None
    ) -> None:
        """On the request path: one dict insert (and, when full, one eviction). The first
        answer under an id keeps it: a client may choose its X-Request-Id, and reusing
        another's must not replace that answer's pending entry (here, in the registry
        and in Redis alike)."""
        if request_id in self._unsent:
            return
        self._unsent[request_id] = (route, segment, arm, tenant)
        if len(self._unsent) > self.max_unsent:
            self._unsent.popitem(last=False)
            self._count_evicted(1)

    async def take(
        self, request_id: str, check: Check = _accept, wait_s: float | None = None
    ) -> Entry | None:
        """The entry, removed, if `check` accepts it (else what `check` raised, with the
        entry left in place); None when no process has it (within the wait)."""
        loop = asyncio.get_running_loop()
        wait = self.flush_interval_s * 4 + 0.25 if wait_s is None else wait_s
        deadline = loop.time() + wait
        while True:
            found = self._unsent.get(request_id)
            if found is not None:
                check(found)
                del self._unsent[request_id]
                return found
            if request_id in self._sending:
                await self._flushed.wait()  # in the shared store (or back here) after it
                continue
            try:
                found = await self.shared.take(request_id, check)
            except SurgeError as exc:
                if exc.status < 500:
                    raise  # the check refused the taker
                raise _unavailable(exc) from None
            except Exception as exc:
                raise _unavailable(exc) from None
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
            self._put_back(self._sending)
            return 0
        finally:
            sent, self._sending = len(self._sending), {}
            self._flushed.set()
        if self.flush_failures:
            log.info("pending feedback is shared again")
        self.flush_failures = 0
        return sent

    def _put_back(self, unsent: dict[str, Entry]) -> None:
        """Entries a flush could not share go back before those answered since (they are
        older), and the buffer is trimmed to its bound, oldest first: an outage of the
        shared store must not grow it without end."""
        merged = OrderedDict(unsent)
        merged.update(self._unsent)  # an id answered again since keeps its newer entry
        over = len(merged) - self.max_unsent
        for _ in range(max(0, over)):
            merged.popitem(last=False)
        self._unsent = merged
        self._count_evicted(max(0, over))

    def _count_evicted(self, n: int) -> None:
        if n and not self.evicted:
            log.warning(
                "pending feedback buffer full (%d answers): the oldest are forgotten "
                "(their feedback will be 404)",
                self.max_unsent,
            )
        self.evicted += n

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
