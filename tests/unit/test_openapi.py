"""The published OpenAPI document: served as checked in, covering every route the app
answers (so a new route without a doc fails here), and valid OpenAPI 3.1."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.routing import Match, Route
from starlette.testclient import TestClient

from surge.api.app import create_app
from surge.api.inference_routes import InferenceRoutes
from surge.api.openapi import document, render
from surge.config import Config

CHECKED_IN = Path(__file__).parents[2] / "docs" / "openapi.json"
METHODS = ("get", "post", "put", "patch", "delete")


@pytest.fixture(scope="module")
def app() -> InferenceRoutes:
    # Not started (no lifespan): the routes and /openapi.json need no server state.
    built = create_app(Config())
    assert isinstance(built, InferenceRoutes)
    return built


def _routes(app: InferenceRoutes) -> list[Route]:
    return [r for r in app.app.routes if isinstance(r, Route)]  # type: ignore[attr-defined]


def _concrete(path: str) -> str:
    """A path the document's template stands for, as a client would send it."""
    return re.sub(r"\{[^}]+\}", "x1", path)


def _documented() -> Iterator[tuple[str, str]]:
    for path, item in document()["paths"].items():
        for method in METHODS:
            if method in item:
                yield path, method.upper()


def _first_match(routes: list[Route], path: str, method: str) -> Route | None:
    """The route Starlette would run for the request (the first full match)."""
    scope = {"type": "http", "path": path, "method": method}
    return next((r for r in routes if r.matches(scope)[0] is Match.FULL), None)


def test_the_served_document_is_the_checked_in_one(app):
    answer = TestClient(app).get("/openapi.json")
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/json"
    assert answer.headers["x-request-id"]
    assert answer.content == CHECKED_IN.read_bytes(), (
        "docs/openapi.json is stale: python -m surge.api.openapi > docs/openapi.json"
    )


def test_every_route_the_app_serves_is_documented(app):
    routes = _routes(app)
    covered = {(id(_first_match(routes, _concrete(p), m)), m) for p, m in _documented()}
    missing = [
        f"{method} {route.path}"
        for route in routes
        for method in sorted((route.methods or set()) - {"HEAD"})
        if (id(route), method) not in covered
    ]
    assert not missing, f"routes without an entry in the OpenAPI document: {missing}"


def test_every_documented_operation_is_served(app):
    routes = _routes(app)
    unserved = [
        f"{m} {p}" for p, m in _documented() if _first_match(routes, _concrete(p), m) is None
    ]
    assert not unserved, f"documented but not served: {unserved}"


def test_the_inference_posts_answered_in_front_of_the_framework_are_documented(app):
    handlers = {
        app.match(_concrete(path))[0]
        for path, method in _documented()
        if method == "POST" and app.match(_concrete(path)) is not None
    }
    assert handlers == {app.v2_infer, app.embeddings, app.chat}
    paths = document()["paths"]
    assert "post" in paths["/v1/chat/completions"]
    assert "post" in paths["/v2/models/{model}/infer"]
    assert "post" in paths["/v2/models/{model}/versions/{version}/infer"]
    assert "post" in paths["/v1/embeddings"]


def _schema_of(response: dict[str, Any]) -> str:
    target = response["$ref"].rsplit("/", 1)[-1]
    return document()["components"]["responses"][target]["content"]["application/json"]["schema"][
        "$ref"
    ].rsplit("/", 1)[-1]


def test_errors_are_documented_in_each_protocols_shape():
    expected = {"/v2": "V2Error", "/v1": "OpenAIError"}
    for path, method in _documented():
        operation = document()["paths"][path][method.lower()]
        shape = next((s for p, s in expected.items() if path.startswith(p)), "AdminError")
        for status, response in operation["responses"].items():
            if int(status) < 400:
                continue
            if "$ref" not in response:  # a bodiless answer: "not ready" is only a status
                assert "content" not in response, f"{method} {path} {status}"
                continue
            assert _schema_of(response) == shape, f"{method} {path} {status}"


def test_refusals_carry_the_headers_a_client_acts_on():
    responses = document()["components"]["responses"]
    for shape in ("v2", "openai", "admin"):
        assert {"Retry-After", "RateLimit", "RateLimit-Policy", "X-Request-Id"} <= set(
            responses[f"{shape}_429"]["headers"]
        )
        assert "Retry-After" in responses[f"{shape}_503"]["headers"]
    for path, method in _documented():
        for response in document()["paths"][path][method.lower()]["responses"].values():
            target = (
                responses[response["$ref"].rsplit("/", 1)[-1]] if "$ref" in response else response
            )
            assert "X-Request-Id" in target["headers"], f"{method} {path}"


def test_admin_operations_need_an_admin_key_and_probes_need_none():
    paths = document()["paths"]
    for path, method in _documented():
        security = paths[path][method.lower()]["security"]
        if path.startswith("/admin/"):
            assert security == [{"adminKey": []}, {"adminHeader": []}], path
    for probe in ("/v2/health/live", "/v2/health/ready", "/v2", "/openapi.json"):
        assert paths[probe]["get"]["security"] == [{}]


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def test_every_reference_resolves():
    doc = json.loads(render())
    for ref in set(_refs(doc)):
        assert ref.startswith("#/"), ref
        node: Any = doc
        for part in ref[2:].split("/"):
            assert part in node, f"{ref} does not resolve"
            node = node[part]


def test_it_validates_as_openapi_3_1():
    pytest.importorskip("schemathesis")
    import jsonschema_rs
    from schemathesis.specs.openapi.definitions import OPENAPI_31_VALIDATOR

    doc = json.loads(render())
    errors = [str(e) for e in OPENAPI_31_VALIDATOR.iter_errors(doc)]
    assert not errors, errors[:5]
    # The 3.1 meta-schema leaves Schema Objects to JSON Schema 2020-12: check each one.
    for name, schema in doc["components"]["schemas"].items():
        assert jsonschema_rs.meta.is_valid(schema), name
