"""One error type, each protocol's shape.

v2: {"error": "message"}; OpenAI: {"error": {"message", "type", "code"}};
everything else (admin, metrics): {"error": {"code", "message", "request_id"}}.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Scope

from surge.api.exchange import Answer
from surge.core.errors import SurgeError

if TYPE_CHECKING:
    from surge.api.state import ServerState

log = logging.getLogger("surge.api")

HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}


def _openai_type(status: int) -> str:
    if status == 429:
        return "rate_limit_error"
    return "invalid_request_error" if status < 500 else "server_error"


def error_answer(scope: Scope, state: ServerState | None, error: SurgeError) -> Answer:
    """The error in its protocol's shape, with the request's books closed: the answer is
    counted and, when a request context was made, its receipt says why it failed."""
    path = scope.get("path", "")
    request_id = scope.get("surge.request_id", "")
    if path.startswith("/v2"):
        body: dict = {"error": error.message}
    elif path.startswith("/v1"):
        body = {"error": {"message": error.message, "type": _openai_type(error.status),
                          "code": error.code, "param": None}}  # fmt: skip
    else:
        body = {"error": {"code": error.code, "message": error.message, "request_id": request_id}}
    headers = dict(error.headers) if error.headers else {}
    if error.retry_after_s is not None:
        headers["Retry-After"] = str(max(1, math.ceil(error.retry_after_s)))
    if state is not None:
        state.count_answer(scope.get("surge.endpoint"), error.status)
        ctx = scope.get("surge.ctx")
        if ctx is not None and not ctx.status:  # not finished yet: its receipt says why
            state.observer.finish(ctx, error.status, error.code, scope["surge.headers"])
    return Answer(orjson.dumps(body), error.status, headers)


def render(request: Request, error: SurgeError) -> Response:
    answer = error_answer(request.scope, getattr(request.app.state, "surge", None), error)
    return Response(answer.body, answer.status, answer.headers, answer.content_type)


async def surge_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, SurgeError)
    return render(request, exc)


async def http_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        message = f"no route for {request.method} {request.url.path}"
    elif exc.status_code == 405:
        message = f"method {request.method} is not allowed on {request.url.path}"
    else:
        message = str(exc.detail)
    error = SurgeError(HTTP_CODES.get(exc.status_code, "http_error"), message, exc.status_code)
    response = render(request, error)
    if exc.headers:
        response.headers.update(exc.headers)
    return response


def unexpected_error_response(request: Request, exc: Exception) -> Response:
    """A bug, not the client's fault: logged with its traceback, answered 500 in the
    protocol's shape, and the server goes on serving."""
    log.exception("unhandled error on %s", request.url.path, exc_info=exc)
    return render(request, SurgeError("internal", f"internal error: {type(exc).__name__}", 500))
