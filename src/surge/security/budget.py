"""Tenant budgets: spend (the receipts' cost) per UTC clock hour and per UTC day.

The sans-IO part is arithmetic on unix time: a window's id is the number of whole
hours (or days) since the epoch, so every process and every host agrees on it without
talking (unix time has no time zones and no leap seconds), and it resets on the hour and
at midnight UTC. `assess_budget` turns a tenant's spend into a `BudgetCheck`.

The counting has one interface in two strategies, chosen by whether Redis is configured:

    budgets = RedisBudgets(url, namespace, {"acme": BudgetConfig(per_hour=5)})  # or LocalBudgets
    await budgets.start()                              # stop() flushes what is left
    budgets.check(tenant, time.time())                 # request path: raises 429, no I/O
    await budgets.record(tenant, receipt.cost, time.time())   # as a request finishes
    await budgets.spend(["acme"], time.time())         # `surge costs`: fresh from Redis
    budgets.spend_ratios(time.time())                  # {(tenant, "hour"): 0.42, ...}: a gauge

`check` (or `allowed`, which returns the BudgetCheck instead of raising) costs no round
trip: it reads this process's view of each tenant's spend. `RedisBudgets` keeps that view
fresh: what this process records is added to it at once, and a tenant's view older than
`refresh_s` (0.1 s) is re-read from Redis by a background task, so a tenant that crosses
its budget anywhere is refused everywhere within a few tenths of a second. `record` never
waits on Redis: spend is summed per tenant and window (so the backlog is bounded by the
number of tenants, not of requests) and the same task sends it with INCRBYFLOAT on
`<namespace>:spend:<tenant>:h:<hour id>` and `:d:<day id>`, pipelined with the re-reads,
each key expiring a window after its window ends. While Redis does not answer, spend is
counted here (and sent when it is back); the outage is logged once, like the rate limits'.

A budget is a soft limit: requests in flight when a tenant crosses it still finish and
count, so spend can pass the budget by what was in flight; the next request is refused.
The warning at `warn_at` of a budget is logged once per tenant and window.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from surge.cluster.guarded_redis import GuardedRedis
from surge.cluster.redis_link import RedisUnavailable
from surge.config_security import BudgetConfig
from surge.core.errors import SurgeError

log = logging.getLogger("surge.security")

Window = Literal["hour", "day"]
WINDOW_S: dict[Window, int] = {"hour": 3600, "day": 86400}
WINDOW_WORD: dict[Window, str] = {"hour": "hourly", "day": "daily"}
REFRESH_S = 0.1


def window_id(window: Window, now_unix: float) -> int:
    """Whole hours (days) since the epoch: the same on every host."""
    return math.floor(now_unix / WINDOW_S[window])


def reset_at(window: Window, now_unix: float) -> float:
    """Unix time at which the window holding `now_unix` ends (on the hour, at 00:00 UTC)."""
    return float((window_id(window, now_unix) + 1) * WINDOW_S[window])


def iso(unix: float) -> str:
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class BudgetCheck:
    """Whether a tenant may spend more, and the window that decided: when refused, the
    exhausted window that resets last; otherwise the one nearest its budget."""

    allowed: bool
    window: Window | None  # None: the tenant has no budget
    spent: float = 0.0
    limit: float | None = None
    reset_at: float | None = None  # unix seconds
    warn: bool = False  # at or past warn_at of the window's budget


NO_BUDGET = BudgetCheck(True, None)


def assess_budget(
    cfg: BudgetConfig | None, spent: Mapping[Window, float], now_unix: float
) -> BudgetCheck:
    """The check for a tenant whose spend in the current windows is `spent`."""
    if cfg is None:
        return NO_BUDGET
    checks = []
    for window, limit in (("hour", cfg.per_hour), ("day", cfg.per_day)):
        if limit is not None:
            used = spent.get(window, 0.0)
            checks.append(
                BudgetCheck(
                    allowed=used < limit,
                    window=window,
                    spent=used,
                    limit=limit,
                    reset_at=reset_at(window, now_unix),
                    warn=used >= cfg.warn_at * limit,
                )
            )
    if not checks:
        return NO_BUDGET
    exhausted = [c for c in checks if not c.allowed]
    if exhausted:
        return max(exhausted, key=lambda c: c.reset_at or 0.0)
    return max(checks, key=lambda c: c.spent / (c.limit or 1.0))


def budget_error(tenant: str, check: BudgetCheck, now_unix: float) -> SurgeError:
    """The 429 for a request of `tenant` that `check` refused."""
    assert check.window is not None and check.limit is not None and check.reset_at is not None
    return SurgeError(
        "budget_exhausted",
        # The code leads the message too: the v2 error shape carries only the message.
        f"budget_exhausted: tenant {tenant} spent {check.spent:.2f} of its {check.limit:.2f} "
        f"{WINDOW_WORD[check.window]} budget; resets at {iso(check.reset_at)}",
        429,
        retry_after_s=max(1.0, check.reset_at - now_unix),
    )


@dataclass(frozen=True)
class TenantSpend:
    hour: float
    day: float
    per_hour: float | None
    per_day: float | None
    hour_resets_at: str
    day_resets_at: str


class LocalBudgets:
    """Spend counted in this process alone (no Redis configured), and the view that
    RedisBudgets keeps fresh: per tenant and window, the spend in the current window."""

    def __init__(self, budgets: Mapping[str, BudgetConfig]) -> None:
        self.budgets = dict(budgets)
        self._spent: dict[tuple[str, Window], tuple[int, float]] = {}  # -> (window id, spend)
        self._noted: dict[tuple[str, Window, str], int] = {}  # what was logged, for which id

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def record(self, tenant: str, cost: float, now_unix: float) -> None:
        """Add a finished request's cost to its tenant's spend."""
        if cost > 0:
            for window in WINDOW_S:
                self._add(tenant, window, window_id(window, now_unix), cost)

    def allowed(self, tenant: str, now_unix: float) -> BudgetCheck:
        cfg = self.budgets.get(tenant)
        if cfg is None:
            return NO_BUDGET
        return assess_budget(cfg, self._current(tenant, now_unix), now_unix)

    def check(self, tenant: str, now_unix: float) -> None:
        """Raise the 429 `budget_exhausted` when `tenant` has spent a budget."""
        result = self.allowed(tenant, now_unix)
        if not result.allowed:
            raise budget_error(tenant, result, now_unix)

    async def spend(
        self, tenants: Iterable[str] | None = None, now_unix: float | None = None
    ) -> dict[str, TenantSpend]:
        """Each tenant's spend this hour and today (default: the tenants with budgets)."""
        now = time.time() if now_unix is None else now_unix
        names = list(self.budgets if tenants is None else tenants)
        return {t: self._spend_of(t, self._current(t, now), now) for t in names}

    async def report(self, now_unix: float) -> list[dict[str, Any]]:
        """`spend` as rows for `surge costs` and the admin API."""
        return [{"tenant": t, **asdict(s)} for t, s in (await self.spend(None, now_unix)).items()]

    def spend_ratios(self, now_unix: float) -> dict[tuple[str, Window], float]:
        """Spend over budget per configured (tenant, window), for a gauge."""
        ratios = {}
        for tenant, cfg in self.budgets.items():
            spent = self._current(tenant, now_unix)
            for window, limit in (("hour", cfg.per_hour), ("day", cfg.per_day)):
                if limit is not None:
                    ratios[(tenant, window)] = spent[window] / limit
        return ratios

    # -- the view ----------------------------------------------------------------------

    def _current(self, tenant: str, now_unix: float) -> dict[Window, float]:
        spent: dict[Window, float] = {}
        for window in WINDOW_S:
            held = self._spent.get((tenant, window))
            current = window_id(window, now_unix)
            spent[window] = held[1] if held is not None and held[0] == current else 0.0
        return spent

    def _add(self, tenant: str, window: Window, wid: int, cost: float) -> None:
        held = self._spent.get((tenant, window))
        if held is None or held[0] < wid:
            self._set(tenant, window, wid, cost)
        elif held[0] == wid:
            self._set(tenant, window, wid, held[1] + cost)

    def _set(self, tenant: str, window: Window, wid: int, spent: float) -> None:
        held = self._spent.get((tenant, window))
        if held is not None and held[0] > wid:
            return  # an answer about a window that has already ended
        self._spent[(tenant, window)] = (wid, spent)
        cfg = self.budgets.get(tenant)
        limit = None if cfg is None else cfg.per_hour if window == "hour" else cfg.per_day
        if cfg is None or limit is None:
            return
        resets = iso((wid + 1) * WINDOW_S[window])
        if spent >= limit:
            self._note_once(
                (tenant, window, "exhausted"),
                wid,
                f"tenant {tenant} spent {spent:.2f} of its {limit:.2f} {WINDOW_WORD[window]} "
                f"budget; its requests are refused until {resets}",
            )
        elif spent >= cfg.warn_at * limit:
            self._note_once(
                (tenant, window, "warn"),
                wid,
                f"tenant {tenant} has spent {spent:.2f} of its {limit:.2f} "
                f"{WINDOW_WORD[window]} budget ({spent / limit:.0%}); it resets at {resets}",
            )

    def _note_once(self, what: tuple[str, Window, str], wid: int, message: str) -> None:
        if self._noted.get(what) != wid:
            self._noted[what] = wid
            log.warning(message)

    def _spend_of(self, tenant: str, spent: Mapping[Window, float], now: float) -> TenantSpend:
        cfg = self.budgets.get(tenant) or BudgetConfig()
        return TenantSpend(
            hour=spent["hour"],
            day=spent["day"],
            per_hour=cfg.per_hour,
            per_day=cfg.per_day,
            hour_resets_at=iso(reset_at("hour", now)),
            day_resets_at=iso(reset_at("day", now)),
        )


class RedisBudgets(LocalBudgets):
    """Spend shared by every process through Redis; see the module docstring."""

    def __init__(
        self,
        url: str,
        namespace: str,
        budgets: Mapping[str, BudgetConfig],
        *,
        timeout_s: float = 0.05,
        refresh_s: float = REFRESH_S,
    ) -> None:
        super().__init__(budgets)
        self.namespace = namespace
        self.refresh_s = refresh_s
        self.redis = GuardedRedis(
            url,
            timeout_s=timeout_s,
            what="budgets",
            on_down_note="spend is counted in this process alone",
        )
        self._pending: dict[tuple[str, Window, int], float] = {}  # recorded, not yet sent
        self._stale: dict[str, float] = {}  # tenant -> the unix time it was asked at
        self._read_at: dict[str, float] = {}  # tenant -> monotonic time of its last read
        self._wake = asyncio.Event()
        self._exchanging = asyncio.Lock()  # one exchange at a time keeps the view's sums right
        self._sender: asyncio.Task[None] | None = None

    @property
    def healthy(self) -> bool:
        return self.redis.healthy

    def key(self, tenant: str, window: Window, wid: int) -> str:
        return f"{self.namespace}:spend:{tenant}:{window[0]}:{wid}"

    async def start(self) -> None:
        await self.redis.start()
        if self._sender is None:
            self._sender = asyncio.get_running_loop().create_task(
                self._send_forever(), name="budgets: redis"
            )

    async def stop(self) -> None:
        """Send what is still pending (bounded by the timeout), then close."""
        sender, self._sender = self._sender, None
        if sender is not None:
            sender.cancel()
            await asyncio.wait([sender])
            with contextlib.suppress(RedisUnavailable):
                await self._exchange()
        await self.redis.stop()

    async def record(self, tenant: str, cost: float, now_unix: float) -> None:
        if cost > 0:
            await super().record(tenant, cost, now_unix)
            for window in WINDOW_S:
                entry = (tenant, window, window_id(window, now_unix))
                self._pending[entry] = self._pending.get(entry, 0.0) + cost
            self._wake.set()

    def allowed(self, tenant: str, now_unix: float) -> BudgetCheck:
        if tenant in self.budgets:
            read_at = self._read_at.get(tenant)
            if read_at is None or time.monotonic() - read_at > self.refresh_s:
                self._stale[tenant] = now_unix
                self._wake.set()
        return super().allowed(tenant, now_unix)

    async def spend(
        self, tenants: Iterable[str] | None = None, now_unix: float | None = None
    ) -> dict[str, TenantSpend]:
        now = time.time() if now_unix is None else now_unix
        names = list(self.budgets if tenants is None else tenants)
        self._stale.update({t: now for t in names})
        with contextlib.suppress(RedisUnavailable):
            await self._exchange()  # fresh figures; the local view when Redis is down
        return await super().spend(names, now)

    async def _send_forever(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            with contextlib.suppress(RedisUnavailable):
                await self._exchange()
            # At most one exchange per refresh_s: spend sent in batches, re-reads bounded.
            await asyncio.sleep(self.refresh_s)

    async def _exchange(self) -> None:
        async with self._exchanging:
            await self._exchange_now()

    async def _exchange_now(self) -> None:
        """Send the pending spend and re-read the stale tenants, in one round trip."""
        pending, self._pending = self._pending, {}
        stale, self._stale = self._stale, {}
        if not pending and not stale:
            return
        reads = [
            (tenant, window, window_id(window, asked))
            for tenant, asked in stale.items()
            for window in WINDOW_S
        ]

        async def exchange(client: Any) -> list[Any]:
            async with client.pipeline(transaction=False) as pipe:
                for (tenant, window, wid), cost in pending.items():
                    key = self.key(tenant, window, wid)
                    pipe.incrbyfloat(key, cost)
                    pipe.expireat(key, (wid + 2) * WINDOW_S[window])  # a window past its end
                for tenant, window, wid in reads:
                    pipe.get(self.key(tenant, window, wid))
                return await pipe.execute()

        try:
            replies = await self.redis.call(exchange)
        except RedisUnavailable:
            for entry, cost in pending.items():  # sent when Redis is back
                self._pending[entry] = self._pending.get(entry, 0.0) + cost
            if pending:
                self._wake.set()  # try again (calls fail at once while Redis is down)
            raise
        sums = replies[: 2 * len(pending) : 2]  # each INCRBYFLOAT's new total
        totals = [(entry, float(total)) for entry, total in zip(pending, sums, strict=True)]
        got = replies[2 * len(pending) :]
        totals += [(entry, float(value or 0.0)) for entry, value in zip(reads, got, strict=True)]
        for (tenant, window, wid), total in totals:
            # What was recorded here since the exchange began is not in Redis's figure yet.
            self._set(tenant, window, wid, total + self._pending.get((tenant, window, wid), 0.0))
        now = time.monotonic()
        for tenant in stale:
            self._read_at[tenant] = now
