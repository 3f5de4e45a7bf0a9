"""The security part of the config schema: client keys, tenants, rate limits and budgets
(README: "Keys, tenants and limits")."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

TENANT_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RateLimitConfig(_Strict):
    """A rate with a burst (GCRA): `requests_per_s` on average, at most `burst` at once.

    Unset rates are not limited. A burst of N lets N requests through back to back after
    a quiet spell; over a long window the admitted count is rate x time + burst.
    """

    requests_per_s: float | None = Field(None, gt=0, description="requests per second")
    requests_burst: int | None = Field(
        None,
        ge=1,
        description="requests admitted back to back (default: 5 % of a second's worth, at least 1)",
    )
    rows_per_s: float | None = Field(None, gt=0, description="input rows (texts) per second")
    rows_burst: int | None = Field(
        None,
        ge=1,
        description="rows admitted back to back, and so the most rows one request may carry "
        "(a larger one is refused with 413); default 5 % of a second's worth, >= 1",
    )
    tokens_per_minute: float | None = Field(
        None,
        gt=0,
        description="language-model tokens per minute: a chat request takes its prompt's "
        "tokens plus its max_tokens when admitted (as Azure OpenAI counts TPM)",
    )
    tokens_burst: int | None = Field(
        None,
        ge=1,
        description="tokens admitted back to back, and so the most one chat request may "
        "take (a larger one is refused with 413); default a minute's worth",
    )


class BudgetConfig(_Strict):
    """A tenant's spend (the receipts' cost, in the cost config's currency) per window."""

    per_hour: float | None = Field(None, gt=0, description="spend allowed per clock hour (UTC)")
    per_day: float | None = Field(None, gt=0, description="spend allowed per UTC day")
    warn_at: float = Field(
        0.8, gt=0, le=1, description="share of a budget that raises the warning (metric, log)"
    )


class TenantConfig(_Strict):
    priority: int = Field(
        1, ge=0, le=9, description="priority of its requests (0 is shed first in a burst mode)"
    )
    limits: RateLimitConfig = Field(
        default_factory=RateLimitConfig, description="for the whole tenant, all keys together"
    )
    budget: BudgetConfig = Field(default_factory=BudgetConfig)


class AuthConfig(_Strict):
    required: bool = Field(
        False,
        description="every inference, feedback and receipt call needs a client key "
        "(off for the demo; on with one line)",
    )
    anonymous_identity_headers: bool = Field(
        True,
        description="with auth not required, a call without a key may name its tenant and "
        "priority with X-Tenant and X-Priority (a trusted network); false: such calls get "
        "no tenant and the default priority",
    )
    protect_metrics: bool = Field(
        False, description="/metrics and /dashboard need a key with the 'metrics' scope"
    )
    verify_concurrency: int = Field(
        2, ge=1, description="key hashes checked at once (each is deliberately slow)"
    )


class LimitsConfig(_Strict):
    """Where the rate limits and budgets are counted."""

    on_store_down: Literal["open", "closed"] = Field(
        "open",
        description="when Redis does not answer: 'open' counts in this process alone "
        "(each process admits the whole limit), 'closed' refuses with 503",
    )
    redis_timeout_ms: float = Field(
        50.0, gt=0, description="longest a limit check waits for Redis before falling back"
    )
    default_key: RateLimitConfig = Field(
        default_factory=RateLimitConfig,
        description="the limits of a key created without its own",
    )
    anonymous: RateLimitConfig = Field(
        default_factory=RateLimitConfig,
        description="limits shared by all calls without a key (when auth is not required)",
    )


def check_tenant_names(tenants: dict[str, TenantConfig]) -> None:
    bad = [t for t in tenants if not re.fullmatch(TENANT_PATTERN, t)]
    if bad:
        raise ValueError(f"tenant names {bad} must match {TENANT_PATTERN}")
