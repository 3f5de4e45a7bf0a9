"""The inference routes' checks of who may call what, and how much: the caller was
identified in front of the framework (`inference_routes.py`); these run once the
endpoint (and, for quotas, the number of rows) is known."""

from __future__ import annotations

from surge.api.exchange import Exchange
from surge.security.auth import require


def authorize(exchange: Exchange, endpoint: str) -> None:
    """403 unless the caller's key may call `endpoint` (`infer` or `infer:<endpoint>`)."""
    require(exchange.scope["surge.principal"], "infer", endpoint)


async def admit_quota(exchange: Exchange, rows: int, tokens: int = 0) -> None:
    """Refuse a tenant past its budget, then take the request from the caller's rate
    limits (429 with Retry-After and RateLimit headers); the answer carries the
    RateLimit headers too, so a client sees how close it is."""
    quotas = exchange.state.quotas
    if quotas is None:
        return
    principal = exchange.scope["surge.principal"]
    quotas.check_budget(principal.tenant)
    headers = await quotas.admit(principal, rows, tokens)
    if headers:
        exchange.scope["surge.ratelimit"] = headers
