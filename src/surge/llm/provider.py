"""A model on an OpenAI-compatible server (OpenAI, vLLM, TGI, llama.cpp, another
gateway), as a `ChatBackend`: one streamed `POST <base>/chat/completions` per call.

A `Provider` is the server: one pooled HTTP client, the API key, the static headers and
a bound on the calls in flight to it; each of its models is a `ProviderBackend` sharing
it. The bound refuses at once (429 `provider_busy`) rather than queueing: a queue in
front of a slow provider only turns its slowness into everyone's latency, and the
gateway may have another backend to try.

Every wait is bounded twice: by its own timeout (the first piece within
`first_token_timeout_s` of sending, then no gap between pieces longer than
`idle_timeout_s`) and by the request's deadline; whichever comes first names the error
(`provider_timeout` or `deadline_exceeded`, both 504). The timeouts are applied here
around each read, not by httpx, so that keep-alive comments and a role-only first
chunk do not count as progress.

Closing the stream (`aclose`, or the consuming task being cancelled) closes the HTTP
response in the same step, so the upstream sees the disconnect and stops generating
tokens nobody will read (and nobody should pay for).
"""

from __future__ import annotations

import asyncio
import email.utils
import math
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import aclosing
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson

from surge.core.clock import monotonic
from surge.llm.sse import SSEError, SSEParser
from surge.llm.stream import BackendError, ChatCall, Finish, Piece, Usage

BUSY_RETRY_AFTER_S = 1.0  # a slot frees as soon as any stream ends: retry soon
MAX_ERROR_CHARS = 300
MAX_ERROR_BODY_BYTES = 64 << 10
MAX_JSON_BODY_BYTES = 8 << 20  # a non-streamed answer is read whole: bound it
# ChatCall's optional fields, sent only when set (a provider may reject what it lacks).
OPTIONAL_FIELDS = ("temperature", "top_p", "seed", "presence_penalty", "frequency_penalty",
                   "top_logprobs", "user")  # fmt: skip
_MALFORMED = (TypeError, KeyError, AttributeError, ValueError, IndexError)


class Provider:
    """One OpenAI-compatible server: its client, key, headers and in-flight bound.

    `in_flight` and `refused_busy` are read by the metrics; `first_token_timeout_s` and
    `idle_timeout_s` are the defaults of its models (a model may set its own). With
    `max_concurrent_requests` above `max_connections`, calls past the connections wait
    for one inside httpx's pool (bounded by the first-token timeout and the deadline).
    """

    def __init__(
        self,
        name: str,
        base_url: str,
        api_key: str | None = None,
        *,
        max_connections: int = 100,
        max_concurrent_requests: int = 100,
        connect_timeout_s: float = 5.0,
        first_token_timeout_s: float = 30.0,
        idle_timeout_s: float = 30.0,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.base_url = base_url.rstrip("/")
        self.max_concurrent_requests = max_concurrent_requests
        self.first_token_timeout_s = first_token_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self._api_key = api_key or None
        # No compression: a compressor buffers tokens, and chunks are small anyway.
        all_headers = {"Content-Type": "application/json", "Accept-Encoding": "identity",
                       **(headers or {})}  # fmt: skip
        if self._api_key:
            all_headers["Authorization"] = f"Bearer {self._api_key}"
        # httpx bounds only the connect: reads are bounded per piece by ProviderBackend.
        # As many idle connections are kept as may be in flight, so that a burst reuses
        # them rather than paying a handshake each.
        self.client = httpx.AsyncClient(
            headers=all_headers,
            timeout=httpx.Timeout(None, connect=connect_timeout_s),
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
        )
        self.in_flight = 0
        self.refused_busy = 0

    def acquire(self, who: str) -> None:
        """Take a slot for one call, or refuse at once."""
        if self.in_flight >= self.max_concurrent_requests:
            self.refused_busy += 1
            raise BackendError(
                "provider_busy",
                f"{who}: {self.in_flight} calls in flight to provider {self.name!r}, its bound",
                429,
                retry_after_s=BUSY_RETRY_AFTER_S,
            )
        self.in_flight += 1

    def release(self) -> None:
        self.in_flight -= 1

    def scrub(self, text: str) -> str:
        """`text` without the API key, should an upstream echo it in an error message."""
        return text.replace(self._api_key, "***") if self._api_key else text

    async def aclose(self) -> None:
        await self.client.aclose()


class ProviderBackend:
    """One model of a `Provider`, as a `ChatBackend` named `<provider>/<model>`."""

    def __init__(
        self,
        provider: Provider,
        model: str,
        *,
        first_token_timeout_s: float | None = None,
        idle_timeout_s: float | None = None,
    ) -> None:
        self.provider = provider
        self.model = model
        self.name = f"{provider.name}/{model}"
        self.url = f"{provider.base_url}/chat/completions"
        self.first_token_timeout_s = first_token_timeout_s or provider.first_token_timeout_s
        self.idle_timeout_s = idle_timeout_s or provider.idle_timeout_s

    async def aclose(self) -> None:
        """Nothing of its own: the client is the provider's, shared by its models, and
        closed by `Provider.aclose`."""

    async def stream(self, call: ChatCall, deadline: float) -> AsyncIterator[Piece | Finish]:
        if monotonic() >= deadline:
            raise self._deadline_error()
        self.provider.acquire(self.name)
        started = False
        first_due = monotonic() + self.first_token_timeout_s  # from sending to the first piece
        try:
            response = await self._send(call, first_due, deadline)
            try:
                if response.status_code != 200:
                    try:
                        body = await self._read_all(response, deadline, MAX_ERROR_BODY_BYTES)
                    except BackendError:  # the status says enough without its words
                        body = b""
                    raise self._status_error(response, body)
                if response.headers.get("content-type", "").startswith("application/json"):
                    body = await self._read_all(response, deadline, MAX_JSON_BODY_BYTES)
                    for item in self._json_answer(body):
                        yield item
                    return
                async with aclosing(self._events(response, first_due, deadline)) as events:
                    async for item in events:
                        started = started or isinstance(item, Piece)
                        yield item
            finally:
                # Before the answer's end this drops the connection: the upstream stops.
                await response.aclose()
        except BackendError as exc:
            exc.started = started
            raise
        finally:
            self.provider.release()

    async def _send(self, call: ChatCall, due: float, deadline: float) -> httpx.Response:
        """POST the call; wait for the response's head no longer than the first piece may
        take (nor than the deadline)."""
        request = self.provider.client.build_request(
            "POST", self.url, content=orjson.dumps(request_body(self.model, call))
        )
        try:
            async with asyncio.timeout(min(due, deadline) - monotonic()):
                return await self.provider.client.send(request, stream=True)
        except TimeoutError:
            raise self._timeout_error(due, deadline, "answer") from None
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise self._error("provider_unreachable", f"cannot connect: {exc}", 502) from None
        except httpx.HTTPError as exc:
            raise self._error("provider_error", f"the request failed: {exc!r}", 502) from None

    async def _events(
        self, response: httpx.Response, due: float, deadline: float
    ) -> AsyncIterator[Piece | Finish]:
        """The pieces of a streamed answer, each read within its due time, then Finish."""
        parser = SSEParser()
        state = StreamState(self.name, self.provider.scrub)
        what = "first piece"
        async with aclosing(response.aiter_bytes()) as chunks:
            while not state.done:
                chunk = await self._read(chunks, due, deadline, what)
                try:
                    payloads = parser.close() if chunk is None else parser.feed(chunk)
                except SSEError as exc:
                    raise self._error("provider_bad_stream", str(exc), 502) from None
                for payload in payloads:
                    piece = state.feed(payload)
                    if piece is not None:
                        yield piece
                        # Measured from when the consumer asks for more: a client that
                        # reads slowly does not make the provider look idle.
                        due, what = monotonic() + self.idle_timeout_s, "piece"
                    if state.done:
                        break
                if chunk is None:
                    break
        yield state.finish()

    async def _read(
        self, chunks: AsyncIterator[bytes], due: float, deadline: float, what: str
    ) -> bytes | None:
        """The next bytes of the body (None at its end), within min(due, deadline)."""
        now = monotonic()
        if now >= deadline:
            raise self._deadline_error()
        try:
            async with asyncio.timeout(min(due, deadline) - now):
                return await anext(chunks)
        except StopAsyncIteration:
            return None
        except TimeoutError:
            raise self._timeout_error(due, deadline, what) from None
        except httpx.HTTPError as exc:
            raise self._error("provider_error", f"the stream broke: {exc!r}", 502) from None

    async def _read_all(self, response: httpx.Response, deadline: float, limit: int) -> bytes:
        """A whole (small) body, each read bounded as a stream's pieces are."""
        body = bytearray()
        async with aclosing(response.aiter_bytes()) as chunks:
            while True:
                due = monotonic() + self.idle_timeout_s
                chunk = await self._read(chunks, due, deadline, "body")
                if chunk is None:
                    return bytes(body)
                body += chunk
                if len(body) > limit:
                    raise self._error("provider_bad_stream", f"a body past {limit} bytes", 502)

    def _json_answer(self, body: bytes) -> list[Piece | Finish]:
        """A non-streamed answer (a server that ignores `stream: true`): one piece."""
        try:
            answer = orjson.loads(body)
            choice = answer["choices"][0]
            piece = piece_of(choice["message"], choice.get("logprobs"))
            finish = Finish(choice.get("finish_reason") or "stop", usage_of(answer))
        except (orjson.JSONDecodeError, *_MALFORMED):
            raise self._error("provider_bad_stream", "a malformed JSON answer", 502) from None
        return [finish] if piece is None else [piece, finish]

    def _status_error(self, response: httpx.Response, body: bytes) -> BackendError:
        status = response.status_code
        message = self.provider.scrub(error_message(body))[:MAX_ERROR_CHARS]
        retry_after_s = parse_retry_after(response.headers.get("retry-after"))
        if status == 429:
            return self._error(
                "provider_rate_limited", f"rate limited (429): {message}", 429, retry_after_s
            )
        if 400 <= status < 500:
            return self._error("provider_refused", f"refused ({status}): {message}", status)
        return self._error("provider_error", f"failed ({status}): {message}", 502, retry_after_s)

    def _timeout_error(self, due: float, deadline: float, what: str) -> BackendError:
        if deadline <= due:
            return self._deadline_error()
        limit_s = self.idle_timeout_s if what in ("piece", "body") else self.first_token_timeout_s
        return self._error("provider_timeout", f"no {what} within {limit_s:g} s", 504)

    def _deadline_error(self) -> BackendError:
        return self._error("deadline_exceeded", "the request's deadline passed", 504)

    def _error(
        self, code: str, message: str, status: int, retry_after_s: float | None = None
    ) -> BackendError:
        return BackendError(code, f"{self.name}: {message}", status, retry_after_s)


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
        except (orjson.JSONDecodeError, *_MALFORMED):
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
