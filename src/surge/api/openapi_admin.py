"""The admin part of the OpenAPI document: views, rollouts, burst modes and the review
queue, behind an admin key and answered in the admin error shape (keys and budgets:
openapi_keys.py).

The views' bodies are described by their top-level fields: what is inside an endpoint's
status or a route's statistics grows with the platform, and the CLI reads them by name.
"""

from __future__ import annotations

from surge.api.openapi_common import (
    OBJECT,
    Doc,
    admin_view,
    json_body,
    listing,
    path_param,
    query_param,
    ref,
)
from surge.config import AB_KEY_PATTERN
from surge.serving.rollouts import DEPLOY_MODES

NAME = {"type": "string", "minLength": 1}


SCHEMAS: Doc = {
    "DeployRequest": {
        "type": "object",
        "properties": {
            "version": NAME,
            "model": {**NAME, "description": "default: the endpoint's model"},
            "mode": {"type": "string", "enum": list(DEPLOY_MODES), "default": "swap"},
            "percent": {"type": "number", "exclusiveMinimum": 0, "maximum": 100},
            "ab_key": {"type": "string", "pattern": AB_KEY_PATTERN},
        },
        "required": ["version"],
    },
    "Reason": {"type": "object", "properties": {"reason": {"type": "string"}}},
    "ForceMode": {
        "type": "object",
        "properties": {"mode": NAME, "reason": {"type": "string"}},
        "required": ["mode"],
    },
    "Label": {"type": "object", "properties": {"label": {}}, "required": ["label"]},
}

ITEM_ID = {"type": "integer", "minimum": 0, "maximum": 2**63 - 1}  # a database row id
ENDPOINT = path_param("endpoint", "An endpoint or route name.")
LIMIT = query_param(
    "limit", "At most this many (default 100).", {"type": "integer", "minimum": 1, "maximum": 10000}
)


def _decide(operation: str) -> Doc:
    return admin_view(
        f"{operation.capitalize()} the candidate",
        f"admin_{operation}",
        OBJECT,
        400,
        404,
        409,
        413,
        parameters=[ENDPOINT],
        body=json_body(ref("Reason"), required=False),
    )


PATHS: Doc = {
    "/admin/endpoints": {
        "get": admin_view(
            "Every deployment: how it runs and what it measured",
            "admin_endpoints",
            listing("endpoints"),
        )
    },
    "/admin/endpoints/{endpoint}": {
        "get": admin_view(
            "An endpoint's rollout status",
            "admin_endpoint_status",
            OBJECT,
            404,
            parameters=[ENDPOINT],
        )
    },
    "/admin/endpoints/{endpoint}/deploy": {
        "post": admin_view(
            "Deploy a version",
            "admin_deploy",
            OBJECT,
            400,
            404,
            409,
            413,
            422,
            parameters=[ENDPOINT],
            body=json_body(ref("DeployRequest")),
        )
    },
    "/admin/endpoints/{endpoint}/promote": {"post": _decide("promote")},
    "/admin/endpoints/{endpoint}/rollback": {"post": _decide("rollback")},
    "/admin/history": {
        "get": admin_view(
            "Audit history of route changes",
            "admin_history",
            listing("entries"),
            400,
            parameters=[
                query_param("endpoint", "One endpoint's.", NAME),
                query_param("action", "One action's.", NAME),
                LIMIT,
            ],
        )
    },
    "/admin/versions": {
        "get": admin_view(
            "Registered model versions",
            "admin_versions",
            listing("versions"),
            parameters=[query_param("model", "One model's.", NAME)],
        )
    },
    "/admin/review": {
        "get": admin_view(
            "The review queue",
            "admin_review_queue",
            listing("items"),
            400,
            parameters=[
                query_param("endpoint", "One endpoint's.", NAME),
                query_param(
                    "state",
                    "Default pending.",
                    {"type": "string", "enum": ["pending", "labelled", "all"]},
                ),
                LIMIT,
            ],
        )
    },
    "/admin/review/{item}": {
        "post": admin_view(
            "Label a review item",
            "admin_label_review",
            OBJECT,
            400,
            404,
            413,
            parameters=[path_param("item", "The item's id.", ITEM_ID)],
            body=json_body(ref("Label")),
        )
    },
    "/admin/mode": {
        "get": admin_view("The burst mode, its switches and signals", "admin_mode", OBJECT),
        "post": admin_view(
            "Force a mode until released",
            "admin_force_mode",
            OBJECT,
            400,
            413,
            body=json_body(ref("ForceMode")),
        ),
        "delete": admin_view(
            "Release a forced mode",
            "admin_release_mode",
            OBJECT,
            400,
            413,
            body=json_body(ref("Reason"), required=False),
        ),
    },
    "/admin/routes": {
        "get": admin_view(
            "Every route's decisions, breakers and bandit",
            "admin_routes",
            {"type": "object", "properties": {"routes": OBJECT}, "required": ["routes"]},
        )
    },
    "/admin/processes": {
        "get": admin_view(
            "Live processes on this registry", "admin_processes", listing("processes"), 503
        )
    },
    "/admin/costs": {
        "get": admin_view(
            "Attributed cost and energy per endpoint and version",
            "admin_costs",
            {
                "type": "object",
                "properties": {
                    "endpoints": {},
                    "energy_sources": {},
                    "by_tenant": {},
                    "cache_saved": {},
                },
                "required": ["endpoints", "energy_sources"],
            },
        )
    },
    "/admin/cache": {
        "get": admin_view(
            "Each response cache: requests and rows by result, bytes, savings",
            "admin_cache",
            {"type": "object", "properties": {"endpoints": OBJECT}, "required": ["endpoints"]},
        )
    },
    "/admin/cache/{endpoint}/purge": {
        "post": admin_view(
            "Purge an endpoint's response cache (Redis, and every process's memory)",
            "admin_cache_purge",
            OBJECT,
            404,
            parameters=[path_param("endpoint", "An endpoint with a response cache.")],
        )
    },
}
