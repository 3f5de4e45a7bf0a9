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
around each read, not by the HTTP client, so that keep-alive comments and a role-only
first chunk do not count as progress.

The HTTP client is aiohttp: its C parser and stream reader relay a token for about a
third of httpx's CPU (27 -> 9 µs an event, measured side by side against the fake
upstream), and relaying tokens is most of what the gateway does.

Closing the stream (`aclose`, or the consuming task being cancelled) closes the HTTP
response in the same step, so the upstream sees the disconnect and stops generating
tokens nobody will read (and nobody should pay for).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Mapping
from contextlib import aclosing
from typing import Any

import aiohttp
import orjson

from surge.core.clock import monotonic
from surge.llm.provider_wire import (
    MALFORMED,
    MAX_ERROR_CHARS,
    StreamState,
    error_message,
    parse_retry_after,
    piece_of,
    request_body,
    usage_of,
)
from surge.llm.sse import SSEError, SSEParser
from surge.llm.stream import BackendError, ChatCall, Finish, Piece

BUSY_RETRY_AFTER_S = 1.0  # a slot frees as soon as any stream ends: retry soon
DRAIN_S = 0.25  # longest wait for the end of a body after [DONE]
MAX_DRAIN_BYTES = 64 << 10
MAX_ERROR_BODY_BYTES = 64 << 10
MAX_JSON_BODY_BYTES = 8 << 20  # a non-streamed answer is read whole: bound it
# Idle connections are kept less long than common servers keep theirs (uvicorn: 5 s), so
# a call is not sent on a connection the server is closing at that moment.
KEEPALIVE_S = 4.0
# What a failing connection or body raises (TimeoutError apart: that is ours).
HTTP_ERRORS = (aiohttp.ClientError, OSError)


class Provider:
    """One OpenAI-compatible server: its client, key, headers and in-flight bound.

    `in_flight` and `refused_busy` are read by the metrics; `first_token_timeout_s` and
    `idle_timeout_s` are the defaults of its models (a model may set its own). With
    `max_concurrent_requests` above `max_connections`, calls past the connections wait
    for one inside the client's pool (bounded by the first-token timeout and the deadline).
    `connections_opened` counts the TCP (and TLS) connections it made: with keep-alive,
    far fewer than its calls.
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
        self.headers = all_headers
        self.max_connections = max_connections
        self.connect_timeout_s = connect_timeout_s
        # The proxy, from HTTPS_PROXY/NO_PROXY and friends as curl reads them, once:
        # aiohttp's own `trust_env` looks it up on a thread for every request.
        self.proxy = env_proxy(self.base_url)
        # Made here, not at the first call: a wrong SSL_CERT_FILE fails the start.
        self._tls: ssl.SSLContext | bool = (
            tls_context() if self.base_url.startswith("https:") else True
        )
        self._session: aiohttp.ClientSession | None = None
        self._connector: CountingConnector | None = None
        self.in_flight = 0
        self.refused_busy = 0

    def session(self) -> aiohttp.ClientSession:
        """The pooled client, made on first use inside the serving loop (aiohttp binds a
        session to the loop it is made in)."""
        session = self._session
        if session is None or session.closed:
            # Only the connect is bounded here: reads are bounded per piece by
            # ProviderBackend. As many connections are kept as may be in flight, so that
            # a burst reuses them rather than paying a handshake each.
            self._connector = CountingConnector(
                limit=self.max_connections, keepalive_timeout=KEEPALIVE_S, ssl=self._tls
            )
            session = self._session = aiohttp.ClientSession(
                headers=self.headers,
                connector=self._connector,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.connect_timeout_s),
            )
        return session

    @property
    def connections_opened(self) -> int:
        """TCP (and TLS) connections made to the server: with keep-alive, few."""
        return 0 if self._connector is None else self._connector.opened

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
        if self._session is not None:
            await self._session.close()


class CountingConnector(aiohttp.TCPConnector):
    """aiohttp's pool, counting the connections it opens (a trace config would do it
    through public hooks, at a few objects per request)."""

    opened = 0

    async def _create_connection(self, *args: Any, **kwargs: Any) -> Any:
        self.opened += 1
        return await super()._create_connection(*args, **kwargs)


def tls_context() -> ssl.SSLContext:
    """Certificates to trust as httpx and requests do: SSL_CERT_FILE / SSL_CERT_DIR when
    set, else certifi's bundle (a slim image may have no system CA store; httpx, which
    this client replaced, carried certifi's)."""
    cafile, capath = os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR")
    if not cafile and not capath:
        try:
            import certifi

            cafile = certifi.where()
        except ImportError:  # the system store, as the ssl module has it
            pass
    return ssl.create_default_context(cafile=cafile or None, capath=capath or None)


def env_proxy(url: str) -> str | None:
    """The proxy the environment names for `url` (none where NO_PROXY covers it)."""
    parts = urllib.parse.urlsplit(url)
    if parts.hostname and urllib.request.proxy_bypass(parts.hostname):
        return None
    return urllib.request.getproxies().get(parts.scheme)


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
                if response.status != 200:
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
                # Before the body's end this drops the connection (the upstream stops);
                # at its end, the connection goes back to the pool.
                response.release()
        except BackendError as exc:
            exc.started = started
            raise
        finally:
            self.provider.release()

    async def _send(self, call: ChatCall, due: float, deadline: float) -> aiohttp.ClientResponse:
        """POST the call; wait for the response's head no longer than the first piece may
        take (nor than the deadline)."""
        body = orjson.dumps(request_body(self.model, call))
        session = self.provider.session()
        try:
            async with asyncio.timeout(min(due, deadline) - monotonic()):
                return await session.post(
                    self.url, data=body, allow_redirects=False, proxy=self.provider.proxy
                )
        except (aiohttp.ClientConnectorError, aiohttp.ServerTimeoutError) as exc:
            # Before TimeoutError: aiohttp's connect timeout is one too.
            raise self._error("provider_unreachable", f"cannot connect: {exc}", 502) from None
        except TimeoutError:
            raise self._timeout_error(due, deadline, "answer") from None
        except HTTP_ERRORS as exc:
            raise self._error("provider_error", f"the request failed: {exc!r}", 502) from None

    async def _events(
        self, response: aiohttp.ClientResponse, due: float, deadline: float
    ) -> AsyncIterator[Piece | Finish]:
        """The pieces of a streamed answer, each read within its due time, then Finish."""
        parser = SSEParser()
        state = StreamState(self.name, self.provider.scrub)
        what = "first piece"
        chunks = response.content
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
        if state.done and chunk is not None:
            await self._drain(chunks, deadline)
        yield state.finish()

    async def _drain(self, chunks: aiohttp.StreamReader, deadline: float) -> None:
        """Read what follows `[DONE]` (the chunked body's last bytes, usually already
        here) so the connection goes back to the pool: released mid-body, it is closed
        and the next call pays a new TCP (and TLS) handshake. Bounded in time and bytes."""
        left = min(DRAIN_S, deadline - monotonic())
        if left <= 0:
            return
        seen = 0
        with contextlib.suppress(TimeoutError, *HTTP_ERRORS):
            async with asyncio.timeout(left):
                while rest := await chunks.readany():
                    seen += len(rest)
                    if seen > MAX_DRAIN_BYTES:
                        return

    async def _read(
        self, chunks: aiohttp.StreamReader, due: float, deadline: float, what: str
    ) -> bytes | None:
        """The next bytes of the body (None at its end), within min(due, deadline)."""
        now = monotonic()
        if now >= deadline:
            raise self._deadline_error()
        try:
            async with asyncio.timeout(min(due, deadline) - now):
                chunk = await chunks.readany()
        except TimeoutError:
            raise self._timeout_error(due, deadline, what) from None
        except HTTP_ERRORS as exc:
            raise self._error("provider_error", f"the stream broke: {exc!r}", 502) from None
        return chunk or None

    async def _read_all(
        self, response: aiohttp.ClientResponse, deadline: float, limit: int
    ) -> bytes:
        """A whole (small) body, each read bounded as a stream's pieces are."""
        body = bytearray()
        while True:
            due = monotonic() + self.idle_timeout_s
            chunk = await self._read(response.content, due, deadline, "body")
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
        except (orjson.JSONDecodeError, *MALFORMED):
            raise self._error("provider_bad_stream", "a malformed JSON answer", 502) from None
        return [finish] if piece is None else [piece, finish]

    def _status_error(self, response: aiohttp.ClientResponse, body: bytes) -> BackendError:
        status = response.status
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
