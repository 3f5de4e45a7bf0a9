"""The OpenAI wire format of a chat provider, sans-IO: the request body surge sends, the
stream chunks it reads back (`StreamState`), usage, error bodies and Retry-After."""

from __future__ import annotations

import email.utils
import math
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson

from surge.llm.stream import BackendError, ChatCall, Finish, Piece, Usage

MAX_ERROR_CHARS = 300
# ChatCall's optional fields, sent only when set (a provider may reject what it lacks).
OPTIONAL_FIELDS = ("temperature", "top_p", "seed", "presence_penalty", "frequency_penalty",
                   "top_logprobs", "user")  # fmt: skip
MALFORMED = (TypeError, KeyError, AttributeError, ValueError, IndexError)


class StreamState:
    """What the chunks of one streamed answer have said so far (sans-IO)."""

    __slots__ = ("done", "name", "reason", "scrub", "usage")

    def __init__(self, name: str, scrub: Callable[[str], str] = str) -> None:
        self.name = name
        self.scrub = scrub  # removes the API key from an upstream's words
        self.done = False  # `[DONE]` came
        self.reason: str | None = None
        self.usage: Usage | None = None

    def feed(self, payload: str) -> Piece | None:
        """Take one `data` payload; the piece of the answer it carries, if any."""
        if payload == "[DONE]":
            self.done = True
            return None
        try:
            chunk = orjson.loads(payload)
            if chunk.get("error"):  # a provider failing mid-answer says so in an event
                message = self.scrub(error_message(payload.encode()))[:MAX_ERROR_CHARS]
                raise BackendError("provider_error", f"{self.name}: failed: {message}", 502)
            self.usage = usage_of(chunk) or self.usage
            choices = chunk.get("choices")
            if not choices:
                return None  # the usage chunk
            choice = choices[0]
            self.reason = choice.get("finish_reason") or self.reason
            return piece_of(choice.get("delta") or {}, choice.get("logprobs"))
        except (orjson.JSONDecodeError, *MALFORMED):
            raise BackendError(
                "provider_bad_stream", f"{self.name}: a malformed chunk: {payload[:100]!r}", 502
            ) from None

    def finish(self) -> Finish:
        if not self.done and self.reason is None:
            raise BackendError(
                "provider_bad_stream",
                f"{self.name}: the stream ended without [DONE] nor a finish_reason",
                502,
            )
        return Finish(self.reason or "stop", self.usage)


def request_body(model: str, call: ChatCall) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "messages": list(call.messages),
        "max_tokens": call.max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    for name in OPTIONAL_FIELDS:
        value = getattr(call, name)
        if value is not None:
            body[name] = value
    if call.stop:
        body["stop"] = list(call.stop)
    if call.logprobs:
        body["logprobs"] = True
    else:
        body.pop("top_logprobs", None)  # OpenAI refuses top_logprobs without logprobs
    return body


def piece_of(message: dict[str, Any], logprobs: dict[str, Any] | None) -> Piece | None:
    """The piece a delta (or a whole message) carries; None when it has no text and no
    logprobs (the role-only first chunk, the finish chunk)."""
    text = message.get("content") or ""
    if not isinstance(text, str):
        raise TypeError("content is not a string")
    entries = (logprobs or {}).get("content") or None
    if not text and entries is None:
        return None
    values = [float(entry["logprob"]) for entry in entries] if entries else []
    return Piece(text, values, entries)


def usage_of(chunk: dict[str, Any]) -> Usage | None:
    usage = chunk.get("usage")
    if not usage:
        return None
    return Usage(int(usage["prompt_tokens"]), int(usage["completion_tokens"]), "provider")


def error_message(body: bytes) -> str:
    """The upstream's own words from an error body: OpenAI's `{"error": {"message"}}`,
    a bare `{"error": "..."}` or `{"message"|"detail": ...}`, else the text itself."""
    try:
        found: Any = orjson.loads(body)
        if isinstance(found, dict):
            found = found.get("error") or found.get("message") or found.get("detail") or found
        if isinstance(found, dict):
            found = found.get("message") or found
        text = found if isinstance(found, str) else orjson.dumps(found).decode()
    except orjson.JSONDecodeError:
        text = body.decode("utf-8", "replace")
    return " ".join(text.split()) or "(no message)"


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Retry-After as seconds from now: delay-seconds or an HTTP-date; None if unreadable."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    return max(0.0, seconds) if math.isfinite(seconds) else None
