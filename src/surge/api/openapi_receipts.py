"""Receipts in the OpenAPI document: every tenant's under /admin, a client's own under /v1
(the same filters; a `receipts:read` key sees its tenant's receipts and nobody else's)."""

from __future__ import annotations

from surge.api.openapi_common import (
    ADMIN_SECURITY,
    CLIENT_SECURITY,
    Doc,
    ok,
    operation,
    path_param,
    query_param,
    ref,
    refusals,
)

TAG = "Receipts"
BOOLEAN = {"type": "string", "enum": ["true", "false", "1", "0", "yes", "no"]}
TIME = {
    "type": "string",
    "description": "epoch seconds, an ISO 8601 time, or relative: -<n>s|m|h|d",
    "examples": ["-15m", "2026-01-01T00:00:00+00:00", "1767225600"],
}
FILTERS = [
    query_param("endpoint", "Only this endpoint's receipts.", {"type": "string"}),
    query_param(
        "tenant",
        "Only this tenant's (under /v1: the key's own tenant, or 403).",
        {"type": "string"},
    ),
    query_param("status", "Only answers with this HTTP status.", {"type": "integer"}),
    query_param("since", "Answered at or after.", TIME),
    query_param("until", "Answered before.", TIME),
    query_param("escalated", "Only requests a cascade escalated (or not).", BOOLEAN),
    query_param("degraded", "Only degraded answers (or not).", BOOLEAN),
    query_param(
        "limit",
        "At most this many, newest first (default 50).",
        {"type": "integer", "minimum": 0, "maximum": 1000},
    ),
]
REQUEST_ID = path_param("request_id", "The X-Request-Id of the answer.")

SCHEMAS: Doc = {
    "Receipt": {
        "description": "What one request cost and why it went where it went.",
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "time": {"type": "string", "format": "date-time"},
            "time_epoch": {"type": "number"},
            "endpoint": {"type": ["string", "null"]},
            "tenant": {"type": ["string", "null"]},
            "status": {"type": ["integer", "null"]},
            "error": {"type": ["string", "null"]},
            "served_by": {"type": ["string", "null"]},
            "models": {"type": "array", "items": {"type": "string"}},
            "total_ms": {"type": "number"},
            "stages_ms": {"type": "object", "additionalProperties": {"type": "number"}},
            "queue_ms": {"type": "number"},
            "compute_ms": {"type": "number"},
            "runs": {"type": "array", "items": {"type": "object"}},
            "decisions": {"type": "array", "items": {"type": "object"}},
        },
        "required": ["id"],
    },
    "ReceiptList": {
        "type": "object",
        "properties": {"receipts": {"type": "array", "items": ref("Receipt")}},
        "required": ["receipts"],
    },
    "ReceiptLookup": {
        "allOf": [
            ref("Receipt"),
            {
                "type": "object",
                "properties": {"others_with_this_id": {"type": "integer", "minimum": 0}},
                "required": ["others_with_this_id"],
            },
        ]
    },
    "ReceiptSummary": {
        "type": "object",
        "properties": {
            "receipts": {"type": "integer"},
            "cost": {"type": "number"},
            "compute_s": {"type": "number"},
            "energy_j": {"type": "number"},
            "escalated": {"type": "integer"},
            "degraded": {"type": "integer"},
            "written_total": {"type": "integer"},
            "dropped_total": {"type": "integer"},
        },
        "required": ["receipts", "cost", "written_total", "dropped_total"],
    },
}

_NOT_FOUND = "404: no such receipt, or receipts are off (`observability.receipts.enabled`)."


def _search(shape: str, security: list[Doc], operation_id: str, mine: bool) -> Doc:
    return operation(
        "Your tenant's receipts" if mine else "Search receipts",
        TAG,
        {
            "200": ok("Receipts, newest first.", ref("ReceiptList")),
            **refusals(shape, 400, 401, 403, 404, 503),
        },
        security,
        operation_id=operation_id,
        description="400 on an unknown filter. " + _NOT_FOUND,
        parameters=FILTERS,
    )


def _lookup(shape: str, security: list[Doc], operation_id: str, mine: bool) -> Doc:
    return operation(
        "One of your tenant's receipts" if mine else "One receipt",
        TAG,
        {
            "200": ok("The newest receipt with this id.", ref("ReceiptLookup")),
            **refusals(shape, 401, 403, 404, 503),
        },
        security,
        operation_id=operation_id,
        description=_NOT_FOUND + (" Another tenant's receipt is not found." if mine else ""),
        parameters=[REQUEST_ID],
    )


PATHS: Doc = {
    "/v1/receipts": {
        "get": _search("openai", CLIENT_SECURITY, "own_receipts", mine=True),
    },
    "/v1/receipts/{request_id}": {
        "get": _lookup("openai", CLIENT_SECURITY, "own_receipt", mine=True),
    },
    "/admin/receipts": {
        "get": _search("admin", ADMIN_SECURITY, "admin_receipts", mine=False),
    },
    "/admin/receipts/summary": {
        "get": operation(
            "Receipt totals",
            TAG,
            {
                "200": ok("Totals over the filters.", ref("ReceiptSummary")),
                **refusals("admin", 400, 401, 404, 503),
            },
            ADMIN_SECURITY,
            operation_id="admin_receipt_summary",
            parameters=FILTERS,
        )
    },
    "/admin/receipts/{request_id}": {
        "get": _lookup("admin", ADMIN_SECURITY, "admin_receipt", mine=False),
    },
}
