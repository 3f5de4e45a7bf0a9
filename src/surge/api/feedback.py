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
    for route in state.bandits:
        try:
            result = route.feedback(request_id, float(reward))
        except SurgeError as error:
            if error.code == "unknown_request":
                continue
            raise
        return Response(orjson.dumps(result), media_type="application/json")
    raise SurgeError(
        "unknown_request",
        f"no bandit route awaits feedback for request {request_id!r} "
        "(unknown, already rewarded, or too old)",
        404,
    )


ROUTES = [Route("/v1/feedback", feedback, methods=["POST"])]
