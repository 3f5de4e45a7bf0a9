"""OpenAI's chat completion shapes: stream chunks as server-sent events, and the whole
`chat.completion` object for `stream: false`.

A stream relays one chunk per piece, so a chunk is made from bytes prepared once per
answer (everything but the piece's text), not by serializing a dict per token.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

import orjson

from surge.llm.stream import Piece, Usage

DONE = b"data: [DONE]\n\n"


def completion_id() -> str:
    return "chatcmpl-" + secrets.token_urlsafe(18)


def usage_dict(usage: Usage) -> dict[str, int]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }


class ChunkWriter:
    """The SSE events of one streamed answer."""

    def __init__(self, id_: str, model: str, with_logprobs: bool) -> None:
        self.with_logprobs = with_logprobs
        self.created = int(time.time())
        self.head = orjson.dumps(
            {"id": id_, "object": "chat.completion.chunk", "created": self.created, "model": model}
        )[:-1]  # without the closing brace: choices follow
        self._content = b"data: " + self.head + b',"choices":[{"index":0,"delta":{"content":'

    def _event(self, rest: dict[str, Any]) -> bytes:
        return b"data: " + self.head + b"," + orjson.dumps(rest)[1:] + b"\n\n"

    def role(self) -> bytes:
        """The first chunk: the assistant's role, no text yet (as OpenAI sends it)."""
        return self._event(
            {
                "choices": [
                    {
                        "index": 0,
                        "delta": {"role": "assistant", "content": ""},
                        "logprobs": None,
                        "finish_reason": None,
                    }
                ]
            }
        )

    def piece(self, piece: Piece) -> bytes:
        logprobs = b"null"
        if self.with_logprobs and piece.logprob_entries is not None:
            logprobs = orjson.dumps({"content": piece.logprob_entries})
        return (
            self._content
            + orjson.dumps(piece.text)
            + b'},"logprobs":'
            + logprobs
            + b',"finish_reason":null}]}\n\n'
        )

    def finish(self, reason: str) -> bytes:
        return self._event(
            {"choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": reason}]}
        )

    def usage(self, usage: Usage) -> bytes:
        """`stream_options.include_usage`: a last chunk with no choices and the usage."""
        return self._event({"choices": [], "usage": usage_dict(usage)})

    @staticmethod
    def error(code: str, message: str) -> bytes:
        """An error after the stream started: the official clients raise it as an APIError."""
        body = {"error": {"message": message, "type": "server_error", "code": code}}
        return b"data: " + orjson.dumps(body) + b"\n\n"


def completion(
    id_: str,
    model: str,
    text: str,
    reason: str,
    usage: Usage,
    logprob_entries: list[dict[str, Any]] | None,
) -> bytes:
    """The whole answer of a `stream: false` request."""
    return orjson.dumps(
        {
            "id": id_,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text, "refusal": None},
                    "logprobs": None if logprob_entries is None else {"content": logprob_entries},
                    "finish_reason": reason,
                }
            ],
            "usage": usage_dict(usage),
        }
    )
