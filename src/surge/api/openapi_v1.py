"""The /v1 part of the OpenAPI document: OpenAI-compatible embeddings and model list
(in OpenAI's shapes, so stock clients and generators work), and bandit feedback."""

from __future__ import annotations

from surge.api.openapi_common import (
    CLIENT_SECURITY,
    INFER_ANSWER_HEADERS,
    Doc,
    json_body,
    ok,
    operation,
    param_ref,
    ref,
    refusals,
)

TAG = "OpenAI-compatible"
FEEDBACK_TAG = "Feedback"

SCHEMAS: Doc = {
    "CreateEmbeddingRequest": {
        "type": "object",
        "properties": {
            "model": {
                "type": "string",
                "minLength": 1,
                "description": "An embeddings endpoint (one BYTES input, an "
                "`embedding` output) or a route over such endpoints.",
            },
            "input": {
                "description": "The texts; at most the endpoint's max_batch_size of them "
                "(token arrays are not supported).",
                "oneOf": [
                    {"type": "string"},
                    {"type": "array", "items": {"type": "string"}, "minItems": 1},
                ],
            },
            "encoding_format": {"type": "string", "enum": ["float", "base64"], "default": "float"},
            "dimensions": {
                "type": "integer",
                "minimum": 1,
                "description": "Must equal the model's width when given.",
            },
            "user": {"type": "string", "description": "Passed to routes as a parameter."},
        },
        "required": ["model", "input"],
    },
    "Embedding": {
        "type": "object",
        "properties": {
            "object": {"const": "embedding"},
            "index": {"type": "integer", "minimum": 0},
            "embedding": {
                "description": "Floats, or base64 of little-endian float32 when asked.",
                "oneOf": [{"type": "array", "items": {"type": "number"}}, {"type": "string"}],
            },
        },
        "required": ["object", "index", "embedding"],
    },
    "CreateEmbeddingResponse": {
        "type": "object",
        "properties": {
            "object": {"const": "list"},
            "data": {"type": "array", "items": ref("Embedding")},
            "model": {"type": "string"},
            "usage": {
                "type": "object",
                "properties": {
                    "prompt_tokens": {"type": "integer"},
                    "total_tokens": {"type": "integer"},
                },
                "required": ["prompt_tokens", "total_tokens"],
            },
        },
        "required": ["object", "data", "model", "usage"],
    },
    "Model": {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "object": {"const": "model"},
            "created": {"type": "integer", "description": "unix seconds"},
            "owned_by": {"type": "string"},
        },
        "required": ["id", "object", "created", "owned_by"],
    },
    "ListModelsResponse": {
        "type": "object",
        "properties": {
            "object": {"const": "list"},
            "data": {"type": "array", "items": ref("Model")},
        },
        "required": ["object", "data"],
    },
    "FeedbackRequest": {
        "type": "object",
        "properties": {
            "request_id": {
                "type": "string",
                "minLength": 1,
                "description": "The X-Request-Id of the answer.",
            },
            "reward": {"type": "number", "minimum": 0, "maximum": 1},
            "feedback_token": {
                "type": "string",
                "minLength": 1,
                "description": "The X-Feedback-Token header of the answer: the proof that "
                "the caller got it. Without it, the call needs a key with the `feedback` "
                "scope for the answer's tenant.",
            },
        },
        "required": ["request_id", "reward"],
    },
    "FeedbackResponse": {
        "description": "What the bandit learnt: the arm and segment rewarded.",
        "type": "object",
    },
}

EMBEDDING_HEADERS = [
    param_ref(name)
    for name in (
        "X-Request-Id",
        "X-Request-Timeout-Ms",
        "X-Priority",
        "X-Tenant",
        "traceparent",
        "X-Surge-Receipt",
    )
]

PATHS: Doc = {
    "/v1/embeddings": {
        "post": operation(
            "Create embeddings",
            TAG,
            {
                "200": ok(
                    "The embeddings.",
                    ref("CreateEmbeddingResponse"),
                    headers=INFER_ANSWER_HEADERS,
                ),
                **refusals("openai", 400, 401, 403, 404, 413, 429, 502, 503, 504),
            },
            CLIENT_SECURITY,
            operation_id="openai_create_embeddings",
            description="OpenAI's `POST /v1/embeddings`: the official client works "
            "unchanged. 404 when the model is unknown or not an embeddings model.",
            parameters=EMBEDDING_HEADERS,
            body=json_body(ref("CreateEmbeddingRequest")),
        )
    },
    "/v1/models": {
        "get": operation(
            "List models",
            TAG,
            {
                "200": ok("Every endpoint and route.", ref("ListModelsResponse")),
                **refusals("openai", 401, 403),
            },
            CLIENT_SECURITY,
            operation_id="openai_list_models",
        )
    },
    "/v1/feedback": {
        "post": operation(
            "Reward an answer",
            FEEDBACK_TAG,
            {
                "200": ok("The reward was taken.", ref("FeedbackResponse")),
                **refusals("openai", 400, 401, 403, 404, 413, 429, 503),
            },
            CLIENT_SECURITY,
            operation_id="feedback",
            description="How good a bandit route's answer was, once per answer. 401 without "
            "a feedback_token or a `feedback` key; 403 when the token is not that answer's "
            "(a refused proof leaves the answer rewardable); 404 when no bandit route awaits "
            "feedback for the request (unknown, already rewarded, or too old); 503 when the "
            "pending-feedback store cannot answer. Bodies past 4 KiB are refused with 413.",
            body=json_body(ref("FeedbackRequest")),
        )
    },
}
