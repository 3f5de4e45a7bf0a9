"""An endpoint's response cache on the request path: per-row reuse, coalescing of
identical requests in flight, two levels (this process's LRU, then Redis).

For a request of n rows: each row's key is looked up in memory, the rows still missing
in Redis (one MGET); the rows found are not computed. The rest go to the model as one
smaller request, through single-flight: identical requests in flight in this process
wait for the first one's answer (each with its own deadline), and with Redis, a process
claims the computation so the others wait for its answer instead of computing it too.
Fresh rows are stored in memory at once and in Redis in the background (a request never
waits on a cache write). Redis that is slow or down turns into misses: serving goes on
uncached, `surge_cache_redis_up` and one log line say so.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from surge.cache.codec import (
    CorruptEntry,
    assemble_rows,
    decode,
    encode,
    encode_rows,
)
from surge.cache.flight import (
    FLIGHT_RESULT_TTL_S,
    LeaderDeadline,
    flight_key,
    lock_ttl_ms,
    time_left,
)
from surge.cache.keys import (
    Uncacheable,
    endpoint_key,
    endpoint_prefix,
    row_keys,
    version_identity,
)
from surge.cache.memory import MemoryCache
from surge.cache.redis_cache import Write
from surge.cache.write_behind import WriteBehind
from surge.config_cache import CacheConfig
from surge.core.clock import monotonic
from surge.core.errors import SurgeError
from surge.core.tensors import Tensors

if TYPE_CHECKING:
    from surge.cache.redis_cache import RedisCache
    from surge.core.context import RequestContext
    from surge.serving.deployment import Deployment

log = logging.getLogger("surge.cache")

# Request parameters that never change an answer: how it is encoded, who asked.
IGNORED_PARAMETERS = frozenset(
    {"user", "binary_data_output", "binary_data", "binary_data_size", "content_type"}
)
MAX_FLIGHTS = 10_000  # identical-request groups tracked at once; past it, no coalescing

Compute = Callable[[Tensors, int], Awaitable[Tensors]]


class EndpointCache:
    def __init__(
        self,
        endpoint: str,
        config: CacheConfig,
        redis: RedisCache | None,
        stale_allowed_s: Callable[[], float] = lambda: 0.0,
        clock: Callable[[], float] = monotonic,
    ) -> None:
        self.endpoint = endpoint
        self.config = config
        self.redis = redis if config.redis else None
        self.stale_allowed_s = stale_allowed_s
        self.clock = clock
        self.memory = MemoryCache(config.max_bytes)
        self._inflight: dict[str, asyncio.Future[Tensors]] = {}  # flight key -> its answer
        self.coalescing: Counter[str] = Counter()  # leaders, followers
        self.results: Counter[str] = Counter()  # per request: hit, miss, coalesced, stale
        self.rows: Counter[str] = Counter()  # per row: hit, miss
        self.saved_compute_s = 0.0
        self._identities: dict[int, tuple[Deployment, bytes]] = {}
        self.writer = WriteBehind(self.redis) if self.redis is not None else None

    def identity(self, deployment: Deployment) -> bytes:
        """The serving version's identity (`version_identity`), once per deployment."""
        found = self._identities.get(id(deployment))
        if found is not None and found[0] is deployment:
            return found[1]
        identity = version_identity(deployment.spec)
        if len(self._identities) > 64:  # old versions come and go with rollouts
            self._identities.clear()
        self._identities[id(deployment)] = (deployment, identity)
        return identity

    async def run(
        self,
        deployment: Deployment,
        ctx: RequestContext,
        tensors: Tensors,
        rows: int,
        parameters: dict[str, Any] | None,
        compute: Compute,
    ) -> Tensors:
        """The request's outputs, from the cache where it can, else from `compute`."""
        keys = self._keys(deployment, ctx, tensors, parameters)
        if keys is None:
            return await compute(tensors, rows)
        found, stale, claim = await self._look_up(ctx, keys)
        missing = [i for i, value in enumerate(found) if value is None]
        hit_rows = rows - len(missing)
        self.rows["hit"] += hit_rows
        self.rows["miss"] += len(missing)
        coalesced = False
        fresh: Tensors | None = None
        if missing:
            fresh, coalesced = await self._compute(
                deployment, ctx, tensors, missing, keys, compute, claim
            )
        elif claim is not None:  # Redis had every row after all
            self._give_back(*claim)
        result = "stale" if stale and not missing else "hit" if not missing else "miss"
        if coalesced:
            result = "coalesced"
        self.results[result] += 1
        saved = deployment.latency.estimate_s(hit_rows) if hit_rows else 0.0
        if coalesced:
            saved = deployment.latency.estimate_s(len(missing))
        self.saved_compute_s += saved
        ctx.cache_hit = not missing
        ctx.cache = {
            "endpoint": self.endpoint, "result": result, "rows": rows, "hit_rows": hit_rows,
            "coalesced": coalesced, "stale": stale, "saved_compute_s": saved,
        }  # fmt: skip
        if fresh is not None and len(missing) == rows:
            return fresh
        return assemble_rows(found, fresh)

    def cached_answer(
        self, deployment: Deployment, ctx: RequestContext, tensors: Tensors,
        parameters: dict[str, Any] | None,
    ) -> Tensors | None:  # fmt: skip
        """Every row's answer from this process's memory, fresh or up to one more TTL
        past it, without computing anything; None when a row is missing. The deadline
        ladder's last rung: better an answer a little old than none in time."""
        keys = self._keys(deployment, ctx, tensors, parameters)
        if keys is None:
            return None
        now, found = self.clock(), []
        for key in keys:
            entry = self.memory.get_stale(key, now, self.config.ttl_s)
            if entry is None:
                return None
            found.append(entry.value)
        rows = len(found)
        self.results["stale"] += 1
        ctx.cache_hit = True
        ctx.cache = {"endpoint": self.endpoint, "result": "stale", "rows": rows,
                     "hit_rows": rows, "coalesced": False, "stale": True,
                     "saved_compute_s": deployment.latency.estimate_s(rows)}  # fmt: skip
        return assemble_rows(list(found), None)

    def _keys(
        self, deployment: Deployment, ctx: RequestContext, tensors: Tensors,
        parameters: dict[str, Any] | None,
    ) -> list[str] | None:  # fmt: skip
        """Each row's key as stored; None when the input has no canonical form."""
        params = {k: v for k, v in (parameters or {}).items() if k not in IGNORED_PARAMETERS}
        tenant = ctx.tenant if self.config.scope == "tenant" else None
        try:
            keys = row_keys(self.identity(deployment), tensors, params, tenant)
        except Uncacheable:
            return None
        return [endpoint_key(self.endpoint, k) for k in keys]

    async def _look_up(
        self, ctx: RequestContext, keys: list[str]
    ) -> tuple[list[bytes | None], bool, tuple[str, bool] | None]:
        """Each row's value (None: missing), whether one is stale, and the claim (flight,
        taken) of the missing rows' computation made in Redis's round trip, if any."""
        now = self.clock()
        stale_s = self.stale_allowed_s()
        found: list[bytes | None] = []
        stale = False
        for key in keys:
            entry = self.memory.get(key, now)
            if entry is None and stale_s > 0:
                entry = self.memory.get_stale(key, now, stale_s)
                stale = stale or entry is not None
            found.append(None if entry is None else entry.value)
        missing = [i for i, value in enumerate(found) if value is None]
        redis, claim = self.redis, None
        if missing and redis is not None and redis.healthy:
            asked = [keys[i] for i in missing]
            flight = flight_key(self.endpoint, asked)
            if self.config.coalesce and flight not in self._inflight:
                entries, taken = await redis.get_many_and_claim(
                    asked, flight, lock_ttl_ms(ctx, now), max_stale_s=stale_s
                )
                claim = (flight, taken)
            else:
                entries = await redis.get_many(asked, max_stale_s=stale_s)
            wall = time.time()
            for i, entry in zip(missing, entries, strict=True):
                if entry is None:
                    continue
                found[i] = entry.value
                stale = stale or entry.stale
                if not entry.stale:  # what another process computed is served here next
                    self.memory.put(keys[i], entry.value, now, max(0.0, entry.expires_at - wall))
        return found, stale, claim

    async def _compute(
        self,
        deployment: Deployment,
        ctx: RequestContext,
        tensors: Tensors,
        missing: list[int],
        keys: list[str],
        compute: Compute,
        claim: tuple[str, bool] | None = None,
    ) -> tuple[Tensors, bool]:
        rows = len(next(iter(tensors.values())))
        part = tensors if len(missing) == rows else {n: a[missing] for n, a in tensors.items()}
        missing_keys = [keys[i] for i in missing]
        flight = flight_key(self.endpoint, missing_keys)
        elsewhere = False  # the answer came from another process's computation (Redis)
        taken = claim[1] if claim is not None and claim[0] == flight else None
        if claim is not None and taken is None:  # Redis had some rows: a claim of too many
            self._give_back(*claim)

        async def leader() -> Tensors:
            nonlocal elsewhere, taken
            claimed, taken = taken, None  # a claim is used once: a retry claims anew
            outputs, elsewhere, handed = await self._computed_once(
                ctx, flight, part, len(missing), compute, claimed
            )
            self._store(missing_keys, outputs, flight if handed else None)
            return outputs

        if not self.config.coalesce or len(self._inflight) >= MAX_FLIGHTS:
            return await leader(), elsewhere
        computing = self._inflight.get(flight)
        if computing is None and self.redis is not None:
            # The lookup waited on Redis, and an identical request may have computed and
            # finished meanwhile: its answer is in memory now; computing again wastes a run.
            finished = self._from_memory(missing_keys)
            if finished is not None:
                self._give_back(flight, taken)
                self.coalescing["followers"] += 1
                return finished, True
        elif computing is not None:
            shared = await self._follow(ctx, computing)
            if shared is not None:
                self._give_back(flight, taken)
                self.coalescing["followers"] += 1
                return shared, True
            # The first one's own deadline ended its computation: compute here.
            return await leader(), elsewhere
        # The first of its kind computes inline (no task of its own: a miss with nobody
        # waiting costs one future) and hands its answer to whoever came meanwhile.
        future: asyncio.Future[Tensors] = asyncio.get_running_loop().create_future()
        self._inflight[flight] = future
        self.coalescing["leaders"] += 1
        try:
            outputs = await leader()
        except Exception as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: nobody may be waiting
            raise
        except BaseException:
            future.cancel()
            raise
        finally:
            self._inflight.pop(flight, None)
        future.set_result(outputs)
        return outputs, elsewhere

    def _from_memory(self, keys: list[str]) -> Tensors | None:
        if not all(key in self.memory for key in keys):  # the usual case: no second miss
            return None
        entries = [self.memory.get(key, self.clock()) for key in keys]
        found = [None if entry is None else entry.value for entry in entries]
        return None if None in found else assemble_rows(found, None)

    async def _follow(
        self, ctx: RequestContext, computing: asyncio.Future[Tensors]
    ) -> Tensors | None:
        """The answer an identical request in flight computes, within this request's own
        deadline; None when that one cannot give it (its own deadline passed, or it was
        cancelled): then this request computes for itself."""
        try:
            return await asyncio.wait_for(asyncio.shield(computing), time_left(ctx, self.clock()))
        except TimeoutError:
            message = "the deadline passed while waiting for an identical request's answer"
            raise SurgeError("deadline_exceeded", f"{self.endpoint}: {message}", 504) from None
        except LeaderDeadline:
            return None
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if computing.cancelled() and task is not None and not task.cancelling():
                return None
            raise

    async def _computed_once(
        self, ctx: RequestContext, flight: str, part: Tensors, rows: int, compute: Compute,
        taken: bool | None,
    ) -> tuple[Tensors, bool, bool]:  # fmt: skip
        """Compute, or, when another process already is (Redis), wait for its answer;
        whether it was the other's, and whether this one holds the flight's lock (its
        answer is then handed over to the waiters with the rows). `taken`: the claim
        the lookup made, None when it made none."""
        redis = self.redis if self.config.coalesce else None
        claimed = False
        if redis is not None and (taken is not None or redis.healthy):
            left = time_left(ctx, self.clock())
            if taken is None:
                taken = await redis.claim(flight, lock_ttl_ms(ctx, self.clock()))
            claimed = taken
            if not claimed:
                loop = asyncio.get_running_loop()
                entry = await redis.wait_for(flight, loop.time() + left)
                if entry is not None:
                    try:
                        return decode(entry.value), True, False
                    except CorruptEntry:
                        pass  # computed here instead
        try:
            outputs = await compute(part, rows)
        except BaseException as error:
            self._give_back(flight, claimed)  # the waiters compute themselves
            timed_out = isinstance(error, SurgeError) and error.status == 504
            if timed_out and ctx.remaining_s(self.clock()) <= 0:
                assert isinstance(error, SurgeError)
                raise LeaderDeadline(error.code, error.message, 504) from None
            raise
        return outputs, False, claimed

    def _store(self, keys: list[str], outputs: Tensors, claimed: str | None) -> None:
        """The fresh rows into memory now and to Redis through the write-behind queue,
        with a `claimed` flight's answer for its waiters (they poll for it)."""
        try:
            values = encode_rows(outputs)
        except Uncacheable:
            values = []
        now, ttl = self.clock(), self.config.ttl_s
        for key, value in zip(keys, values, strict=False):
            self.memory.put(key, value, now, ttl)
        writer = self.writer
        if writer is None or (claimed is None and (not values or not writer.redis.healthy)):
            return
        write = Write(list(zip(keys, values, strict=False)), ttl, claimed)
        # Uncacheable: the lock is released with nothing handed over, waiters compute.
        with contextlib.suppress(Uncacheable):
            if claimed is not None:
                write.hand_over, write.hand_over_ttl_s = encode(outputs), FLIGHT_RESULT_TTL_S
        writer.offer(write)

    def _give_back(self, flight: str, taken: bool | None) -> None:
        """Release a flight's lock this process took but will not compute under."""
        if taken and self.writer is not None:
            self.writer.offer(Write([], 0.0, flight))

    async def purge(self) -> dict[str, Any]:
        """Forget every answer of this endpoint, here and in Redis (other processes'
        memory keeps theirs until it expires: say `surge cache purge` on each, or wait ttl_s)."""
        prefix = endpoint_prefix(self.endpoint)
        dropped = self.memory.purge(prefix)
        shared = None
        if self.redis is not None:
            result = await self.redis.purge(prefix)
            shared = {"deleted": result.deleted, "complete": result.complete}
        return {"endpoint": self.endpoint, "memory_entries": dropped, "redis": shared}

    def stats(self) -> dict[str, Any]:
        return {
            "requests": dict(self.results),
            "rows": dict(self.rows),
            "saved_compute_s": self.saved_compute_s,
            "memory": self.memory.stats(),
            "coalescing": {**self.coalescing, "in_flight": len(self._inflight)},
            "redis_up": None if self.redis is None else self.redis.healthy,
            "redis_writes": None if self.writer is None else self.writer.stats(),
        }
