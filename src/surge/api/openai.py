"""OpenAI-compatible embeddings: `POST /v1/embeddings` and `GET /v1/models`.

The official `openai` client asks for base64 by default; both encodings are served.
An endpoint is an embeddings model when it takes one BYTES input and returns `embedding`.
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass

import numpy as np
import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from surge.api.exchange import Answer, Exchange, via_starlette
from surge.api.guard import admit_quota, authorize
from surge.api.http import (
    admit_by_mode,
    finish_answer,
    new_context,
    read_body,
)
from surge.api.state import ServerState
from surge.core.clock import monotonic
from surge.core.errors import SurgeError, bad_input
from surge.serving.deployment import Deployment
from surge.serving.target import Hints

STARTED = int(time.time())


def _state(request: Request) -> ServerState:
    return request.app.state.surge


def _text_input(deployment: Deployment) -> str | None:
    runtime = deployment.replicas[0].runtime
    texts = [t.name for t in runtime.inputs if t.datatype == "BYTES"]
    has_embedding = any(t.name == "embedding" for t in runtime.outputs)
    return texts[0] if len(texts) == 1 and len(runtime.inputs) == 1 and has_embedding else None


@dataclass(frozen=True)
class EmbeddingsRequest:
    model: str
    inputs: list[object]  # as sent; `_texts` checks them once the endpoint's limit is known
    encoding: str
    dimensions: int | None
    user: str | None
    body_bytes: int


def _parse(body: bytes) -> EmbeddingsRequest:
    """The request's fields; `input` is only shaped into a list here: its items are
    checked by `_texts` against the endpoint's count limit first."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise bad_input(f"request body is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise bad_input("request body must be a JSON object")
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        raise bad_input("'model' is required and must be a string naming an embeddings endpoint")
    inputs = payload.get("input")
    if isinstance(inputs, str):
        inputs = [inputs]
    if not isinstance(inputs, list):
        raise bad_input(
            "'input' must be a string or a list of strings (token arrays are not supported)"
        )
    if not inputs:
        raise bad_input("'input' is an empty list; send at least one string")
    encoding = payload.get("encoding_format")
    if encoding is None:
        encoding = "float"
    elif encoding not in ("float", "base64"):
        raise bad_input(f"'encoding_format' must be 'float' or 'base64', got {_show(encoding)}")
    dimensions = payload.get("dimensions")
    # type(), not isinstance: JSON true is a bool, which Python counts as the int 1.
    if dimensions is not None and (type(dimensions) is not int or dimensions <= 0):
        raise bad_input(f"'dimensions' must be a positive integer, got {_show(dimensions)}")
    user = payload.get("user")
    if user is not None and not isinstance(user, str):
        raise bad_input(f"'user' must be a string, got {_show(user)}")
    return EmbeddingsRequest(model, inputs, encoding, dimensions, user, len(body))


def _texts(inputs: list[object], max_items: int, max_bytes: int) -> list[bytes]:
    """The input strings as UTF-8, checked count first: a body of a million tiny items
    is refused on its length, before any per-item work on the event loop."""
    if len(inputs) > max_items:
        raise bad_input(f"'input' has {len(inputs)} strings; at most {max_items} per request")
    texts: list[bytes] = []
    for i, text in enumerate(inputs):
        if not isinstance(text, str):
            raise bad_input(
                f"'input' must be a string or a list of strings (token arrays are not "
                f"supported); item {i} is {type(text).__name__}"
            )
        # One string can be at most what a whole body may carry (the server's body
        # limit); said here so a body that reaches the parser some other way (inflated,
        # streamed) cannot hand the model more.
        data = text.encode("utf-8")
        if len(data) > max_bytes:
            raise bad_input(
                f"'input' item {i} is {len(data)} bytes; at most {max_bytes} per string"
            )
        texts.append(data)
    return texts


def _show(value: object) -> str:
    """A client's value in an error message, cut short: it may be a megabyte long."""
    text = repr(value) if isinstance(value, (str, int, float, bool)) else type(value).__name__
    return text if len(text) <= 60 else text[:57] + "..."


async def embeddings(exchange: Exchange) -> Answer:
    state = exchange.state
    max_bytes = state.config.server.max_body_bytes
    parsed = _parse(await read_body(exchange, max_bytes))
    target = state.target(parsed.model)
    authorize(exchange, target.name)
    deployment = target.interface()  # what it takes (a route: its first endpoint's)
    text_input = _text_input(deployment)
    if text_input is None:
        raise SurgeError(
            "model_not_found", f"model {parsed.model!r} is not an embeddings model", 404
        )
    modes = state.modes
    assert modes is not None  # the lifespan starts it before any request
    admit_by_mode(exchange, modes)
    ctx = new_context(exchange, target.name, deployment.spec.timeout_s, modes)
    target.refuse_early(ctx)
    texts = _texts(parsed.inputs, deployment.spec.batching.max_batch_size, max_bytes)
    width = next(
        t.shape[1] for t in deployment.replicas[0].runtime.outputs if t.name == "embedding"
    )
    if parsed.dimensions is not None and parsed.dimensions != width:
        raise bad_input(f"'dimensions' must be {width} for {parsed.model!r} (or omitted)")
    tensors = {text_input: np.array(texts, dtype=object)}
    ctx.stamp("validated", monotonic())
    await admit_quota(exchange, len(texts))
    params = {"user": parsed.user} if parsed.user else None
    hints = Hints(
        exchange.scope["headers"],
        params,
        parsed.body_bytes,
        decided=exchange.scope["surge.headers"],
    )
    served = await target.infer(ctx, tensors, hints)
    ctx.stamp("post_routed", monotonic())
    deployment = served.deployment
    outputs = served.outputs
    vectors = outputs["embedding"]
    tokens = int(outputs["token_count"].sum()) if "token_count" in outputs else 0
    if parsed.encoding == "base64":
        items = [base64.b64encode(v.astype("<f4").tobytes()).decode("ascii") for v in vectors]
    else:
        items = list(vectors)
    data = [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(items)]
    payload = {
        "object": "list",
        "data": data,
        "model": target.name,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
    return Answer(
        orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY),
        200,
        finish_answer(exchange, ctx, deployment),
    )


async def models(request: Request) -> Response:
    """Every public name: endpoints and routes, chat models and chat routes."""
    state = _state(request)
    chat = state.chat.names() if state.chat is not None else []
    data = [
        {"id": name, "object": "model", "created": STARTED, "owned_by": "surge"}
        for name in [*state.endpoints, *state.routes, *chat]
    ]
    return Response(orjson.dumps({"object": "list", "data": data}), media_type="application/json")


# POSTs are answered by `inference_routes.InferenceRoutes` in front of Starlette.
INFER_ROUTES = [Route("/v1/embeddings", via_starlette(embeddings), methods=["POST"])]
ROUTES = [Route("/v1/models", models)]
