"""The chat part of the OpenAPI document: OpenAI's `POST /v1/chat/completions`, whole
(`application/json`) or streamed (`text/event-stream`)."""

from __future__ import annotations

from surge.api.openapi_common import (
    CLIENT_SECURITY,
    INFER_ANSWER_HEADERS,
    Doc,
    header_refs,
    json_body,
    operation,
    ref,
    refusals,
)
from surge.api.openapi_v1 import EMBEDDING_HEADERS as INFERENCE_HEADERS

TAG = "OpenAI-compatible"

_TEXT_PART = {
    "type": "object",
    "properties": {"type": {"const": "text"}, "text": {"type": "string"}},
    "required": ["type", "text"],
}

SCHEMAS: Doc = {
    "ChatMessage": {
        "type": "object",
        "properties": {
            "role": {"enum": ["system", "developer", "user", "assistant", "tool"]},
            "content": {
                "oneOf": [{"type": "string"}, {"type": "array", "items": _TEXT_PART}],
                "description": "Text, or a list of text parts (joined).",
            },
            "name": {"type": "string", "minLength": 1, "maxLength": 64},
            "tool_call_id": {"type": "string", "description": "Required for role tool."},
        },
        "required": ["role", "content"],
    },
    "CreateChatCompletionRequest": {
        "type": "object",
        "properties": {
            "model": {
                "type": "string",
                "minLength": 1,
                "maxLength": 256,
                "description": "A chat model or chat route of `llm:`.",
            },
            "messages": {
                "type": "array",
                "items": ref("ChatMessage"),
                "minItems": 1,
                "maxItems": 1024,
            },
            "stream": {"type": "boolean", "default": False},
            "stream_options": {
                "type": "object",
                "properties": {"include_usage": {"type": "boolean"}},
                "description": "Only with stream: true.",
            },
            "max_tokens": {"type": "integer", "minimum": 1},
            "max_completion_tokens": {"type": "integer", "minimum": 1},
            "temperature": {"type": "number", "minimum": 0, "maximum": 2},
            "top_p": {"type": "number", "minimum": 0, "maximum": 1},
            "n": {"const": 1},
            "stop": {
                "oneOf": [
                    {"type": "string", "minLength": 1, "maxLength": 256},
                    {
                        "type": "array",
                        "maxItems": 4,
                        "items": {"type": "string", "minLength": 1, "maxLength": 256},
                    },
                ]
            },
            "seed": {"type": "integer"},
            "presence_penalty": {"type": "number", "minimum": -2, "maximum": 2},
            "frequency_penalty": {"type": "number", "minimum": -2, "maximum": 2},
            "logprobs": {"type": "boolean"},
            "top_logprobs": {
                "type": "integer",
                "minimum": 0,
                "maximum": 20,
                "description": "Needs logprobs: true.",
            },
            "user": {"type": "string", "maxLength": 256},
        },
        "required": ["model", "messages"],
        "description": "Fields not listed are ignored (never sent to a provider); tools, "
        "audio and n > 1 are refused with 400.",
    },
    "ChatCompletion": {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "object": {"const": "chat.completion"},
            "created": {"type": "integer"},
            "model": {"type": "string"},
            "choices": {"type": "array", "items": {"type": "object"}},
            "usage": {"type": "object"},
        },
        "required": ["id", "object", "created", "model", "choices", "usage"],
        "description": "finish_reason is stop, length, or surge's own 'deadline' (the "
        "request's deadline came mid-answer: the text so far).",
    },
}

PATHS: Doc = {
    "/v1/chat/completions": {
        "post": operation(
            "Create a chat completion",
            TAG,
            {
                "200": {
                    "description": "The answer: whole (application/json), or streamed as "
                    "server-sent events of chat.completion.chunk objects ending with "
                    "`data: [DONE]` (text/event-stream). A stream cut by the deadline ends "
                    "with finish_reason 'deadline'; a backend failing mid-answer with "
                    "finish_reason 'error' and an error event.",
                    "headers": header_refs(INFER_ANSWER_HEADERS),
                    "content": {
                        "application/json": {"schema": ref("ChatCompletion")},
                        "text/event-stream": {"schema": {"type": "string"}},
                    },
                },
                **refusals("openai", 400, 401, 403, 404, 413, 429, 502, 503, 504),
            },
            CLIENT_SECURITY,
            operation_id="openai_create_chat_completion",
            description="OpenAI's `POST /v1/chat/completions` over upstream providers and "
            "local models, with fallback, cascade, time-boxed, rules and bandit routes. "
            "429 past a model's or provider's bound on concurrent answers, or a rate limit "
            "(a chat request takes its prompt's tokens plus max_tokens from a tokens limit).",
            parameters=INFERENCE_HEADERS,  # the same request headers as embeddings
            body=json_body(ref("CreateChatCompletionRequest")),
        )
    },
}
