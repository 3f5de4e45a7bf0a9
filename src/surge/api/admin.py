"""The admin API under /admin: views and rollout operations, behind an admin key.

Every route answers in the admin error shape; the CLI (`surge deploy`, `promote`,
`rollback`, `status`, `history`) is a client of these same routes.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from surge.api.http import read_body
from surge.api.state import ServerState
from surge.config import AB_KEY_PATTERN
from surge.core.errors import SurgeError, bad_input
from surge.repository import name_problem
from surge.security.auth import require
from surge.serving.bandit_route import BanditRoute
from surge.serving.mode_driver import ModeDriver
from surge.serving.rollouts import DEPLOY_MODES, Rollouts
from surge.serving.routes import FallbackRoute

MAX_ADMIN_BODY_BYTES = 64 << 10
MAX_ROW_ID = 2**63 - 1  # the largest id SQLite and PostgreSQL (BIGINT) rows can have
AB_KEY = re.compile(AB_KEY_PATTERN)


def _json(payload: object, status: int = 200) -> Response:
    return Response(orjson.dumps(payload), status, media_type="application/json")


def _authorized(request: Request) -> tuple[ServerState, str]:
    """The server state and the name of the admin key the request shows."""
    state: ServerState = request.app.state.surge
    principal = request.scope.get("surge.principal")
    if principal is not None and principal.key_id is not None:  # a client key (sgk_...)
        require(principal, "admin")
        return state, f"key:{principal.key_id}"
    actor = state.admin.authenticate(
        request.headers.get("authorization"), request.headers.get("x-admin-key")
    )
    return state, actor


def _rollouts(state: ServerState) -> Rollouts:
    assert state.rollouts is not None  # set by the lifespan before any request
    return state.rollouts


async def _body(request: Request) -> dict[str, Any]:
    raw = await read_body(request, MAX_ADMIN_BODY_BYTES)
    if not raw.strip():
        return {}
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise bad_input(f"request body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise bad_input("request body must be a JSON object")
    return doc


def _string(doc: dict[str, Any], key: str, default: str | None = None) -> str:
    value = doc.get(key, default)
    if not isinstance(value, str) or not value:
        raise bad_input(f"'{key}' is required and must be a non-empty string")
    return value


async def endpoints(request: Request) -> Response:
    """What serves, how it runs, and what it measured (e.g. the int8 quality report)."""
    state, _ = _authorized(request)
    body = []
    for endpoint in state.endpoints.values():
        for deployment in endpoint.deployments:
            queue = deployment.queue_state()
            top = deployment.spec.batching.max_batch_size
            body.append({
                **deployment.describe(),
                "role": "stable" if deployment is endpoint.stable else "candidate",
                "queued_requests": queue.queued_requests,
                "busy_replicas": queue.busy_replicas,
                "batch_latency_ms": {
                    "1": round(deployment.latency.estimate_s(1) * 1000, 3),
                    str(top): round(deployment.latency.estimate_s(top) * 1000, 3),
                },
            })  # fmt: skip
    return _json({"endpoints": body})


async def status(request: Request) -> Response:
    state, _ = _authorized(request)
    name = request.path_params["endpoint"]
    doc = await _rollouts(state).status(name)
    processes = await _processes(state)
    if processes is not None:
        doc["processes"] = [_serving(p, name) for p in processes]
        leader = next((p for p in processes if p["state"].get("leader")), None)
        if leader is not None and doc["rollout"] is not None:
            waiting = (leader["state"].get("waiting_for") or {}).get(name)
            doc["rollout"]["waiting_for"] = waiting or doc["rollout"]["waiting_for"]
    drift = state.observer.drift
    for version in doc["versions"]:  # None: not watched (drift off, or a shadow)
        version["drift"] = drift.describe(doc["endpoint"], version["version"]) if drift else None
    autoscaler = state.autoscaler
    doc["autoscale"] = autoscaler.status(doc["endpoint"]) if autoscaler is not None else None
    return _json(doc)


async def processes(request: Request) -> Response:
    """Every live process on this registry: what it serves, whether it leads rollouts."""
    state, _ = _authorized(request)
    found = await _processes(state)
    if found is None:
        raise SurgeError("store_unavailable", "the registry cannot be read right now", 503, 1.0)
    for process in found:
        process["routes"] = process["state"].get("routes") or {}
    return _json({"processes": found})


async def _processes(state: ServerState) -> list[dict[str, Any]] | None:
    """The live processes' heartbeats, this process marked; None when unreadable."""
    assert state.plane is not None
    try:
        records = await state.plane.peers()
    except Exception:
        return None
    now = time.time()
    return [
        {
            "id": r.id,
            "host": r.host,
            "pid": r.pid,
            "this": r.id == state.plane.process_id,
            "heartbeat_age_s": round(max(0.0, now - r.heartbeat_at), 2),
            "started_at": r.started_at,
            "state": r.state,
        }
        for r in records
    ]


def _serving(process: dict[str, Any], endpoint: str) -> dict[str, Any]:
    """One process's line in an endpoint's status: the revision it serves."""
    published = process["state"]
    failure = (published.get("failures") or {}).get(endpoint)
    return {
        "id": process["id"],
        "host": process["host"],
        "pid": process["pid"],
        "this": process["this"],
        "revision": (published.get("routes") or {}).get(endpoint),
        "leader": bool(published.get("leader")),
        "load_failure": failure,
        "mode": published.get("mode"),
        "heartbeat_age_s": process["heartbeat_age_s"],
    }


async def deploy(request: Request) -> Response:
    state, actor = _authorized(request)
    doc = await _body(request)
    name = request.path_params["endpoint"]
    mode = doc.get("mode", "swap")
    if mode not in DEPLOY_MODES:
        raise bad_input(f"'mode' must be one of {', '.join(DEPLOY_MODES)}, got {mode!r}")
    percent = doc.get("percent")
    if percent is not None and (isinstance(percent, bool) or not isinstance(percent, int | float)):
        raise bad_input(f"'percent' must be a number, got {percent!r}")
    model = _string(doc, "model", state.config.model_of(name) if name in state.endpoints else None)
    version = _string(doc, "version")
    # The names become directories under the model repository: refused here, before
    # anything is looked up, and again by the repository itself.
    for kind, value in (("model", model), ("version", version)):
        if problem := name_problem(f"'{kind}'", value):
            raise bad_input(problem)
    ab_key = doc.get("ab_key")
    if ab_key is not None and not (isinstance(ab_key, str) and AB_KEY.fullmatch(ab_key)):
        raise bad_input(
            f"'ab_key' must look like header:<name> or parameter:<name>, got {ab_key!r}"
        )
    result = await _rollouts(state).deploy(
        name,
        model,
        version,
        mode=mode,
        percent=percent,
        ab_key=ab_key,
        actor=actor,
    )
    return _json(result)


async def decide(request: Request) -> Response:
    """POST .../promote or .../rollback, with an optional {"reason"}."""
    state, actor = _authorized(request)
    doc = await _body(request)
    reason = str(doc.get("reason") or "operator")
    rollouts, name = _rollouts(state), request.path_params["endpoint"]
    operation = {"promote": rollouts.promote, "rollback": rollouts.rollback}.get(
        request.path_params["operation"]
    )
    if operation is None:
        raise SurgeError("not_found", f"no route for POST {request.url.path}", 404)
    return _json(await operation(name, actor=actor, reason=reason))


async def history(request: Request) -> Response:
    state, _ = _authorized(request)
    query = request.query_params
    entries = await _rollouts(state).history(
        query.get("endpoint"), _limit(query), query.get("action")
    )
    return _json({"entries": entries})


async def versions(request: Request) -> Response:
    state, _ = _authorized(request)
    assert state.store is not None
    records = await asyncio.to_thread(state.store.list_versions, request.query_params.get("model"))
    return _json({
        "versions": [
            {"model": r.model, "version": r.version, "checksum": r.checksum,
             "registered_at": r.registered_at, "registered_by": r.registered_by}
            for r in records
        ]
    })  # fmt: skip


async def review_queue(request: Request) -> Response:
    """Items a cascade's last tier was unsure of: pending (oldest first) by default."""
    state, _ = _authorized(request)
    assert state.store is not None
    query = request.query_params
    pending = {"pending": True, "labelled": False, "all": None}.get(query.get("state", "pending"))
    if query.get("state", "pending") not in ("pending", "labelled", "all"):
        raise bad_input("'state' must be pending, labelled or all")
    items = await asyncio.to_thread(
        state.store.list_reviews,
        endpoint=query.get("endpoint"),
        pending=pending,
        limit=_limit(query),
    )
    return _json({"items": [item.to_dict() for item in items]})


async def label_review(request: Request) -> Response:
    """A human's label for a review item, stored as labelled feedback."""
    state, actor = _authorized(request)
    assert state.store is not None
    raw_id = request.path_params["item"]
    # ASCII digits only ("²".isdigit() is true), and no more than a database row id holds.
    if not (raw_id.isascii() and raw_id.isdigit()) or int(raw_id) > MAX_ROW_ID:
        raise SurgeError("review_item_not_found", f"no review item {raw_id[:40]!r}", 404)
    doc = await _body(request)
    if "label" not in doc or doc["label"] is None:
        raise bad_input("'label' is required: the correct answer for this item")
    item = await asyncio.to_thread(
        state.store.label_review, int(raw_id), doc["label"], actor=actor, now=time.time()
    )
    return _json(item.to_dict())


def _modes(state: ServerState) -> ModeDriver:
    assert state.modes is not None  # set by the lifespan before any request
    return state.modes


async def mode(request: Request) -> Response:
    """GET: the burst mode, its switches, signals and recent changes. POST {"mode",
    "reason"}: force a mode until released. DELETE: back to automatic."""
    state, actor = _authorized(request)
    modes = _modes(state)
    if request.method == "GET":
        return _json(modes.describe())
    doc = await _body(request)
    reason = str(doc.get("reason") or "operator")
    if request.method == "DELETE":
        return _json(await modes.release(reason, actor))
    return _json(await modes.force(_string(doc, "mode"), reason, actor))


async def routes(request: Request) -> Response:
    """Every route: its policy, what it decided so far, and its breakers or bandit."""
    state, _ = _authorized(request)
    body = {}
    for name, route in state.routes.items():
        view: dict[str, Any] = {
            "policy": type(route).__name__,
            "decisions": [
                {"target": target, "action": action, "requests": count}
                for (target, action), count in sorted(route.counts.items())
            ],
        }
        if isinstance(route, FallbackRoute):
            view["breakers"] = {t: b.state for t, b in route.breakers.items()}
        if isinstance(route, BanditRoute):
            view["bandit"] = {s: route.bandit.stats(s) for s in route.bandit.segments}
        body[name] = view
    return _json({"routes": body})


def _limit(query: Any) -> int:
    raw = query.get("limit", "100")
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= 10_000:
        raise bad_input(f"'limit' must be a whole number in 1..10000, got {raw!r}")
    return int(raw)


ROUTES = [
    Route("/admin/endpoints", endpoints),
    Route("/admin/endpoints/{endpoint}", status),
    Route("/admin/endpoints/{endpoint}/deploy", deploy, methods=["POST"]),
    Route("/admin/endpoints/{endpoint}/{operation}", decide, methods=["POST"]),  # after deploy
    Route("/admin/history", history),
    Route("/admin/versions", versions),
    Route("/admin/review", review_queue),
    Route("/admin/mode", mode, methods=["GET", "POST", "DELETE"]),
    Route("/admin/routes", routes),
    Route("/admin/processes", processes),
    Route("/admin/review/{item}", label_review, methods=["POST"]),
]
