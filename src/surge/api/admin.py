"""Read-only admin views (the admin error shape). Keys and write operations come with rollouts."""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


async def endpoints(request: Request) -> Response:
    """What serves, how it runs, and what it measured (e.g. the int8 quality report)."""
    state = request.app.state.surge
    body = []
    for deployment in state.deployments.values():
        queue = deployment.queue_state()
        top = deployment.spec.batching.max_batch_size
        body.append({
            **deployment.describe(),
            "queued_requests": queue.queued_requests,
            "busy_replicas": queue.busy_replicas,
            "batch_latency_ms": {
                "1": round(deployment.latency.estimate_s(1) * 1000, 3),
                str(top): round(deployment.latency.estimate_s(top) * 1000, 3),
            },
        })  # fmt: skip
    return Response(orjson.dumps({"endpoints": body}), media_type="application/json")


ROUTES = [Route("/admin/endpoints", endpoints)]
