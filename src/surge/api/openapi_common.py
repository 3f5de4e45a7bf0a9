"""The pieces every part of the OpenAPI document shares: error shapes, the headers every
answer carries, refusals by status, and the security schemes.

Errors come in three shapes, one per protocol (see `errors.py`): each path's refusals
point at the responses of its shape, named `<shape>_<status>` in `components.responses`.
"""

from __future__ import annotations

from typing import Any

JSON = "application/json"
Doc = dict[str, Any]
OBJECT: Doc = {"type": "object"}
ADMIN_TAG = "Admin"

# The protocols' error bodies, as `errors.error_answer` renders them.
ERROR_SCHEMAS: Doc = {
    "V2Error": {
        "description": "Open Inference Protocol error (KServe inference_error_response).",
        "type": "object",
        "properties": {"error": {"type": "string"}},
        "required": ["error"],
    },
    "OpenAIError": {
        "description": "OpenAI error object.",
        "type": "object",
        "properties": {
            "error": {
                "type": "object",
                "properties": {
                    "message": {"type": "string"},
                    "type": {"type": "string"},
                    "code": {"type": ["string", "null"]},
                    "param": {"type": ["string", "null"]},
                },
                "required": ["message", "type", "code"],
            }
        },
        "required": ["error"],
    },
    "AdminError": {
        "description": "Error of the admin API and every other route.",
        "type": "object",
        "properties": {
            "error": {
                "type": "object",
                "properties": {
                    "code": {"type": "string", "description": "stable machine-readable name"},
                    "message": {"type": "string", "description": "what to fix"},
                    "request_id": {"type": "string"},
                },
                "required": ["code", "message", "request_id"],
            }
        },
        "required": ["error"],
    },
}
SHAPES = {"v2": "V2Error", "openai": "OpenAIError", "admin": "AdminError"}

HEADERS: Doc = {
    "X-Request-Id": {
        "description": "The request's id: the client's own when it sent a printable one of "
        "at most 128 characters, otherwise minted. Also the receipt's id.",
        "required": True,
        "schema": {"type": "string"},
    },
    "Retry-After": {
        "description": "Whole seconds to wait before trying again, computed from the "
        "refusal (queue drain time, rate-limit refill, budget reset).",
        "schema": {"type": "integer", "minimum": 1},
    },
    "RateLimit": {
        "description": "IETF draft RateLimit fields: the caller's remaining quota, e.g. "
        '`"requests";r=0;t=1`. Sent on 429s of a rate limit and on answers to keys '
        "that have limits.",
        "schema": {"type": "string"},
    },
    "RateLimit-Policy": {
        "description": 'IETF draft RateLimit-Policy: the limits, e.g. `"requests";q=10;w=1`.',
        "schema": {"type": "string"},
    },
    "WWW-Authenticate": {
        "description": 'How to authenticate: `Bearer realm="surge"`.',
        "schema": {"type": "string"},
    },
    "Server-Timing": {
        "description": "Milliseconds spent in each leg of the request path, then the total.",
        "schema": {"type": "string"},
    },
    "X-Model-Version": {
        "description": "The model version that answered.",
        "schema": {"type": "string"},
    },
    "Inference-Header-Content-Length": {
        "description": "Binary tensor extension: bytes of JSON before the binary outputs.",
        "schema": {"type": "integer", "minimum": 0},
    },
    "X-Feedback-Token": {
        "description": "When a bandit route chose the answer: the proof that rewards it "
        "(`feedback_token` of `POST /v1/feedback`).",
        "schema": {"type": "string"},
    },
    "X-Surge-Route": {
        "description": "model@version that answered, with `; escalated`, `; degraded` or "
        "`; needs-review` when a route did so.",
        "schema": {"type": "string"},
    },
}

# What an inference answer carries besides X-Request-Id.
INFER_ANSWER_HEADERS = (
    "Server-Timing",
    "X-Model-Version",
    "X-Surge-Route",
    "X-Feedback-Token",
    "RateLimit",
    "RateLimit-Policy",
)

# What each refusal means; the headers it carries beyond X-Request-Id.
REFUSALS: dict[int, tuple[str, tuple[str, ...]]] = {
    400: ("Bad input: the message says what to fix.", ()),
    401: ("No valid key: missing, unknown, revoked or expired.", ("WWW-Authenticate",)),
    403: ("The key lacks the scope this call needs.", ()),
    404: ("No such model, version, key, receipt or item.", ()),
    409: ("Conflicts with the current state (e.g. no rollout to promote).", ()),
    413: ("The body exceeds the server's limit (`server.max_body_bytes`).", ()),
    415: ("Unsupported Content-Encoding (identity, gzip and deflate are served).", ()),
    422: ("The model version cannot be loaded (bad manifest or artifact).", ()),
    429: (
        "Too many requests: a rate limit, a tenant's budget or a full queue. "
        "Retry after `Retry-After` seconds.",
        ("Retry-After", "RateLimit", "RateLimit-Policy"),
    ),
    502: ("A remote upstream model failed.", ()),
    503: (
        "Overloaded, draining, shed by a burst mode, or a store is down; retry after "
        "`Retry-After` seconds.",
        ("Retry-After",),
    ),
    504: ("The request's deadline passed before it was answered.", ()),
}

SECURITY_SCHEMES: Doc = {
    "clientKey": {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "sgk_<12-character id>_<secret>",
        "description": "A client key made with `POST /admin/keys`. Without "
        "`auth.required` a call without a key is anonymous (it may infer).",
    },
    "clientApiKey": {
        "type": "apiKey",
        "in": "header",
        "name": "X-Api-Key",
        "description": "The same client key, in its own header.",
    },
    "adminKey": {
        "type": "http",
        "scheme": "bearer",
        "description": "An admin key from the config (`admin.keys`), or a client key "
        "with the `admin` scope.",
    },
    "adminHeader": {
        "type": "apiKey",
        "in": "header",
        "name": "X-Admin-Key",
        "description": "An admin key from the config, in its own header.",
    },
}
CLIENT_SECURITY: list[Doc] = [{"clientKey": []}, {"clientApiKey": []}, {}]
ADMIN_SECURITY: list[Doc] = [{"adminKey": []}, {"adminHeader": []}]
PUBLIC_SECURITY: list[Doc] = [{}]


def ref(name: str) -> Doc:
    return {"$ref": f"#/components/schemas/{name}"}


def param_ref(name: str) -> Doc:
    return {"$ref": f"#/components/parameters/{name}"}


def header_refs(names: tuple[str, ...]) -> Doc:
    return {name: {"$ref": f"#/components/headers/{name}"} for name in ("X-Request-Id", *names)}


def ok(
    description: str,
    schema: Doc | None = None,
    media_type: str = JSON,
    headers: tuple[str, ...] = (),
) -> Doc:
    """A success response: `schema` is its body (none when None)."""
    answer: Doc = {"description": description, "headers": header_refs(headers)}
    if schema is not None:
        answer["content"] = {media_type: {"schema": schema}}
    return answer


def refusals(shape: str, *statuses: int) -> Doc:
    """The error responses of an operation, in its protocol's shape."""
    return {str(s): {"$ref": f"#/components/responses/{shape}_{s}"} for s in statuses}


def error_responses() -> Doc:
    """`components.responses`: every refusal in every shape."""
    responses: Doc = {}
    for shape, schema in SHAPES.items():
        for status, (description, headers) in REFUSALS.items():
            responses[f"{shape}_{status}"] = {
                "description": description,
                "headers": header_refs(headers),
                "content": {JSON: {"schema": ref(schema)}},
            }
    return responses


def json_body(schema: Doc, required: bool = True) -> Doc:
    return {"required": required, "content": {JSON: {"schema": schema}}}


def path_param(name: str, description: str, schema: Doc | None = None) -> Doc:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": schema or {"type": "string", "minLength": 1},
    }


def query_param(name: str, description: str, schema: Doc) -> Doc:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema,
    }


def operation(
    summary: str,
    tag: str,
    responses: Doc,
    security: list[Doc],
    *,
    operation_id: str,
    description: str | None = None,
    parameters: list[Doc] | None = None,
    body: Doc | None = None,
) -> Doc:
    op: Doc = {"summary": summary, "operationId": operation_id, "tags": [tag]}
    if description:
        op["description"] = description
    if parameters:
        op["parameters"] = parameters
    if body is not None:
        op["requestBody"] = body
    op["responses"] = responses
    op["security"] = security
    return op


def listing(field: str, items: Doc = OBJECT) -> Doc:
    """An object holding one array: how the admin views answer (`{"keys": [...]}`)."""
    return {
        "type": "object",
        "properties": {field: {"type": "array", "items": items}},
        "required": [field],
    }


def admin_operation(
    summary: str, operation_id: str, answers: Doc, *statuses: int, tag: str = ADMIN_TAG, **more: Any
) -> Doc:
    """An admin operation: behind an admin key (so 401), refusals in the admin shape."""
    return operation(
        summary,
        tag,
        {**answers, **refusals("admin", 401, *statuses)},
        ADMIN_SECURITY,
        operation_id=operation_id,
        **more,
    )


def admin_view(summary: str, operation_id: str, schema: Doc, *statuses: int, **more: Any) -> Doc:
    """An admin operation answering 200 with `schema`."""
    return admin_operation(
        summary, operation_id, {"200": ok(summary + ".", schema)}, *statuses, **more
    )
