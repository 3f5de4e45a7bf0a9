"""`POST /v1/feedback`: how good an answer was, for the bandit route that chose it.

Body: {"request_id": "<the X-Request-Id of the answer>", "reward": 0..1}.
"""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from surge.api.http import read_body
from surge.api.state import ServerState
from surge.core.errors import SurgeError, bad_input
from surge.serving.bandit_route import BanditRoute

MAX_FEEDBACK_BYTES = 4096


async def feedback(request: Request) -> Response:
    state: ServerState = request.app.state.surge
    try:
        doc = orjson.loads(await read_body(request, MAX_FEEDBACK_BYTES))
    except orjson.JSONDecodeError as exc:
        raise bad_input(f"request body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise bad_input("request body must be a JSON object")
    request_id, reward = doc.get("request_id"), doc.get("reward")
    if not isinstance(request_id, str) or not request_id:
        raise bad_input("'request_id' is required: the X-Request-Id of the answer")
    if isinstance(reward, bool) or not isinstance(reward, int | float):
        raise bad_input(f"'reward' must be a number in [0, 1], got {reward!r}")
    reward = float(reward)
    if not 0.0 <= reward <= 1.0:  # checked first: a bad reward does not use the request up
        raise bad_input(f"'reward' must be a number in [0, 1], got {reward!r}")
    assert state.plane is not None  # set by the lifespan before any request
    # Wherever the request was answered: the pending store is shared by every process.
    found = await state.plane.pending.take(request_id)
    route = state.routes.get(found[0]) if found is not None else None
    if found is None or not isinstance(route, BanditRoute):
        raise SurgeError(
            "unknown_request",
            f"no bandit route awaits feedback for request {request_id!r} "
            "(unknown, already rewarded, or too old)",
            404,
        )
    _, segment, arm = found
    result = route.reward(request_id, segment, arm, reward)
    return Response(orjson.dumps(result), media_type="application/json")


ROUTES = [Route("/v1/feedback", feedback, methods=["POST"])]
