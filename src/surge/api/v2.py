"""Open Inference Protocol v2 (KServe / Triton REST), JSON and binary tensor extension."""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from surge import __version__
from surge.api.http import (
    decompress,
    header,
    new_context,
    read_body,
    server_timing,
    user_key,
)
from surge.api.state import ServerState
from surge.api.v2_codec import decode_infer_request, encode_infer_response, model_metadata
from surge.core.clock import monotonic
from surge.core.errors import bad_input

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
    deployment = _state(request).deployment(params["model"], params.get("version"))
    return Response(status_code=200 if deployment.accepting else 503)


async def metadata(request: Request) -> Response:
    params = request.path_params
    deployment = _state(request).deployment(params["model"], params.get("version"))
    runtime = deployment.replicas[0].runtime
    endpoint = _state(request).endpoint(params["model"])
    return _json(
        model_metadata(
            deployment.name,
            [d.version for d in endpoint.deployments],
            deployment.spec.version.manifest.runtime,
            runtime.inputs,
            runtime.outputs,
        )
    )


async def infer(request: Request) -> Response:
    state = _state(request)
    params = request.path_params
    endpoint = state.endpoint(params["model"])
    version = params.get("version")
    # The stable version (or the pinned one) defines the endpoint's tensors; a candidate
    # is checked to take the same ones before it gets traffic.
    interface = endpoint.pinned(version) if version else endpoint.stable
    ctx = new_context(request, endpoint.name, interface.spec.timeout_s)
    limit = state.config.server.max_body_bytes
    body = decompress(await read_body(request, limit), header(request, b"content-encoding"), limit)
    header_length = header(request, b"inference-header-content-length")
    if header_length is not None and not header_length.isdigit():
        raise bad_input(
            f"Inference-Header-Content-Length must be a byte count, got {header_length!r}"
        )
    runtime = interface.replicas[0].runtime
    parsed = decode_infer_request(
        body,
        int(header_length) if header_length is not None else None,
        runtime.inputs,
        runtime.outputs,
        interface.spec.batching.max_batch_size,
    )
    ctx.stamp("validated", monotonic())
    key = user_key(request, endpoint, parsed.parameters) if endpoint.mode == "ab" else None
    served = await endpoint.infer(ctx, parsed.tensors, parsed.rows, version=version, user_key=key)
    deployment = served.deployment
    payload, json_length = encode_infer_response(
        model_name=endpoint.name,
        model_version=deployment.version,
        request_id=parsed.id,
        outputs=served.outputs,
        specs=deployment.replicas[0].runtime.outputs,
        requested=parsed.outputs,
        binary_output_default=parsed.binary_output_default,
    )
    now = monotonic()
    ctx.stamp("responded", now)
    deployment.metrics.total.observe(now - ctx.received)
    deployment.metrics.count_response(200)
    headers = {"Server-Timing": server_timing(ctx), "X-Model-Version": deployment.version}
    if json_length is None:
        return Response(payload, 200, headers, JSON)
    headers["Inference-Header-Content-Length"] = str(json_length)
    return Response(payload, 200, headers, "application/octet-stream")


INFER_ROUTES = [
    Route("/v2/models/{model}/infer", infer, methods=["POST"]),
    Route("/v2/models/{model}/versions/{version}/infer", infer, methods=["POST"]),
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
