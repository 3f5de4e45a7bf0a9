"""Open Inference Protocol v2 (KServe / Triton REST), JSON and binary tensor extension."""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from surge import __version__
from surge.api.exchange import Answer, Exchange, via_starlette
from surge.api.guard import admit_quota, authorize
from surge.api.http import (
    admit_by_mode,
    byte_count,
    decompress,
    finish_answer,
    new_context,
    read_body,
)
from surge.api.state import ServerState
from surge.api.v2_codec import decode_infer_request, encode_infer_response, model_metadata
from surge.core.clock import monotonic
from surge.serving.target import Hints, rows_of

JSON = "application/json"
EXTENSIONS = ["binary_tensor_data"]


def _json(payload: object, status: int = 200) -> Response:
    return Response(orjson.dumps(payload), status, media_type=JSON)


def _state(request: Request) -> ServerState:
    return request.app.state.surge


async def server_metadata(request: Request) -> Response:
    return _json({"name": "surge", "version": __version__, "extensions": EXTENSIONS})


async def live(request: Request) -> Response:
    return Response(status_code=200)


async def ready(request: Request) -> Response:
    return Response(status_code=200 if _state(request).ready else 503)


async def model_ready(request: Request) -> Response:
    params = request.path_params
    deployment = _state(request).target(params["model"]).interface(params.get("version"))
    return Response(status_code=200 if deployment.accepting else 503)


async def metadata(request: Request) -> Response:
    params = request.path_params
    target = _state(request).target(params["model"])
    deployment = target.interface(params.get("version"))
    runtime = deployment.replicas[0].runtime
    return _json(
        model_metadata(
            target.name,
            target.versions,
            deployment.spec.version.manifest.runtime,
            runtime.inputs,
            runtime.outputs,
        )
    )


async def infer(exchange: Exchange) -> Answer:
    state = exchange.state
    params = exchange.path_params
    version = params.get("version")
    target = state.target(params["model"])
    authorize(exchange, target.name)
    # What the endpoint takes: its stable version (or the pinned one), or for a route the
    # first endpoint it sends to. Candidates are checked to take the same before they serve.
    interface = target.interface(version)
    modes = state.modes
    assert modes is not None  # the lifespan starts it before any request
    admit_by_mode(exchange, modes)
    ctx = new_context(exchange, target.name, interface.spec.timeout_s, modes)
    target.refuse_early(ctx, version)
    raw_length = exchange.header(b"inference-header-content-length")
    # Checked before the body is read; its value against the body's length is the
    # codec's check (a 400 naming both).
    header_length = (
        None if raw_length is None else byte_count(raw_length, "Inference-Header-Content-Length")
    )
    limit = state.config.server.max_body_bytes
    body = decompress(await read_body(exchange, limit), exchange.header(b"content-encoding"), limit)
    runtime = interface.replicas[0].runtime
    parsed = decode_infer_request(
        body,
        header_length,
        runtime.inputs,
        runtime.outputs,
        interface.spec.batching.max_batch_size,
    )
    ctx.stamp("validated", monotonic())
    await admit_quota(exchange, rows_of(parsed.tensors))
    hints = Hints(
        exchange.scope["headers"],
        parsed.parameters,
        len(body),
        version,
        decided=exchange.scope["surge.headers"],
    )
    served = await target.infer(ctx, parsed.tensors, hints)
    ctx.stamp("post_routed", monotonic())
    deployment = served.deployment
    payload, json_length = encode_infer_response(
        model_name=target.name,
        model_version=deployment.version,
        request_id=parsed.id,
        outputs=served.outputs,
        specs=deployment.replicas[0].runtime.outputs,
        requested=parsed.outputs,
        binary_output_default=parsed.binary_output_default,
        parameters={"needs_review": ctx.needs_review} if ctx.needs_review else None,
    )
    headers = finish_answer(exchange, ctx, deployment)
    if json_length is None:
        return Answer(payload, 200, headers)
    headers["Inference-Header-Content-Length"] = str(json_length)
    return Answer(payload, 200, headers, "application/octet-stream")


# POSTs to these paths are answered by `inference_routes.InferenceRoutes` in front of
# Starlette; the router keeps them so other methods get their 405.
INFER_ROUTES = [
    Route("/v2/models/{model}/infer", via_starlette(infer), methods=["POST"]),
    Route("/v2/models/{model}/versions/{version}/infer", via_starlette(infer), methods=["POST"]),
]
ROUTES = [
    Route("/v2", server_metadata),
    Route("/v2/health/live", live),
    Route("/v2/health/ready", ready),
    Route("/v2/models/{model}", metadata),
    Route("/v2/models/{model}/ready", model_ready),
    Route("/v2/models/{model}/versions/{version}", metadata),
    Route("/v2/models/{model}/versions/{version}/ready", model_ready),
]
