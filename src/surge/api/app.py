"""The ASGI application: routes, error rendering, and the lifespan that owns all state."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import FrameType

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp

from surge.api import (
    admin,
    cache_admin,
    chat,
    dashboard,
    feedback,
    keys,
    openai,
    openapi,
    receipts,
    v2,
)
from surge.api.auth_middleware import ClientAuthMiddleware
from surge.api.errors import http_error_handler, surge_error_handler
from surge.api.inference_routes import InferenceRoutes
from surge.api.middleware import WANTED, RequestIdMiddleware
from surge.api.state import ServerState
from surge.config import Config, load_worker_config
from surge.core.errors import SurgeError
from surge.observe.logs import configure_logging


async def metrics(request: Request) -> Response:
    return Response(request.app.state.surge.metrics.render(), media_type=CONTENT_TYPE_LATEST)


def create_app(config: Config, state: ServerState | None = None) -> ASGIApp:
    """`state` may be passed in so the process that runs the server can reach it (SIGTERM)."""
    server_state = state or ServerState(config)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        app.state.surge = server_state
        await server_state.start()
        _drain_on_sigterm(server_state)
        try:
            yield
        finally:
            await server_state.shutdown()

    wanted = frozenset({config.observability.receipts.inline_header.lower().encode("latin-1")})
    framework = Starlette(
        # Inference routes first: Starlette tries routes in order.
        routes=[
            *v2.INFER_ROUTES,
            *openai.INFER_ROUTES,
            *chat.INFER_ROUTES,
            *v2.ROUTES,
            *openai.ROUTES,
            *feedback.ROUTES,
            *admin.ROUTES,
            *cache_admin.ROUTES,
            *keys.ROUTES,
            *receipts.ROUTES,
            *dashboard.ROUTES,
            Route("/metrics", metrics),
            *openapi.ROUTES,
        ],
        middleware=[
            Middleware(RequestIdMiddleware, extra_headers=wanted),
            Middleware(ClientAuthMiddleware),
        ],
        exception_handlers={
            SurgeError: surge_error_handler,
            HTTPException: http_error_handler,
            # Other exceptions (bugs) are answered by RequestIdMiddleware.
        },
        lifespan=lifespan,
    )
    # The inference POSTs are answered in front of the framework (inference_routes.py).
    return InferenceRoutes(
        framework, server_state, v2.infer, openai.embeddings, WANTED | wanted,
        chat=chat.chat_completions,
    )  # fmt: skip


def _drain_on_sigterm(state: ServerState) -> None:
    """Mark the server draining (ready probes and new requests get 503) as soon as
    SIGTERM arrives, then let uvicorn's own handler run its graceful shutdown."""
    previous = signal.getsignal(signal.SIGTERM)
    if not callable(previous):
        return

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        state.begin_draining()
        previous(signum, frame)

    with contextlib.suppress(ValueError):  # not the main thread: nothing to wrap
        signal.signal(signal.SIGTERM, on_sigterm)


def app_from_env() -> ASGIApp:
    """Factory for multi-worker mode: each worker process builds its own app."""
    config = load_worker_config()
    configure_logging(config.server.log_level, config.observability.logs.format)
    return create_app(config)
