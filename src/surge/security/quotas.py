"""Rate limits and budgets on the request path: which limits a caller is under, the one
check per request, and the spend that finished requests add to their tenant's budget.

A request is under up to three sets of limits, checked together, all-or-nothing
(rate_limit.py): its key's (the key's own, else `limits.default_key`), its tenant's
(`tenants.<name>.limits`: every key of the tenant together), and, for calls without a
key, `limits.anonymous`. Each set may limit requests/s and rows/s. With `redis_url` the
counts are shared by every process (redis_limits.py), so N processes together admit the
limit, not N times it; without Redis each process counts alone.

Budgets are checked on this process's view of the tenant's spend (kept fresh from Redis
by budget.py), so the check costs no round trip; spend is added as receipts are written,
off the request path.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client.core import GaugeMetricFamily, Metric

from surge.config import Config
from surge.config_security import RateLimitConfig
from surge.security.budget import LocalBudgets, RedisBudgets
from surge.security.rate_limit import UNLIMITED, Limit, LocalLimiter, limits_from_config, priced
from surge.security.ratelimit_headers import rate_limited_error, ratelimit_headers
from surge.security.redis_limits import RedisLimiter

if TYPE_CHECKING:
    from surge.security.auth import Principal

MAX_CACHED_PRINCIPALS = 20_000


class Quotas:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.local = LocalLimiter()
        limits = config.limits
        timeout_s = limits.redis_timeout_ms / 1000
        self.limiter: RedisLimiter | None = None
        if config.redis_url:
            self.limiter = RedisLimiter(
                config.redis_url, config.registry_namespace, timeout_s=timeout_s,
                on_down=limits.on_store_down, local=self.local,
            )  # fmt: skip
        budgets = {
            name: t.budget
            for name, t in config.tenants.items()
            if t.budget.per_hour is not None or t.budget.per_day is not None
        }
        self.budgets: LocalBudgets | None = None
        if budgets:
            ns = config.registry_namespace
            self.budgets = (
                RedisBudgets(config.redis_url, ns, budgets, timeout_s=timeout_s)
                if config.redis_url
                else LocalBudgets(budgets)
            )
        self._limits: dict[tuple[str | None, str | None], list[Limit]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self.limiter is not None:
            await self.limiter.start()
        if self.budgets is not None:
            await self.budgets.start()

    async def stop(self) -> None:
        if self.limiter is not None:
            await self.limiter.stop()
        if self.budgets is not None:
            await self.budgets.stop()

    def record_spend(self, records: list[dict[str, Any]]) -> None:
        """Add finished requests' cost to their tenants' budgets. Called with each batch
        of receipts on the receipt writer's thread: summed per tenant there, handed to
        the event loop once per tenant."""
        budgets, loop = self.budgets, self._loop
        if budgets is None or loop is None:
            return
        spent: dict[str, float] = defaultdict(float)
        for record in records:
            tenant = record.get("tenant")
            if tenant in budgets.budgets:
                spent[tenant] += sum(run.get("cost", 0.0) for run in record["runs"])
        now = time.time()
        for tenant, cost in spent.items():
            if cost > 0:
                asyncio.run_coroutine_threadsafe(budgets.record(tenant, cost, now), loop)

    def limits_for(self, principal: Principal) -> list[Limit]:
        """The caller's limits (the key's, its tenant's, or the anonymous ones)."""
        cache_key = (principal.key_id, principal.tenant)
        found = self._limits.get(cache_key)
        if found is not None:
            return found
        limits: list[Limit] = []
        if principal.key_id is not None:
            own = (principal.settings or {}).get("limits")
            key_cfg = RateLimitConfig(**own) if own else self.config.limits.default_key
            limits += limits_from_config(key_cfg, f"key:{principal.key_id}")
        else:
            limits += limits_from_config(self.config.limits.anonymous, "anonymous")
        tenant = self.config.tenants.get(principal.tenant) if principal.tenant else None
        if tenant is not None:
            limits += limits_from_config(tenant.limits, f"tenant:{principal.tenant}")
        if len(self._limits) >= MAX_CACHED_PRINCIPALS:
            self._limits.clear()  # rare: rebuilt on demand, a few microseconds each
        self._limits[cache_key] = limits
        return limits

    def check_budget(self, tenant: str | None) -> None:
        """Refuse (429 budget_exhausted) a request of a tenant past its budget."""
        if self.budgets is not None and tenant is not None:
            self.budgets.check(tenant, time.time())

    async def spend_report(self, now_unix: float) -> list[dict[str, Any]]:
        """Each tenant with a budget: its spend this hour and day against the budget."""
        if self.budgets is None:
            return []
        rows = []
        for tenant, spend in (await self.budgets.spend(None, now_unix)).items():
            for window, spent, budget, resets in (
                ("hour", spend.hour, spend.per_hour, spend.hour_resets_at),
                ("day", spend.day, spend.per_day, spend.day_resets_at),
            ):
                share = spent / budget if budget else None
                rows.append({"tenant": tenant, "window": window, "spent": spent,
                             "budget": budget, "share": share, "reset_at": resets})  # fmt: skip
        return rows

    def collect(self) -> Iterator[Metric]:
        """Prometheus: each budget's share spent, and whether limits are shared now."""
        used = GaugeMetricFamily(
            "surge_tenant_budget_used_ratio",
            "Share of the tenant's budget spent in the current window (1 = exhausted)",
            labels=["tenant", "window"],
        )
        if self.budgets is not None:
            for (tenant, window), ratio in self.budgets.spend_ratios(time.time()).items():
                used.add_metric([tenant, window], ratio)
        yield used
        shared = GaugeMetricFamily(
            "surge_rate_limits_shared",
            "1 while rate limits are counted in Redis for every process; 0 while this "
            "process counts alone (Redis down, limits.on_store_down: open)",
        )
        if self.limiter is not None:
            shared.add_metric([], 1.0 if self.limiter.healthy else 0.0)
        yield shared

    async def admit(self, principal: Principal, rows: int, tokens: int = 0) -> dict[str, str]:
        """Take one request of `rows` rows (and `tokens` language-model tokens) from every
        limit of the caller, or raise 429 (with Retry-After and RateLimit headers); the
        headers for the answer."""
        limits = self.limits_for(principal)
        if not limits:
            return {}
        costs = priced(limits, rows, tokens)
        if self.limiter is not None:
            decision = await self.limiter.check(costs)
        else:
            decision = self.local.check(costs, time.monotonic())
        if decision is UNLIMITED:
            return {}
        if not decision.allowed:
            raise rate_limited_error(decision)
        return ratelimit_headers(decision)
