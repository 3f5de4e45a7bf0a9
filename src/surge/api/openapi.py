"""`GET /openapi.json`: the OpenAPI 3.1 document of every route surge serves.

The document is data, assembled from one module per part (openapi_v2.py: the Open
Inference Protocol; openapi_v1.py: OpenAI embeddings and feedback; openapi_receipts.py;
openapi_admin.py: the admin API, keys and budgets) and the operational routes below.
A copy is checked in at docs/openapi.json for readers and client generators; after a
change, write it again with

    python -m surge.api.openapi > docs/openapi.json

(tests/unit/test_openapi.py fails while the two differ, and while any route the app
serves has no entry here.)
"""

from __future__ import annotations

import json
import sys
from functools import cache

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from surge import __version__
from surge.api import (
    openapi_admin,
    openapi_chat,
    openapi_keys,
    openapi_receipts,
    openapi_v1,
    openapi_v2,
)
from surge.api.openapi_common import (
    ADMIN_TAG,
    ERROR_SCHEMAS,
    HEADERS,
    PUBLIC_SECURITY,
    SECURITY_SCHEMES,
    Doc,
    error_responses,
    ok,
    operation,
    refusals,
)

OPS_TAG = "Operations"
METRICS_SECURITY: list[Doc] = [{"clientKey": []}, {"clientApiKey": []}, {}]

OPERATIONS_PATHS: Doc = {
    "/metrics": {
        "get": operation(
            "Prometheus metrics",
            OPS_TAG,
            {
                "200": ok("Prometheus text exposition format.", {"type": "string"}, "text/plain"),
                **refusals("admin", 401, 403),
            },
            METRICS_SECURITY,
            operation_id="metrics",
            description="Open by default; a key with the `metrics` scope when "
            "`auth.protect_metrics`.",
        )
    },
    "/dashboard": {
        "get": operation(
            "Live dashboard",
            OPS_TAG,
            {
                "200": ok("One self-contained HTML page.", {"type": "string"}, "text/html"),
                **refusals("admin", 401, 403),
            },
            METRICS_SECURITY,
            operation_id="dashboard",
            description="Aggregates and the latest receipts' timings and costs (never "
            "inputs, outputs or tenants); guarded like /metrics.",
        )
    },
    "/dashboard/snapshot": {
        "get": operation(
            "Dashboard data",
            OPS_TAG,
            {
                "200": ok("What the dashboard polls every second.", {"type": "object"}),
                **refusals("admin", 401, 403),
            },
            METRICS_SECURITY,
            operation_id="dashboard_snapshot",
        )
    },
    "/openapi.json": {
        "get": operation(
            "This document",
            OPS_TAG,
            {"200": ok("The OpenAPI 3.1 document.", {"type": "object"})},
            PUBLIC_SECURITY,
            operation_id="openapi",
        )
    },
}

TAGS = [
    {
        "name": openapi_v2.TAG,
        "description": "KServe / Triton REST (Open Inference Protocol v2), "
        'with the binary tensor extension. Errors: `{"error": "..."}`.',
    },
    {
        "name": openapi_v1.TAG,
        "description": "OpenAI's embeddings API. Errors: "
        '`{"error": {"message", "type", "code", "param"}}`.',
    },
    {"name": openapi_v1.FEEDBACK_TAG, "description": "Rewards for bandit routes."},
    {"name": openapi_receipts.TAG, "description": "Per-request cost, energy and routing."},
    {
        "name": ADMIN_TAG,
        "description": "Views and rollouts. Errors: "
        '`{"error": {"code", "message", "request_id"}}`.',
    },
    {"name": openapi_keys.TAG, "description": "Client keys, tenants' spend."},
    {"name": OPS_TAG, "description": "Metrics, dashboard and this document."},
]


@cache
def document() -> Doc:
    """The whole document (built once per process: it depends on no config)."""
    parts = (openapi_v2, openapi_v1, openapi_chat, openapi_receipts, openapi_admin, openapi_keys)
    paths: Doc = {}
    schemas: Doc = dict(ERROR_SCHEMAS)
    for part in parts:
        paths.update(part.PATHS)
        schemas.update(part.SCHEMAS)
    paths.update(OPERATIONS_PATHS)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "surge",
            "version": __version__,
            "summary": "Inference serving: Open Inference Protocol v2, OpenAI embeddings, "
            "receipts and an admin API.",
            "description": "Every answer carries `X-Request-Id`. Overload is 429 or 503 "
            "with `Retry-After`; a missed deadline is 504; each protocol renders its "
            "errors in its own shape.",
        },
        "tags": TAGS,
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": schemas,
            "responses": error_responses(),
            "headers": HEADERS,
            "parameters": openapi_v2.PARAMETERS,
            "securitySchemes": SECURITY_SCHEMES,
        },
    }


@cache
def render() -> bytes:
    """The document as served and as checked in (stable key order, one trailing newline)."""
    return (json.dumps(document(), indent=2, ensure_ascii=False) + "\n").encode("utf-8")


async def openapi_json(request: Request) -> Response:
    return Response(render(), media_type="application/json")


ROUTES = [Route("/openapi.json", openapi_json)]

if __name__ == "__main__":
    sys.stdout.write(render().decode("utf-8"))
