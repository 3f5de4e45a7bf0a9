"""The ASGI application: routes, error rendering, and the lifespan that owns all state."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from surge.api import openai, v2
from surge.api.errors import http_error_handler, surge_error_handler, unexpected_error_handler
from surge.api.middleware import RequestIdMiddleware
from surge.api.state import ServerState
from surge.config import Config, config_path_from_env, load_config
from surge.core.errors import SurgeError


async def metrics(request: Request) -> Response:
    return Response(request.app.state.surge.metrics.render(), media_type=CONTENT_TYPE_LATEST)


def create_app(config: Config, state: ServerState | None = None) -> Starlette:
    """`state` may be passed in so the process that runs the server can reach it (SIGTERM)."""
    server_state = state or ServerState(config)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        app.state.surge = server_state
        await server_state.start()
        try:
            yield
        finally:
            await server_state.shutdown()

    return Starlette(
        routes=[*v2.ROUTES, *openai.ROUTES, Route("/metrics", metrics)],
        middleware=[Middleware(RequestIdMiddleware)],
        exception_handlers={
            SurgeError: surge_error_handler,
            HTTPException: http_error_handler,
            Exception: unexpected_error_handler,
        },
        lifespan=lifespan,
    )


def app_from_env() -> Starlette:
    """Factory for multi-worker mode: each worker process builds its own app."""
    return create_app(load_config(config_path_from_env()))
