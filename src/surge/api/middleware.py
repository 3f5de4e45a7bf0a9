"""Plain ASGI middleware: every answer carries `X-Request-Id`, kept from the client if sent."""

from __future__ import annotations

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from surge.api.errors import unexpected_error_response
from surge.core.clock import monotonic
from surge.core.ids import accept_request_id

# Headers the adapters read, collected in the one pass this middleware makes anyway,
# so handlers need not build Starlette's Headers object per request.
WANTED = frozenset(
    {
        b"x-request-timeout-ms",
        b"inference-header-content-length",
        b"content-encoding",
        b"content-length",
        b"x-priority",
        b"x-tenant",
        b"traceparent",
        b"authorization",
        b"x-api-key",
    }
)


def collect_headers(
    raw: list[tuple[bytes, bytes]], wanted: frozenset[bytes]
) -> tuple[str, dict[bytes, str]]:
    """The request id (the client's, if it sent a usable one) and the wanted headers."""
    client_id = None
    found: dict[bytes, str] = {}
    for key, value in raw:
        if key == b"x-request-id":
            client_id = value.decode("latin-1")
        elif key in wanted:
            found[key] = value.decode("latin-1")
    return accept_request_id(client_id), found


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp, extra_headers: frozenset[bytes] = frozenset()) -> None:
        self.app = app
        # The inline-receipt header's name is configurable, so it joins the set here.
        self.wanted = WANTED | extra_headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope["surge.received"] = monotonic()
        request_id, wanted = collect_headers(scope["headers"], self.wanted)
        scope["surge.request_id"] = request_id
        scope["surge.headers"] = wanted
        header = (b"x-request-id", request_id.encode("latin-1"))
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message["headers"] = [*message.get("headers", []), header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            # Answered here, not re-raised: past this point uvicorn would close the
            # connection, and a keep-alive client would see a reset instead of the 500.
            if started:
                raise
            await unexpected_error_response(Request(scope), exc)(scope, receive, send_with_id)
