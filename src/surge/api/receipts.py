"""Receipts and costs under /admin, behind the admin key (receipts name tenants and models);
and each tenant's own receipts under /v1, for a client key with the `receipts:read` scope.

GET /admin/receipts/{request_id}   the request's receipt (newest first if an id was reused)
GET /admin/receipts?endpoint=&tenant=&status=&since=&until=&escalated=&degraded=&limit=
GET /admin/receipts/summary?...    totals over the same filters (count, cost, energy)
GET /admin/costs                   per endpoint and version: attributed cost, energy, idle line
GET /v1/receipts?...  GET /v1/receipts/{request_id}   the caller's tenant's receipts only
"""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from surge.api.admin import _authorized, _json
from surge.api.auth_middleware import caller
from surge.api.state import ServerState
from surge.core.clock import monotonic
from surge.core.errors import SurgeError, bad_input
from surge.observe.receipts import ReceiptLog
from surge.security.auth import require
from surge.store.receipts import ReceiptFilter

MAX_LIMIT = 1000
BOOLEANS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def _log(request: Request) -> ReceiptLog:
    state, _ = _authorized(request)
    return _receipt_log(state)


def _receipt_log(state: ServerState) -> ReceiptLog:
    receipts = state.observer.receipts
    if receipts is None:
        raise SurgeError(
            "receipts_disabled", "receipts are off (observability.receipts.enabled)", 404
        )
    return receipts


def _time(name: str, raw: str) -> float:
    """Epoch seconds, an ISO 8601 time, or a relative '-15m' / '-2h' / '-1d'."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        if raw.startswith("-") and raw[-1] in units:
            return time.time() - float(raw[1:-1]) * units[raw[-1]]
        return float(raw)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(raw).timestamp()
    except ValueError:
        raise bad_input(
            f"{name} must be epoch seconds, an ISO 8601 time or -<n>s|m|h|d, got {raw!r}"
        ) from None


def _filter(request: Request) -> ReceiptFilter:
    q = request.query_params
    known = {"endpoint", "tenant", "status", "since", "until", "escalated", "degraded", "limit"}
    unknown = sorted(set(q) - known)
    if unknown:
        raise bad_input(f"unknown filter(s) {unknown}; known: {sorted(known)}")
    fields: dict[str, Any] = {"endpoint": q.get("endpoint"), "tenant": q.get("tenant")}
    for name in ("status", "limit"):
        if name in q:
            try:
                fields[name] = int(q[name])
            except ValueError:
                raise bad_input(f"{name} must be a whole number, got {q[name]!r}") from None
    if not 0 <= fields.get("limit", 50) <= MAX_LIMIT:
        raise bad_input(f"limit must lie in 0..{MAX_LIMIT}")
    for name in ("since", "until"):
        if name in q:
            fields[name] = _time(name, q[name])
    for name in ("escalated", "degraded"):
        if name in q:
            value = BOOLEANS.get(q[name].lower())
            if value is None:
                raise bad_input(f"{name} must be true or false, got {q[name]!r}")
            fields[name] = value
    return ReceiptFilter(**fields)


async def receipt(request: Request) -> Response:
    request_id = request.path_params["request_id"]
    found = await _log(request).lookup(request_id)
    return _one(request_id, found)


def _one(request_id: str, found: list[dict[str, Any]]) -> Response:
    if not found:
        raise SurgeError(
            "receipt_not_found",
            f"no receipt for request {request_id!r} (unknown, not yet answered, "
            "dropped when the buffer was full, or past the retention)",
            404,
        )
    return _json({**found[0], "others_with_this_id": len(found) - 1})


async def receipts(request: Request) -> Response:
    selection = _filter(request)
    return _json({"receipts": await _log(request).search(selection)})


async def summary(request: Request) -> Response:
    selection = _filter(request)
    log = _log(request)
    totals = await log.summary(selection)
    written, dropped = log.counts()
    return _json({**totals, "written_total": written, "dropped_total": dropped})


async def costs(request: Request) -> Response:
    state, _ = _authorized(request)
    observer = state.observer
    return _json(
        {
            "endpoints": observer.costs.snapshot(state.endpoints, monotonic()),
            "by_tenant": observer.costs.by_tenant(),
            "cache_saved": observer.costs.cache_savings(),
            "energy_sources": observer.energy_sources(state.endpoints),
        }
    )


# -- a client's own receipts: a key with `receipts:read` sees its tenant's, nobody else's ----


def _tenant_reader(request: Request) -> tuple[ReceiptLog, str]:
    state: ServerState = request.app.state.surge
    principal = caller(request)
    require(principal, "receipts:read")
    if principal.tenant is None:
        raise SurgeError("forbidden", "receipts are read with a key that belongs to a tenant", 403)
    return _receipt_log(state), principal.tenant


async def own_receipts(request: Request) -> Response:
    log, tenant = _tenant_reader(request)
    if request.query_params.get("tenant") not in (None, tenant):
        raise SurgeError("forbidden", f"this key reads only the receipts of {tenant!r}", 403)
    selection = replace(_filter(request), tenant=tenant)
    return _json({"receipts": await log.search(selection)})


async def own_receipt(request: Request) -> Response:
    log, tenant = _tenant_reader(request)
    request_id = request.path_params["request_id"]
    # Another tenant's receipt is "not found", not "forbidden": its existence is not ours.
    found = [r for r in await log.lookup(request_id) if r.get("tenant") == tenant]
    return _one(request_id, found)


ROUTES = [
    Route("/v1/receipts", own_receipts),
    Route("/v1/receipts/{request_id:path}", own_receipt),
    Route("/admin/receipts", receipts),
    Route("/admin/receipts/summary", summary),  # before {request_id}: Starlette tries in order
    Route("/admin/receipts/{request_id:path}", receipt),
    Route("/admin/costs", costs),
]
