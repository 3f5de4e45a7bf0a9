"""Rate limits shared by every process through Redis: one Lua script checks all of a
request's limits at once, atomically, so N processes together admit the limit, not
N x the limit.

    limiter = RedisLimiter(url, namespace, timeout_s=0.05, on_down="open", local=LocalLimiter())
    await limiter.start()                       # in the lifespan; stop() on the way out
    decision = await limiter.check(priced(limits, rows))   # a RateDecision (rate_limit.py)

The script runs the same GCRA as `rate_limit.assess` (which then reads the script's
answer into a decision), in microseconds on the Redis server's clock
(`redis.call('TIME')`), so the hosts' clocks never enter the count. Each limit is a key
`<namespace>:rl:<bucket>` holding its TAT, written only when every limit takes the
request (all-or-nothing, as locally) and expiring when the bucket would be full again,
since a missing key is exactly a full bucket. The script is sent by its SHA (EVALSHA)
and in full (EVAL, which caches it) only when the server does not know it yet: after a
restart or a SCRIPT FLUSH. The keys of one request may hash to different slots, so this
needs a plain Redis (or one primary), not Redis Cluster.

When Redis does not answer within `timeout_s` (or is down), `on_down` decides:
"open" checks with `local` (this process alone, so each process admits the whole
limit) and marks the decision `degraded`; "closed" raises a 503 `SurgeError`
("rate_limiter_unavailable", Retry-After 1 s). Either way the outage is logged once when
it starts and once when it ends; while it lasts, checks do not wait on Redis at all
(a blackholed Redis would otherwise add the timeout to every request) and a background
ping finds out when it is back. At most `max_connections` checks talk to Redis at once;
the others queue for a connection within the same timeout, so a burst of requests is
not mistaken for an outage. `GuardedRedis` (cluster/guarded_redis.py) is that connection
discipline on its own, shared with the budgets (budget.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal, TypeVar

from surge.cluster.guarded_redis import GuardedRedis
from surge.cluster.redis_link import RedisUnavailable
from surge.core.errors import SurgeError
from surge.security.rate_limit import (
    SLACK_S,
    UNLIMITED,
    Limit,
    LocalLimiter,
    RateDecision,
    assess,
    interval,
)

log = logging.getLogger("surge.security")

T = TypeVar("T")

MICROS = 1_000_000
# Batches of checks on their way to Redis at once. One: the checks that arrive while it
# is out all go in the next, so under load a batch holds about as many checks as there
# are requests in flight. Measured with 32 concurrent checkers: 38 µs of this process's
# CPU per check with one in flight, 52 µs with two (smaller batches, more calls).
MAX_BATCHES_IN_FLIGHT = 1
MAX_BATCH = 256  # checks per script call: bounds one call's time inside Redis
MAX_PREPARED = 100_000  # limits whose script arguments are kept
SLACK_ARG = repr(SLACK_S * MICROS)

# One call decides a batch of requests, each all-or-nothing over its own limits, in order
# (a later request sees the TATs an earlier one in the batch wrote). KEYS: every request's
# buckets, one after another. ARGV[1]: the slack; ARGV[2]: one string of numbers, per
# request its number of limits and per limit its T and burst x T (microseconds, sent
# exact from Python so both sides do the same float arithmetic) and the request's cost.
# (One string, not an argument per number: encoding arguments one by one was most of the
# client's cost of a call.) Returns {now in microseconds, then each request's stored
# TATs (or "") as its turn found them}.
GCRA_SCRIPT = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local slack = tonumber(ARGV[1])
local nums = {}
for word in string.gmatch(ARGV[2], '%S+') do nums[#nums + 1] = tonumber(word) end
local reply = {now}
local k, a = 1, 1
while a <= #nums do
  local n = nums[a]
  a = a + 1
  local ends = {}
  local fits = 1
  for i = 0, n - 1 do
    local t, tol, cost = nums[a+3*i], nums[a+3*i+1], nums[a+3*i+2]
    local tat = redis.call('GET', KEYS[k+i])
    reply[#reply + 1] = tat or ''
    local start = now
    if tat and tonumber(tat) > now then start = tonumber(tat) end
    ends[i] = start + cost * t
    if ends[i] - tol - now > slack then fits = 0 end
  end
  if fits == 1 then
    for i = 0, n - 1 do
      local ttl_ms = math.max(1, math.ceil((ends[i] - now) / 1000))
      redis.call('SET', KEYS[k+i], string.format('%.17g', ends[i]), 'PX', ttl_ms)
    end
  end
  k = k + n
  a = a + 3 * n
end
return reply
"""
GCRA_SHA = hashlib.sha1(GCRA_SCRIPT.encode()).hexdigest()


class RedisLimiter:
    """GCRA limits counted in Redis for all processes; see the module docstring."""

    def __init__(
        self,
        url: str,
        namespace: str,
        *,
        timeout_s: float = 0.05,
        on_down: Literal["open", "closed"] = "open",
        local: LocalLimiter | None = None,
        clock: Callable[[], float] = time.monotonic,
        max_connections: int = 64,
    ) -> None:
        if on_down not in ("open", "closed"):
            raise ValueError(f"on_down must be 'open' or 'closed', got {on_down!r}")
        self.namespace = namespace
        self.on_down = on_down
        self.local = local if local is not None else LocalLimiter()
        self.clock = clock
        note = (
            "rate limits are counted in this process alone"
            if on_down == "open"
            else "rate-limited requests are refused with 503"
        )
        self._waiting: list[tuple[list[str], list[Any], asyncio.Future[Any]]] = []
        self._in_flight = 0
        self._sending: set[asyncio.Task[None]] = set()
        self._limit_args: dict[Limit, tuple[str, str]] = {}
        self.redis = GuardedRedis(
            url,
            timeout_s=timeout_s,
            what="rate limits",
            on_down_note=note,
            max_connections=max_connections,
        )

    @property
    def healthy(self) -> bool:
        """Whether limits are being counted in Redis (False: fallen back, or stopped)."""
        return self.redis.healthy

    async def start(self) -> None:
        await self.redis.start()

    async def stop(self) -> None:
        await self.redis.stop()
        waiting, self._waiting = self._waiting, []
        for *_, answer in waiting:
            if not answer.done():
                answer.set_exception(RedisUnavailable("rate limits: stopped"))

    def key(self, limit: Limit) -> str:
        return f"{self.namespace}:rl:{limit.bucket}"

    async def check(self, limits: Sequence[tuple[Limit, float]]) -> RateDecision:
        """Decide a request costing each (limit, cost), consuming only if all allow.
        Raises SurgeError 503 when Redis cannot answer and `on_down` is "closed".

        Checks that arrive while a batch is on its way to Redis wait for the next one:
        one script call decides them all (see GCRA_SCRIPT), so under load a request
        costs a share of a round trip, not a whole one, and an idle server sends each
        check at once."""
        if not limits:
            return UNLIMITED
        if not self.redis.started:
            await self.start()  # a forgotten start() must not mean a silent fallback
        keys, args = [], [str(len(limits))]
        for limit, cost in limits:
            key, t_and_tolerance = self._prepared(limit)
            keys.append(key)
            args += [t_and_tolerance, repr(cost)]
        if len(set(keys)) != len(keys):
            raise ValueError(f"a limit is given twice in one check: {keys}")
        answer: asyncio.Future[tuple[float, list[Any]]] = asyncio.get_running_loop().create_future()
        self._waiting.append((keys, args, answer))
        if self._in_flight < MAX_BATCHES_IN_FLIGHT:
            self._send_next()
        try:
            now_us, stored = await answer
        except RedisUnavailable:
            if self.on_down == "closed":
                raise SurgeError(
                    "rate_limiter_unavailable",
                    "rate limits cannot be checked right now (their store does not answer); "
                    "retry in a second",
                    503,
                    retry_after_s=1.0,
                ) from None
            return dataclasses.replace(self.local.check(limits, self.clock()), degraded=True)
        entries = [
            (limit, cost, float(tat) if tat else None)
            for (limit, cost), tat in zip(limits, stored, strict=True)
        ]
        decision, _ = assess(entries, now_us, per_s=MICROS)
        return decision

    def _prepared(self, limit: Limit) -> tuple[str, str]:
        """A limit's key, and its T and burst x T as the script reads them (cached)."""
        found = self._limit_args.get(limit)
        if found is None:
            if len(self._limit_args) > MAX_PREPARED:
                self._limit_args.clear()
            t = interval(limit, MICROS)
            found = self._limit_args[limit] = (self.key(limit), f"{t!r} {limit.capacity * t!r}")
        return found

    def _send_next(self) -> None:
        batch, self._waiting = self._waiting[:MAX_BATCH], self._waiting[MAX_BATCH:]
        self._in_flight += 1
        task = asyncio.get_running_loop().create_task(self._send(batch))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[tuple[list[str], list[Any], asyncio.Future[Any]]]) -> None:
        keys: list[str] = []
        numbers: list[str] = []
        for request_keys, request_args, _ in batch:
            keys += request_keys
            numbers += request_args
        args = [SLACK_ARG, " ".join(numbers)]
        try:
            reply = await self.redis.eval_script(GCRA_SHA, GCRA_SCRIPT, keys, args)
        except RedisUnavailable as exc:
            for *_, answer in batch:
                if not answer.done():
                    answer.set_exception(exc)
        else:
            now_us, at = float(reply[0]), 1
            for request_keys, _, answer in batch:
                n = len(request_keys)
                if not answer.done():  # its request may have been cancelled meanwhile
                    answer.set_result((now_us, reply[at : at + n]))
                at += n
        finally:
            self._in_flight -= 1
            if self._waiting and self._in_flight < MAX_BATCHES_IN_FLIGHT:
                self._send_next()
