"""The inference routes, answered in front of the framework.

`POST /v2/models/{m}/infer`, `POST /v2/models/{m}/versions/{v}/infer` and
`POST /v1/embeddings` are the hot path. Measured under uvicorn on the no-op endpoint's
request, the same handler costs about 50 µs of CPU per request inside a bare Starlette
app and 30 µs as a plain ASGI callable: Starlette's error middlewares, router, Request
and Response (and one more `send` wrapper per layer) take 20 µs, more than surge's own
bookkeeping of a request. So this plain ASGI app matches those three paths with string
operations, runs the handler on an `Exchange`, renders errors in the protocol's shape
and sends the answer; every other request (admin, metrics, health, dashboard, a GET on
an inference path that deserves its 405) goes to the Starlette app unchanged.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from starlette.types import ASGIApp, Receive, Scope, Send

from surge.api.errors import error_answer
from surge.api.exchange import Exchange, Handler
from surge.api.middleware import collect_headers
from surge.core.clock import monotonic
from surge.core.errors import SurgeError
from surge.security.auth import require

if TYPE_CHECKING:
    from surge.api.state import ServerState

log = logging.getLogger("surge.api")

V2_PREFIX, V2_SUFFIX = "/v2/models/", "/infer"


class InferenceRoutes:
    def __init__(
        self,
        app: ASGIApp,
        state: ServerState,
        v2_infer: Handler,
        embeddings: Handler,
        wanted_headers: frozenset[bytes],
        chat: Handler | None = None,
    ) -> None:
        self.app = app
        self.state = state
        self.v2_infer = v2_infer
        self.embeddings = embeddings
        self.chat = chat
        self.wanted = wanted_headers

    def match(self, path: str) -> tuple[Handler, dict[str, str]] | None:
        """The handler and path parameters of an inference path (as Starlette's
        `{param}` would match them: one non-empty segment each), or None."""
        if path == "/v1/embeddings":
            return self.embeddings, {}
        if path == "/v1/chat/completions" and self.chat is not None:
            return self.chat, {}
        if not (path.startswith(V2_PREFIX) and path.endswith(V2_SUFFIX)):
            return None
        parts = path[len(V2_PREFIX) : -len(V2_SUFFIX)].split("/")
        if len(parts) == 1 and parts[0]:
            return self.v2_infer, {"model": parts[0]}
        if len(parts) == 3 and parts[1] == "versions" and parts[0] and parts[2]:
            return self.v2_infer, {"model": parts[0], "version": parts[2]}
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            found = self.match(scope["path"])
            if found is not None:
                await self._serve(found[0], found[1], scope, receive, send)
                return
        await self.app(scope, receive, send)

    async def _serve(
        self,
        handler: Handler,
        params: dict[str, str],
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        scope["surge.received"] = monotonic()
        request_id, headers = collect_headers(scope["headers"], self.wanted)
        scope["surge.request_id"] = request_id
        scope["surge.headers"] = headers
        state = self.state
        try:
            auth = state.auth
            assert auth is not None  # the lifespan sets it before any request
            principal = await auth.identify(scope)
            require(principal, "infer")  # which endpoint: checked once it is known
            scope["surge.principal"] = principal
            answer = await handler(Exchange(scope, receive, state, params))
            limits = scope.get("surge.ratelimit")
            if limits is not None:
                answer.headers.update(limits)
        except SurgeError as error:
            answer = error_answer(scope, state, error)
        except Exception as exc:
            # A bug, not the client's fault: logged with its traceback, answered 500 in
            # the protocol's shape, and the connection stays open for the next request.
            log.exception("unhandled error on %s", scope["path"], exc_info=exc)
            error = SurgeError("internal", f"internal error: {type(exc).__name__}", 500)
            answer = error_answer(scope, state, error)
        await send(
            {
                "type": "http.response.start",
                "status": answer.status,
                "headers": answer.raw_headers(request_id),
            }
        )
        if answer.stream is not None:
            await send_stream(answer.stream, receive, send)
            return
        await send({"type": "http.response.body", "body": answer.body})


async def send_stream(stream: AsyncIterator[bytes], receive: Receive, send: Send) -> None:
    """Send each part of a streamed body as it is made, until it ends or the client
    disconnects; a disconnect cancels the stream where it waits (an upstream read), so
    the work behind it stops too. As Starlette's StreamingResponse does, the receive
    channel is watched alongside: the request body was read, so the next message there
    is the disconnect."""

    async def pump() -> None:
        async for part in stream:
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def disconnected() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    sending = asyncio.ensure_future(pump())
    watching = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait((sending, watching), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (sending, watching):
            task.cancel()
        await asyncio.gather(sending, watching, return_exceptions=True)
        closer = getattr(stream, "aclose", None)
        if closer is not None:
            await closer()
    if sending.done() and not sending.cancelled() and sending.exception() is not None:
        log.warning("stream ended by an error: %r", sending.exception())
