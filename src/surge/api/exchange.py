"""One HTTP exchange on an inference route: what the handler reads, and what it answers.

The inference handlers take an `Exchange` (the ASGI scope and receive channel, the
server state, the path parameters) and return an `Answer` (status, headers, body), not
Starlette's Request and Response: on the hot path those objects and the framework
layers around them cost more than the whole rest of a no-op request's bookkeeping
(see `inference_routes.py`). Both are plain slotted classes built once per request.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope

if TYPE_CHECKING:
    from surge.api.state import ServerState

JSON = "application/json"


@dataclass(slots=True, eq=False)
class Exchange:
    scope: Scope
    receive: Receive
    state: ServerState
    path_params: dict[str, str]

    def header(self, name: bytes) -> str | None:
        """A request header the adapters read, collected in one pass on arrival
        (lower-case name; see `middleware.WANTED`)."""
        return self.scope["surge.headers"].get(name)


@dataclass(slots=True, eq=False)
class Answer:
    body: bytes
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = JSON
    # A body sent as it is made (server-sent events), instead of `body`: each item is
    # sent as it comes, and closing it is how the answer is cancelled.
    stream: AsyncIterator[bytes] | None = None

    def raw_headers(self, request_id: str) -> list[tuple[bytes, bytes]]:
        """The ASGI header list: content type and length, the request id, then ours."""
        raw = [(b"content-type", self.content_type.encode("latin-1"))]
        if self.stream is None:
            raw.append((b"content-length", str(len(self.body)).encode("latin-1")))
        raw.append((b"x-request-id", request_id.encode("latin-1")))
        for name, value in self.headers.items():
            raw.append((name.lower().encode("latin-1"), value.encode("latin-1")))
        return raw


Handler = Callable[[Exchange], Awaitable[Answer]]


def via_starlette(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """The same handler as a Starlette endpoint, for the router's table: other methods
    get their 405 there, while `InferenceRoutes` answers the POSTs in front of it."""

    async def endpoint(request: Request) -> Response:
        exchange = Exchange(
            request.scope, request.receive, request.app.state.surge, dict(request.path_params)
        )
        answer = await handler(exchange)
        return Response(answer.body, answer.status, answer.headers, answer.content_type)

    return endpoint
