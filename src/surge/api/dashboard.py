"""The live dashboard: GET /dashboard (one self-contained page) and GET /dashboard/snapshot
(the JSON the page polls every second, see observe/snapshot.py).

Like /metrics, it needs a key only with `auth.protect_metrics`, so it shows nothing a
stranger could act on or learn a caller from: aggregates, and the latest receipts'
endpoints, route choices, timings and costs, never request ids (feedback and receipt
lookups take them), inputs, outputs, tenants or the reasons' quoted headers. Expose it
only where /metrics may be seen.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from surge.core.clock import monotonic
from surge.observe.snapshot import SnapshotRates, build_snapshot


@dataclass(frozen=True)
class DashboardPage:
    html: bytes
    content_security_policy: str


@cache
def dashboard_page() -> DashboardPage:
    """The page, and a CSP that lets only its own inline script and style run and only
    its own origin be fetched: the page works offline, and anything that tried to load
    from elsewhere would be refused (and show as a console error in the browser test)."""
    html = resources.files("surge.observe").joinpath("dashboard.html").read_text("utf-8")

    def hashes(tag: str) -> str:
        blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", html, flags=re.DOTALL)
        return " ".join(
            f"'sha256-{base64.b64encode(hashlib.sha256(b.encode()).digest()).decode()}'"
            for b in blocks
        )

    policy = (
        f"default-src 'none'; script-src {hashes('script')}; style-src {hashes('style')}; "
        "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    )
    return DashboardPage(html.encode("utf-8"), policy)


async def page(request: Request) -> Response:
    found = dashboard_page()
    return Response(
        found.html,
        media_type="text/html; charset=utf-8",
        headers={
            "Content-Security-Policy": found.content_security_policy,
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "no-store",
        },
    )


async def snapshot(request: Request) -> Response:
    # The rates live with the app (one per server process), so every open page reads
    # throughput against the same recent history.
    app_state = request.app.state
    rates = getattr(app_state, "dashboard_rates", None)
    if rates is None:
        rates = app_state.dashboard_rates = SnapshotRates()
    body = build_snapshot(app_state.surge, monotonic(), rates)
    return Response(
        orjson.dumps(body),
        media_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


ROUTES = [
    Route("/dashboard", page),
    Route("/dashboard/snapshot", snapshot),
]
