"""The baseline for the no-op benchmark: a bare Starlette app on the same uvicorn.

It does what any JSON endpoint must (route, read the body, parse it, build and
serialise a v2-shaped response) and nothing surge adds (validation into
numpy, admission, batching, metrics, request ids, Server-Timing), so
noop-through-surge / this = the share of a bare app's throughput that
surge's serving path keeps.

    python -m benchmarks.bare_app --port 8001
"""

from __future__ import annotations

import argparse

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


async def infer(request: Request) -> Response:
    doc = orjson.loads(await request.body())
    tensor = doc["inputs"][0]
    payload = {
        "model_name": request.path_params["model"],
        "model_version": "1",
        "outputs": [
            {
                "name": "output",
                "datatype": tensor["datatype"],
                "shape": tensor["shape"],
                "data": tensor["data"],
            }
        ],
    }
    return Response(orjson.dumps(payload), media_type="application/json")


async def ready(request: Request) -> Response:
    return Response(status_code=200)


app = Starlette(
    routes=[
        Route("/v2/models/{model}/infer", infer, methods=["POST"]),
        Route("/v2/health/ready", ready),
    ]
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    # The same uvicorn.run arguments as `surge serve` (loop and http left to "auto",
    # which picks uvloop and httptools when installed, as they are for surge).
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level="info",
        access_log=False,
        timeout_graceful_shutdown=30,
        lifespan="on",
    )


if __name__ == "__main__":
    main()
