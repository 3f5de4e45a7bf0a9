"""What a chat backend streams, whatever it is (an upstream provider, the local runtime):
`Piece`s of the answer as they arrive, then one `Finish`.

A backend is one model on one server. It is called with a `ChatCall` (the client's
request, validated and normalized, with the model name that server knows) and a
deadline on the monotonic clock, and yields pieces; it raises `BackendError` when it
cannot answer. An error raised before the first piece can be retried elsewhere (a
fallback); after it, the client has text already and the stream ends with the error.
Closing the iterator (`aclose`, or the task being cancelled) must stop the backend's
work: an upstream's HTTP request is closed, a local generation stops.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from surge.core.errors import SurgeError


@dataclass(slots=True)
class Piece:
    """A piece of the answer: its text and, when known, each of its tokens' log-probability."""

    text: str
    logprobs: list[float] = field(default_factory=list)  # one per token; empty when not sent
    # The OpenAI `logprobs.content` entries as the backend gave them (token, logprob,
    # bytes, top_logprobs), relayed to a client that asked for logprobs; else None.
    logprob_entries: list[dict[str, Any]] | None = None


@dataclass(slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    # "provider": the backend's own count (its `usage`); "counted:<method>": counted here
    # because it sent none (the method says how, e.g. "counted:tokenizer", "counted:chars/4").
    source: str = "provider"

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(slots=True)
class Finish:
    """The end of an answer. `reason` is OpenAI's finish_reason ("stop", "length",
    "content_filter", "tool_calls") or surge's own: "deadline" (the request's time ran
    out mid-answer), "error" (the backend failed mid-answer)."""

    reason: str
    usage: Usage | None = None  # None when the backend sent no usage


@dataclass(frozen=True, slots=True)
class ChatCall:
    """A chat request as a backend receives it: validated, and with `max_tokens` set
    (the client's, or the model's default, capped by the model's limit)."""

    messages: tuple[dict[str, Any], ...]  # {"role": str, "content": str | list of parts, ...}
    max_tokens: int
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logprobs: bool = False  # the backend must return per-token logprobs (a cascade asks too)
    top_logprobs: int | None = None
    user: str | None = None

    def with_changes(self, **changes: Any) -> ChatCall:
        fields = {name: getattr(self, name) for name in self.__dataclass_fields__}
        return ChatCall(**{**fields, **changes})


class BackendError(SurgeError):
    """A backend could not answer. `status` is what the client would see (429 when the
    backend refused for load, 502 for a failure, 504 for a timeout); `retry_after_s` is
    the backend's own Retry-After when it sent one; `started` says whether pieces had
    been yielded already (then no other backend can take over the answer)."""

    def __init__(
        self,
        code: str,
        message: str,
        status: int,
        retry_after_s: float | None = None,
        started: bool = False,
    ) -> None:
        super().__init__(code, message, status, retry_after_s)
        self.started = started


class ChatBackend(Protocol):
    """One model on one server (a provider's model, a local model)."""

    name: str  # "<provider>/<model>" or "local/<model>": what receipts and metrics name

    def stream(self, call: ChatCall, deadline: float) -> AsyncIterator[Piece | Finish]:
        """The answer's pieces, then one Finish; raises BackendError."""
        ...

    async def aclose(self) -> None:
        """Release connections and threads (at shutdown)."""
        ...
