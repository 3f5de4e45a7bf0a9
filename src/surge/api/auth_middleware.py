"""Client keys on every route but the inference POSTs (those are checked in front of the
framework, in `inference_routes.py`): a plain ASGI middleware.

What each path needs:
- health, readiness, server metadata and `/openapi.json`: nothing, ever (probes and
  client generators must reach them);
- `/admin/...`: an admin key from the config (checked by the admin routes themselves) or
  a client key with the `admin` scope, identified here;
- `/metrics` and `/dashboard`: a key with the `metrics` scope when `auth.protect_metrics`;
- everything else (`/v1/feedback`, `/v1/receipts`, model metadata, `/v1/models`): the
  caller is identified here, and a key is needed when `auth.required`. Each route then
  asks the caller for the scope it needs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from surge.api.errors import error_answer
from surge.core.errors import SurgeError
from surge.security.auth import ANONYMOUS_SCOPES, Principal, require
from surge.security.keys import key_id_of
from surge.serving.target import DEFAULT_PRIORITY

if TYPE_CHECKING:
    from surge.api.state import ServerState

PUBLIC = frozenset({"/v2", "/v2/health/live", "/v2/health/ready", "/openapi.json"})


def caller(request: Request) -> Principal:
    """Who made this request (set by the middleware; anonymous when nobody checked)."""
    found = request.scope.get("surge.principal")
    return found if found is not None else Principal(None, None, ANONYMOUS_SCOPES, DEFAULT_PRIORITY)


class ClientAuthMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in PUBLIC:
            await self.app(scope, receive, send)
            return
        state: ServerState | None = getattr(scope["app"].state, "surge", None)
        if state is None or state.auth is None:  # not started yet: nothing to check against
            await self.app(scope, receive, send)
            return
        try:
            await self._identify(scope, state)
        except SurgeError as error:
            answer = error_answer(scope, state, error)
            await send(
                {
                    "type": "http.response.start",
                    "status": answer.status,
                    "headers": answer.raw_headers(scope["surge.request_id"]),
                }
            )
            await send({"type": "http.response.body", "body": answer.body})
            return
        await self.app(scope, receive, send)

    async def _identify(self, scope: Scope, state: ServerState) -> None:
        path: str = scope["path"]
        auth = state.auth
        assert auth is not None
        if path.startswith("/admin/"):
            # An admin key of the config is not a client key: leave it to the admin routes.
            token = _bearer(scope["surge.headers"])
            if token is not None and key_id_of(token) is not None:
                scope["surge.principal"] = await auth.identify(scope)
            return
        metrics = path == "/metrics" or path.startswith("/dashboard")
        if metrics and not state.config.auth.protect_metrics:
            return
        principal = await auth.identify(scope)
        scope["surge.principal"] = principal
        if metrics:
            if principal.key_id is None:
                raise SurgeError("unauthorized", "metrics need a key with the 'metrics' scope", 401)
            require(principal, "metrics")
        elif state.config.auth.required and (
            path.startswith("/v2/models/") or path == "/v1/models"
        ):
            require(principal, "infer", _model_of(path))


def _bearer(headers: dict[bytes, str]) -> str | None:
    authorization = headers.get(b"authorization") or ""
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return headers.get(b"x-api-key")


def _model_of(path: str) -> str | None:
    if path.startswith("/v2/models/"):
        return path[len("/v2/models/") :].split("/", 1)[0] or None
    return None
