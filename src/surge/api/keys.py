"""Client keys and tenants' spend under /admin, behind an admin key; `surge keys` and
`surge costs` are clients of these routes.

GET    /admin/keys                    every key (never the key itself, nor its hash)
POST   /admin/keys                    a new key: {tenant, name, scopes, expires_in_s,
                                      limits, priority} -> 201, with "key" shown this once
GET    /admin/keys/{key_id}           one key
DELETE /admin/keys/{key_id}           revoke: refused by every process within a second
POST   /admin/keys/{key_id}/rotate    {grace_s} -> 201, a new key; the old one ends later
GET    /admin/budgets                 each tenant's spend this hour and day against budget
"""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from surge.api.admin import _authorized, _body, _json
from surge.api.state import ServerState
from surge.security.key_admin import KeyAdmin
from surge.security.keys import NewKey


def _keys(state: ServerState) -> KeyAdmin:
    assert state.keys is not None  # set by the lifespan before any request
    return state.keys


def _shown_once(made: NewKey) -> dict[str, object]:
    return {**made.record.to_dict(), "key": made.token}


async def keys(request: Request) -> Response:
    state, actor = _authorized(request)
    if request.method == "POST":
        made = await _keys(state).create(await _body(request), actor)
        return _json(_shown_once(made), 201)
    return _json({"keys": [r.to_dict() for r in await _keys(state).all_keys()]})


async def key(request: Request) -> Response:
    state, actor = _authorized(request)
    key_id = request.path_params["key_id"]
    if request.method == "DELETE":
        return _json((await _keys(state).revoke(key_id, actor)).to_dict())
    return _json((await _keys(state).get(key_id)).to_dict())


async def rotate(request: Request) -> Response:
    state, actor = _authorized(request)
    body = await _body(request)
    made = await _keys(state).rotate(request.path_params["key_id"], body.get("grace_s", 0), actor)
    return _json(_shown_once(made), 201)


async def budgets(request: Request) -> Response:
    state, _ = _authorized(request)
    assert state.quotas is not None
    return _json({"tenants": await state.quotas.spend_report(time.time())})


ROUTES = [
    Route("/admin/keys", keys, methods=["GET", "POST"]),
    Route("/admin/keys/{key_id}", key, methods=["GET", "DELETE"]),
    Route("/admin/keys/{key_id}/rotate", rotate, methods=["POST"]),
    Route("/admin/budgets", budgets),
]
