"""`POST /v1/feedback`: how good an answer was, for the bandit route that chose it.

Body: {"request_id": "<the X-Request-Id of the answer>", "reward": 0..1,
       "feedback_token": "<the X-Feedback-Token of the answer>"}.

The reward moves real traffic, so it needs proof that the caller got the answer: its
feedback token, or a client key with the `feedback` scope of the answer's tenant (a
service that rates its users' answers). A refused proof leaves the answer rewardable by
its owner.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from surge.api.http import read_body
from surge.api.state import ServerState
from surge.cluster.pending import Check, Entry
from surge.core.errors import SurgeError, bad_input
from surge.security.auth import Principal
from surge.serving.bandit_route import BanditRoute

MAX_FEEDBACK_BYTES = 4096
FEEDBACK_SCOPE = "feedback"


def key_may_rate(
    principal: Principal | None, route: str | None = None, tenant: str | None = None
) -> bool:
    """Whether the caller's key may rate answers without their token: it has the
    `feedback` scope and (given `tenant`) belongs to the answer's tenant. Anonymous
    callers never may. Without `tenant`: whether the key could rate any answer."""
    if principal is None or principal.key_id is None:
        return False
    if not principal.allows(FEEDBACK_SCOPE, route):
        return False
    return tenant is None or principal.tenant == tenant


def proof_check(
    routes: dict[str, Any], request_id: str, token: str | None, principal: Principal | None
) -> Check:
    """The check a pending entry must pass before the feedback may take it."""

    def check(entry: Entry) -> None:
        route_name, _segment, arm, tenant = entry
        route = routes.get(route_name)
        if (
            token is not None
            and isinstance(route, BanditRoute)
            and route.token_matches(token, request_id, tenant, arm)
        ):
            return
        if tenant is not None and key_may_rate(principal, route_name, tenant):
            return
        raise SurgeError(
            "feedback_forbidden",
            f"the feedback_token does not match the answer to request {request_id!r} "
            "(send the X-Feedback-Token header of that answer)",
            403,
        )

    return check


async def feedback(request: Request) -> Response:
    state: ServerState = request.app.state.surge
    try:
        doc = orjson.loads(await read_body(request, MAX_FEEDBACK_BYTES))
    except orjson.JSONDecodeError as exc:
        raise bad_input(f"request body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise bad_input("request body must be a JSON object")
    request_id, reward, token = doc.get("request_id"), doc.get("reward"), doc.get("feedback_token")
    if not isinstance(request_id, str) or not request_id:
        raise bad_input("'request_id' is required: the X-Request-Id of the answer")
    if isinstance(reward, bool) or not isinstance(reward, int | float):
        raise bad_input(f"'reward' must be a number in [0, 1], got {reward!r}")
    reward = float(reward)
    if not 0.0 <= reward <= 1.0:  # checked first: a bad reward does not use the request up
        raise bad_input(f"'reward' must be a number in [0, 1], got {reward!r}")
    if token is not None and (not isinstance(token, str) or not token):
        raise bad_input("'feedback_token' must be the X-Feedback-Token header of the answer")
    principal = request.scope.get("surge.principal")
    if token is None and not key_may_rate(principal):  # refused before any lookup
        raise SurgeError(
            "feedback_token_required",
            "'feedback_token' is required: the X-Feedback-Token header of the answer "
            "(or call with a key that has the 'feedback' scope for the answer's tenant)",
            401,
        )
    assert state.plane is not None  # set by the lifespan before any request
    # Wherever the request was answered: the pending store is shared by every process.
    routes = state.feedback_routes
    check = proof_check(routes, request_id, token, principal)
    found = await state.plane.pending.take(request_id, check)
    route = routes.get(found[0]) if found is not None else None
    if found is None or not isinstance(route, BanditRoute):
        raise SurgeError(
            "unknown_request",
            f"no bandit route awaits feedback for request {request_id!r} "
            "(unknown, already rewarded, or too old)",
            404,
        )
    _, segment, arm, _tenant = found
    result = route.reward(request_id, segment, arm, reward)
    return Response(orjson.dumps(result), media_type="application/json")


ROUTES = [Route("/v1/feedback", feedback, methods=["POST"])]
