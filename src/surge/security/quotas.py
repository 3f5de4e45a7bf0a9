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

import time
from typing import TYPE_CHECKING, Any

from surge.config import Config
from surge.config_security import RateLimitConfig
from surge.security.rate_limit import UNLIMITED, Limit, LocalLimiter, limits_from_config, priced
from surge.security.ratelimit_headers import rate_limited_error, ratelimit_headers

if TYPE_CHECKING:
    from surge.security.auth import Principal

MAX_CACHED_PRINCIPALS = 20_000


class Quotas:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.local = LocalLimiter()
        self.limiter: Any = None  # a RedisLimiter when redis_url is set (start)
        self.budgets: Any = None
        self._limits: dict[tuple[str | None, str | None], list[Limit]] = {}

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
        return await self.budgets.report(now_unix)

    async def admit(self, principal: Principal, rows: int) -> dict[str, str]:
        """Take one request of `rows` rows from every limit of the caller, or raise 429
        (with Retry-After and RateLimit headers); the headers for the answer."""
        limits = self.limits_for(principal)
        if not limits:
            return {}
        costs = priced(limits, rows)
        if self.limiter is not None:
            decision = await self.limiter.check(costs)
        else:
            decision = self.local.check(costs, time.monotonic())
        if decision is UNLIMITED:
            return {}
        if not decision.allowed:
            raise rate_limited_error(decision)
        return ratelimit_headers(decision)

