"""An answer that has started: its first item is in hand, the rest is still coming.

A chat model's `open` returns only once the backend has produced its first piece (or
finished), so every failure before that point can still be handed to another backend
or answered with a proper HTTP status. What comes after is relayed by whoever holds
the `ChatAnswer` (the HTTP layer, or a cascade judging a tier), which iterates `items()`
and lets it keep the books: tokens, log-probabilities, time to first token, time per
output token. `close` is called exactly once (by `items` when the answer ends, or by
the holder when it stops early) and reports the outcome to the model that opened it.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from surge.core.clock import monotonic
from surge.llm.chat_request import ESTIMATE_METHOD, count_tokens_estimate
from surge.llm.stream import BackendError, Finish, Piece, Usage


@dataclass(slots=True)
class AnswerEnd:
    """How an answer ended, for the model's books and the receipt."""

    reason: str  # a finish_reason, or "cancelled" (the holder stopped reading)
    usage: Usage
    ttft_s: float
    decode_s: float  # first token to the end
    error: BackendError | None = None


@dataclass(slots=True, eq=False)
class ChatAnswer:
    model: str  # the public chat model that answered
    backend: str  # "<provider>/<model>" or "local/<model>"
    first: Piece | Finish
    rest: AsyncIterator[Piece | Finish]
    sent_at: float  # when the request went to the backend (monotonic)
    first_at: float  # when its first item came back
    prompt_chars: int
    on_close: Callable[[ChatAnswer, AnswerEnd], None]
    deadline: float = math.inf  # the request's (monotonic): an answer cut there ended "deadline"
    # Kept as the answer streams:
    chars: int = 0
    pieces: int = 0
    logprob_sum: float = 0.0
    logprob_count: int = 0
    finish: Finish | None = None
    end: AnswerEnd | None = None
    # The answer's text, kept only when someone will read it whole (a review item, a
    # non-streamed reply); bounded by the call's max_tokens.
    text_parts: list[str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def mean_logprob(self) -> float | None:
        """The answer's mean token log-probability so far (None: the backend sent none)."""
        return self.logprob_sum / self.logprob_count if self.logprob_count else None

    async def items(self) -> AsyncIterator[Piece | Finish]:
        """The answer's pieces, then its Finish; closes the answer at the end (or on an
        error, which is re-raised with `started` set)."""
        item: Piece | Finish = self.first
        rest = self.rest
        try:
            while True:
                if isinstance(item, Finish):
                    self.finish = item
                    self.close(item.reason)
                    yield item
                    return
                self.chars += len(item.text)
                self.pieces += 1
                if self.text_parts is not None:
                    self.text_parts.append(item.text)
                if item.logprobs:
                    self.logprob_sum += sum(item.logprobs)
                    self.logprob_count += len(item.logprobs)
                yield item
                try:
                    item = await anext(rest)
                except StopAsyncIteration:
                    item = Finish("stop")  # a backend that ends without a Finish
        except BackendError as exc:
            exc.started = True
            self.close("deadline" if exc.code == "deadline_exceeded" else "error", exc)
            raise
        finally:
            if self.end is None:  # the holder stopped reading: the backend's work stops too
                await _aclose(rest)
                self.close("deadline" if monotonic() >= self.deadline else "cancelled")

    def close(self, reason: str, error: BackendError | None = None) -> None:
        if self.end is not None:
            return
        now = monotonic()
        self.end = AnswerEnd(
            reason, self.usage(), self.first_at - self.sent_at, now - self.first_at, error
        )
        self.on_close(self, self.end)

    async def aclose(self) -> None:
        """Stop the answer (a cascade that escalates, a client that left)."""
        await _aclose(self.rest)
        self.close("cancelled")

    def usage(self) -> Usage:
        """The backend's usage when it sent one; else counted here, the method named."""
        finish = self.finish
        if finish is not None and finish.usage is not None:
            return finish.usage
        # Tokens with a log-probability were counted by the backend one by one; only
        # without them is the text measured.
        if self.logprob_count:
            return Usage(
                count_tokens_estimate(self.prompt_chars),
                self.logprob_count,
                "counted:logprobs+chars/4",
            )
        completion = count_tokens_estimate(self.chars) if self.chars else 0
        return Usage(count_tokens_estimate(self.prompt_chars), completion, ESTIMATE_METHOD)


async def _aclose(rest: AsyncIterator[Any]) -> None:
    closer = getattr(rest, "aclose", None)
    if closer is not None:
        await closer()
