"""Which requests the inference routes answer in front of Starlette, and which they pass on."""

from __future__ import annotations

import asyncio

import pytest

from surge.api.inference_routes import InferenceRoutes


async def v2(exchange):  # stand-ins: only identity matters here
    raise AssertionError


async def embeddings(exchange):
    raise AssertionError


ROUTES = InferenceRoutes(app=None, state=None, v2_infer=v2, embeddings=embeddings,
                         wanted_headers=frozenset())  # fmt: skip


@pytest.mark.parametrize(
    ("path", "handler", "params"),
    [
        ("/v2/models/digits/infer", v2, {"model": "digits"}),
        ("/v2/models/digits/versions/2/infer", v2, {"model": "digits", "version": "2"}),
        ("/v1/embeddings", embeddings, {}),
    ],
)
def test_the_inference_paths_are_matched_with_their_parameters(path, handler, params):
    assert ROUTES.match(path) == (handler, params)


@pytest.mark.parametrize(
    "path",
    [
        "/v2/models//infer",  # an empty model, as Starlette's {model} would refuse
        "/v2/models/a/b/infer",
        "/v2/models/a/versions//infer",
        "/v2/models/a/versions/1/extra/infer",
        "/v2/models/infer",
        "/v2/models/digits/infer/",
        "/v2/models/digits",
        "/v1/embeddings/",
        "/v1/models",
        "/admin/endpoints",
    ],
)
def test_anything_else_goes_to_starlette(path):
    assert ROUTES.match(path) is None


def test_a_request_that_is_not_an_inference_post_is_passed_on():
    seen = []

    async def framework(scope, receive, send):
        seen.append((scope["method"], scope["path"]))

    routes = InferenceRoutes(framework, None, v2, embeddings, frozenset())
    for method, path in [("GET", "/v2/models/digits/infer"), ("POST", "/metrics")]:
        scope = {"type": "http", "method": method, "path": path}
        asyncio.run(routes(scope, None, None))
    assert seen == [("GET", "/v2/models/digits/infer"), ("POST", "/metrics")]
