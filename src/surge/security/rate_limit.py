"""Rate limits as GCRA (the generic cell rate algorithm), sans-IO: time is a parameter.

A `Limit` is a rate with a burst for one name ("key:ab12cd", "tenant:acme") and one
unit ("requests" or "rows"). GCRA keeps one number per limit, its theoretical arrival
time (TAT): the moment the bucket would be full again if nothing else came. A request
of cost c at `now` moves it to `max(TAT, now) + c * T` (T = 1 / rate) and fits when that
is at most `burst * T` ahead of `now`. So after a quiet spell `burst` units go back to
back, and over any window of length W at most `rate * W + burst` are admitted — exactly,
not on average, which a fixed-window counter cannot say.

The interface for the request path:

    limits = limits_from_config(key_cfg, "key:ab12cd") + limits_from_config(t_cfg, "tenant:acme")
    decision = limiter.check(priced(limits, rows=len(texts)), now=time.monotonic())
    if not decision.allowed:
        raise rate_limited_error(decision)       # ratelimit_headers.py
    response.headers.update(ratelimit_headers(decision))

`check` is all-or-nothing: a request consumes from every limit only when all of them
take it; otherwise nothing is consumed (a refused request does not eat the tenant's
budget that a key's limit refused) and the decision names the tightest refusing limit,
the one whose wait is the longest, so `retry_after_s` is when the whole request fits.

`assess` is the arithmetic on its own, shared with the Redis limiter (redis_limits.py),
whose Lua script repeats it on the server; keep the two in step.
"""

from __future__ import annotations

import math
import sys
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from surge.config_security import RateLimitConfig

Unit = Literal["requests", "rows", "tokens"]

# A request that fits within a microsecond of now fits: float time at unix-epoch
# magnitudes cannot tell closer instants apart, and refusing on rounding noise would make
# the exact count (rate x time + burst) come out one short.
SLACK_S = 1e-6


def default_burst(rate_per_s: float) -> int:
    """RateLimitConfig's rule: 5 % of a second's worth, at least 1."""
    return max(1, math.ceil(rate_per_s / 20))


@dataclass(frozen=True)
class Limit:
    """`rate_per_s` units on average, `burst` at most back to back, for one `name`."""

    name: str
    rate_per_s: float
    burst: int | None = None  # None: default_burst(rate_per_s), filled in on creation
    unit: Unit = "requests"

    def __post_init__(self) -> None:
        if not self.rate_per_s > 0:
            raise ValueError(f"limit {self.name}: rate_per_s must be positive")
        if self.burst is None:
            object.__setattr__(self, "burst", default_burst(self.rate_per_s))
        elif self.burst < 1:
            raise ValueError(f"limit {self.name}: burst must be at least 1")
        object.__setattr__(self, "_bucket", f"{self.name}:{self.unit}")

    @property
    def bucket(self) -> str:
        """What is counted: one name may have a requests and a rows limit."""
        return self._bucket  # type: ignore[attr-defined]  # set once: read per request

    @property
    def capacity(self) -> int:
        assert self.burst is not None
        return self.burst


# Made for every checked request: slotted and not frozen, which builds them several
# times faster (a frozen dataclass sets each field through object.__setattr__).
@dataclass(slots=True)
class Standing:
    """Where one limit stands after a check, for the response headers."""

    limit: Limit
    cost: float
    remaining: int  # units that could go right now
    reset_s: float  # until the bucket is full again
    retry_after_s: float  # until this request would fit here: 0 if it does, inf if never


@dataclass(slots=True)
class RateDecision:
    """The answer to one request's check.

    `limit` is the limit the numbers concern: when refused, the refusing limit with the
    longest wait; when allowed, the one with the least room left (by share of its burst).
    `retry_after_s` is 0 when allowed and `math.inf` when the request costs more than a
    limit's whole burst (it can never fit: the client must send less per request).
    `degraded` says it was decided by this process alone (the shared store was down).
    """

    allowed: bool
    retry_after_s: float
    remaining: int
    reset_s: float
    limit: Limit | None
    standings: tuple[Standing, ...] = ()
    degraded: bool = False


UNLIMITED = RateDecision(True, 0.0, sys.maxsize, 0.0, None)


def limits_from_config(cfg: RateLimitConfig, name: str) -> list[Limit]:
    """The requests/s and rows/s limits `cfg` sets for `name` (none when unset)."""
    limits = []
    if cfg.requests_per_s is not None:
        limits.append(Limit(name, cfg.requests_per_s, cfg.requests_burst, "requests"))
    if cfg.rows_per_s is not None:
        limits.append(Limit(name, cfg.rows_per_s, cfg.rows_burst, "rows"))
    if cfg.tokens_per_minute is not None:
        # A minute's worth by default: token limits are read per minute, and one chat
        # request (prompt + max_tokens) is often larger than a second's worth.
        burst = cfg.tokens_burst or math.ceil(cfg.tokens_per_minute)
        limits.append(Limit(name, cfg.tokens_per_minute / 60, burst, "tokens"))
    return limits


def priced(limits: Sequence[Limit], rows: int, tokens: int = 0) -> list[tuple[Limit, float]]:
    """Each limit with what one request of `rows` input rows (and, for a chat request,
    `tokens` tokens: its prompt's plus its max_tokens) costs it. A request that is not a
    chat request takes nothing from a tokens limit."""
    costs = {"requests": 1, "rows": rows, "tokens": tokens}
    return [(limit, costs[limit.unit]) for limit in limits]


def interval(limit: Limit, per_s: float) -> float:
    """T, the time one unit takes to earn back, in the caller's time unit."""
    return per_s / limit.rate_per_s


def assess(
    entries: Sequence[tuple[Limit, float, float | None]], now: float, per_s: float = 1.0
) -> tuple[RateDecision, list[float]]:
    """Decide one request, all-or-nothing.

    `entries` are (limit, cost, the limit's stored TAT or None when it has none), times
    in a unit with `per_s` of them per second (1 for seconds, 1e6 for microseconds).
    Returns the decision and each limit's TAT afterwards (moved only when allowed).
    """
    if not entries:
        return UNLIMITED, []
    slack = SLACK_S * per_s
    starts, ends, waits, intervals = [], [], [], []
    for limit, cost, tat in entries:
        t = per_s / limit.rate_per_s  # interval(limit, per_s), inlined: once per request
        intervals.append(t)
        start = now if tat is None or tat < now else tat
        end = start + cost * t
        starts.append(start)
        ends.append(end)
        waits.append(end - limit.burst * t - now)  # type: ignore[operator]
    allowed = all(w <= slack for w in waits)
    after = ends if allowed else starts
    standings = []
    for (limit, cost, _), tat, wait, t in zip(entries, after, waits, intervals, strict=True):
        capacity: int = limit.burst  # type: ignore[assignment]
        room = (capacity * t - (tat - now) + slack) / t
        retry = 0.0 if wait <= slack else wait / per_s
        if cost > capacity:
            retry = math.inf  # even a full bucket cannot take it
        remaining = min(capacity, max(0, math.floor(room)))
        # Positional: built for every checked request, and keywords cost more.
        standings.append(Standing(limit, cost, remaining, max(0.0, (tat - now) / per_s), retry))
    if len(standings) == 1:
        tightest = standings[0]
    elif allowed:
        tightest = min(standings, key=lambda s: s.remaining / s.limit.capacity)
    else:
        tightest = max(standings, key=lambda s: s.retry_after_s)
    decision = RateDecision(
        allowed,
        0.0 if allowed else tightest.retry_after_s,
        tightest.remaining,
        tightest.reset_s,
        tightest.limit,
        tuple(standings),
    )
    return decision, after


class LocalLimiter:
    """GCRA buckets held in this process, at most `max_keys` of them.

    Buckets are kept in least-recently-used order and the oldest goes when a new one
    would pass the bound. Forgetting a bucket is the same as finding it full, and for
    GCRA that is not an approximation once the bucket has been idle for its reset time
    (burst x T): its TAT is then in the past, and a TAT in the past means "full" exactly.
    The least recently used bucket has been idle longer than any other, so it is nearly
    always past that point; only when more than `max_keys` names are active within one
    refill time does an eviction forgive a debt (at most one burst), which
    `early_evictions` counts so it can be seen and the bound raised.
    """

    def __init__(self, max_keys: int = 100_000) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        self.max_keys = max_keys
        self.early_evictions = 0
        self._tats: OrderedDict[str, float] = OrderedDict()  # bucket -> TAT (seconds)

    def __len__(self) -> int:
        return len(self._tats)

    def check(self, limits: Sequence[tuple[Limit, float]], now: float) -> RateDecision:
        """Decide a request costing each (limit, cost), consuming only if all allow.
        `now` is seconds on any clock that only moves forward (time.monotonic())."""
        buckets = [limit.bucket for limit, _ in limits]
        if len(buckets) > 1 and len(set(buckets)) != len(buckets):
            raise ValueError(f"a limit is given twice in one check: {buckets}")
        entries = [
            (limit, cost, self._tats.get(bucket))
            for (limit, cost), bucket in zip(limits, buckets, strict=True)
        ]
        decision, after = assess(entries, now)
        if decision.allowed:
            for bucket, tat in zip(buckets, after, strict=True):
                self._tats[bucket] = tat
                self._tats.move_to_end(bucket)
            while len(self._tats) > self.max_keys:
                _, tat = self._tats.popitem(last=False)
                if tat > now:
                    self.early_evictions += 1
        return decision
