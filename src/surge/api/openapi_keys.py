"""Client keys and tenants' budgets in the OpenAPI document (`/admin/keys`,
`/admin/budgets`): what `POST /admin/keys` takes, and the key object every key route
answers with. The secret (`key`) appears only in the answers that made it."""

from __future__ import annotations

from surge.api.openapi_common import (
    Doc,
    admin_operation,
    admin_view,
    json_body,
    listing,
    ok,
    path_param,
    ref,
)
from surge.config_security import TENANT_PATTERN
from surge.security.keys import SCOPES

TAG = "Admin: keys and budgets"
TENANT = {"type": "string", "pattern": TENANT_PATTERN}
SCOPE = {
    "type": "string",
    "description": "infer (every endpoint), infer:<endpoint> (one), feedback, "
    "receipts:read (the key's tenant's receipts), metrics, gateway (may set X-Tenant and "
    "X-Priority), admin (everything)",
    "anyOf": [{"enum": list(SCOPES)}, {"pattern": "^infer:[A-Za-z0-9._-]{1,128}$"}],
}
UNIX_TIME_OR_NULL = {"type": ["number", "null"], "description": "unix seconds"}
KEY_ID = path_param("key_id", "A key's id (its visible prefix).")

SCHEMAS: Doc = {
    "RateLimits": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "requests_per_s": {"type": "number", "exclusiveMinimum": 0},
            "requests_burst": {"type": "integer", "minimum": 1},
            "rows_per_s": {"type": "number", "exclusiveMinimum": 0},
            "rows_burst": {"type": "integer", "minimum": 1},
        },
    },
    "Key": {
        "description": "A client key as stored: never the key itself, nor its hash.",
        "type": "object",
        "properties": {
            "id": {"type": "string", "description": "the key's visible prefix"},
            "name": {"type": "string"},
            "tenant": {"type": "string"},
            "scopes": {"type": "array", "items": {"type": "string"}},
            "created_at": {"type": "number", "description": "unix seconds"},
            "created_by": {"type": "string"},
            "expires_at": UNIX_TIME_OR_NULL,
            "revoked_at": UNIX_TIME_OR_NULL,
            "last_used_at": UNIX_TIME_OR_NULL,
            "settings": {
                "type": "object",
                "properties": {
                    "limits": ref("RateLimits"),
                    "priority": {"type": "integer", "minimum": 0, "maximum": 9},
                },
            },
        },
        "required": [
            "id",
            "name",
            "tenant",
            "scopes",
            "created_at",
            "created_by",
            "expires_at",
            "revoked_at",
            "last_used_at",
            "settings",
        ],
    },
    "NewKey": {
        "allOf": [
            ref("Key"),
            {
                "type": "object",
                "properties": {
                    "key": {
                        "type": "string",
                        "pattern": "^sgk_[a-z0-9]{12}_[A-Za-z0-9_-]+$",
                        "description": "the secret: shown this once, never again",
                    },
                },
                "required": ["key"],
            },
        ]
    },
    "CreateKeyRequest": {
        "type": "object",
        "properties": {
            "tenant": TENANT,
            "name": {"type": "string", "maxLength": 200},
            "scopes": {"type": "array", "items": SCOPE, "minItems": 1, "default": ["infer"]},
            "expires_in_s": {"type": "number", "exclusiveMinimum": 0, "maximum": 315360000},
            "limits": ref("RateLimits"),
            "priority": {"type": "integer", "minimum": 0, "maximum": 9},
        },
        "required": ["tenant"],
    },
    "RotateKeyRequest": {
        "type": "object",
        "properties": {
            "grace_s": {
                "type": "number",
                "minimum": 0,
                "default": 0,
                "description": "how long the old key keeps working",
            },
        },
    },
    "KeyList": listing("keys", ref("Key")),
    "Budgets": listing(
        "tenants",
        {
            "type": "object",
            "properties": {
                "tenant": {"type": "string"},
                "window": {"type": "string", "enum": ["hour", "day"]},
                "spent": {"type": "number"},
                "budget": {"type": "number"},
                "reset_at": {"type": "number", "description": "unix seconds"},
                "share": {"type": "number", "description": "spent / budget"},
            },
            "required": ["tenant", "window", "spent", "budget", "reset_at", "share"],
        },
    ),
}

PATHS: Doc = {
    "/admin/keys": {
        "get": admin_view("Every client key", "admin_list_keys", ref("KeyList"), tag=TAG),
        "post": admin_operation(
            "Make a client key",
            "admin_create_key",
            {"201": ok("The key, with its secret shown this once.", ref("NewKey"))},
            400,
            409,
            413,
            tag=TAG,
            body=json_body(ref("CreateKeyRequest")),
        ),
    },
    "/admin/keys/{key_id}": {
        "get": admin_view(
            "One client key", "admin_get_key", ref("Key"), 404, tag=TAG, parameters=[KEY_ID]
        ),
        "delete": admin_view(
            "Revoke a key: refused everywhere within a second",
            "admin_revoke_key",
            ref("Key"),
            404,
            tag=TAG,
            parameters=[KEY_ID],
        ),
    },
    "/admin/keys/{key_id}/rotate": {
        "post": admin_operation(
            "Rotate a key",
            "admin_rotate_key",
            {
                "201": ok(
                    "The new key, with its secret shown this once; the old "
                    "one works for grace_s more.",
                    ref("NewKey"),
                )
            },
            400,
            404,
            409,
            413,
            tag=TAG,
            parameters=[KEY_ID],
            body=json_body(ref("RotateKeyRequest"), required=False),
        )
    },
    "/admin/budgets": {
        "get": admin_view(
            "Each tenant's spend this hour and day against its budget",
            "admin_budgets",
            ref("Budgets"),
            tag=TAG,
        )
    },
}
