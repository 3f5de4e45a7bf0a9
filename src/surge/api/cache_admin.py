"""The response cache's admin face: `GET /admin/cache` (each endpoint's counts, bytes and
savings) and `POST /admin/cache/{endpoint}/purge`.

A purge empties Redis for the endpoint and this process's memory, then writes the
registry key `*cache*:<endpoint>` (audited) so every other process empties its memory
too when it follows the change (at once with Redis notifications, else within
`cluster.poll_interval_s`).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from surge.api.admin import _authorized
from surge.api.state import ServerState
from surge.core.errors import not_found

PURGE_KEY_PREFIX = "*cache*:"


def _json(payload: object) -> Response:
    return Response(orjson.dumps(payload), media_type="application/json")


async def cache_stats(request: Request) -> Response:
    state, _ = _authorized(request)
    caches = {n: e.cache.stats() for n, e in state.endpoints.items() if e.cache is not None}
    return _json({"endpoints": caches})


async def purge(request: Request) -> Response:
    state, actor = _authorized(request)
    name = request.path_params["endpoint"]
    endpoint = state.endpoints.get(name)
    if endpoint is None or endpoint.cache is None:
        raise not_found(f"{name!r} is not an endpoint with a response cache")
    result = await endpoint.cache.purge()
    await _tell_every_process(state, name, actor)
    return _json(result)


async def _tell_every_process(state: ServerState, endpoint: str, actor: str) -> None:
    store, plane = state.store, state.plane
    assert store is not None and plane is not None  # set by the lifespan
    key = PURGE_KEY_PREFIX + endpoint
    now = time.time()
    doc: dict[str, Any] = {"endpoint": endpoint, "purged_at": now}
    await asyncio.to_thread(
        store.update_route, key, lambda _: doc, actor=actor, action="cache_purge",
        reason=f"purged the response cache of {endpoint}", now=now,
    )  # fmt: skip
    await plane.announce(key)


ROUTES = [
    Route("/admin/cache", cache_stats),
    Route("/admin/cache/{endpoint}/purge", purge, methods=["POST"]),
]
