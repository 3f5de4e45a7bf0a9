"""Bad input gets a clear 4xx in the protocol's shape, with the request id; the server goes on."""

from __future__ import annotations

import httpx
import numpy as np
import orjson
import pytest

ROW = [1.0] * 64


def v2(rows: list | None = None, **overrides) -> dict:
    tensor = {"name": "input", "datatype": "FP32", "shape": [1, 64], "data": rows or ROW}
    tensor.update(overrides)
    return {"inputs": [tensor]}


NON_FINITE = b'{"inputs":[{"name":"input","datatype":"FP32","shape":[1,2],"data":[NaN,1]}]}'
V2_CASES = {
    "malformed json": (b"{not json", 400, "JSON"),
    "not an object": (b"[1, 2]", 400, "object"),
    "no inputs": (orjson.dumps({"inputs": []}), 400, "input"),
    "unknown input": (orjson.dumps(v2(name="pixels")), 400, "pixels"),
    "wrong datatype": (orjson.dumps(v2(datatype="INT32")), 400, "FP32"),
    "wrong shape": (orjson.dumps(v2(shape=[1, 63], data=ROW[:63])), 400, "shape"),
    "data count vs shape": (orjson.dumps(v2(shape=[2, 64])), 400, "128"),
    "strings for numbers": (orjson.dumps(v2(rows=["a"] * 64)), 400, "input"),
    "NaN literal": (NON_FINITE, 400, "JSON"),
    "empty batch": (orjson.dumps(v2(shape=[0, 64], data=[])), 400, "empty"),
    "oversized batch": (orjson.dumps(v2(shape=[65, 64], data=ROW * 65)), 400, "64"),
}


@pytest.mark.parametrize("case", list(V2_CASES))
def test_v2_bad_input_is_400_with_a_message(demo_server, case):
    body, status, needle = V2_CASES[case]
    r = httpx.post(f"{demo_server.url}/v2/models/digits/infer", content=body)
    assert r.status_code == status, r.text
    message = r.json()["error"]
    assert isinstance(message, str) and needle.lower() in message.lower()
    assert r.headers["x-request-id"]


def test_nan_in_float_data_is_refused(demo_server):
    body = orjson.dumps(v2(rows=[float("nan"), *ROW[1:]]), option=orjson.OPT_SERIALIZE_NUMPY)
    # orjson writes NaN as null; either way the server must refuse it, not compute on it.
    r = httpx.post(f"{demo_server.url}/v2/models/digits/infer", content=body)
    assert r.status_code == 400


def test_nan_in_binary_tensor_data_is_refused(demo_server):
    data = np.array([[np.nan] + [1.0] * 63], dtype="<f4").tobytes()
    tensor = {"name": "input", "datatype": "FP32", "shape": [1, 64],
              "parameters": {"binary_data_size": len(data)}}  # fmt: skip
    header = orjson.dumps({"inputs": [tensor]})
    r = httpx.post(
        f"{demo_server.url}/v2/models/digits/infer",
        content=header + data,
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert r.status_code == 400 and "finite" in r.json()["error"]


def test_body_past_the_limit_is_413(demo_server):
    r = httpx.post(f"{demo_server.url}/v2/models/digits/infer", content=b"x" * 1_000_001)
    assert r.status_code == 413 and "limit" in r.json()["error"]


def test_unknown_route_model_version_method(demo_server):
    url = demo_server.url
    assert httpx.get(f"{url}/v2/models/nope").status_code == 404
    assert httpx.get(f"{url}/v2/models/digits/versions/7").status_code == 404
    r = httpx.get(f"{url}/v2/models/digits/infer")
    assert r.status_code == 405 and "POST" in r.headers["allow"]
    r = httpx.get(f"{url}/no/such/route")
    assert r.status_code == 404 and r.json()["error"]["request_id"] == r.headers["x-request-id"]


def test_bad_deadline_header(demo_server):
    r = httpx.post(
        f"{demo_server.url}/v2/models/digits/infer",
        content=orjson.dumps(v2()),
        headers={"X-Request-Timeout-Ms": "soon"},
    )
    assert r.status_code == 400 and "X-Request-Timeout-Ms" in r.json()["error"]


OPENAI_CASES = {
    "malformed json": b"{",
    "no model": b'{"input": "x"}',
    "token arrays": b'{"model": "embed", "input": [[1, 2]]}',
    "empty list": b'{"model": "embed", "input": []}',
    "bad encoding": b'{"model": "embed", "input": "x", "encoding_format": "hex"}',
    "wrong dimensions": b'{"model": "embed", "input": "x", "dimensions": 3}',
}


@pytest.mark.parametrize("case", list(OPENAI_CASES))
def test_openai_bad_input_is_400_in_openai_shape(demo_server, case):
    r = httpx.post(f"{demo_server.url}/v1/embeddings", content=OPENAI_CASES[case])
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]


def test_request_id_is_kept_and_server_still_serves(demo_server):
    r = httpx.post(
        f"{demo_server.url}/v2/models/digits/infer",
        content=orjson.dumps(v2()),
        headers={"X-Request-Id": "client-chosen-42"},
    )
    assert r.status_code == 200 and r.headers["x-request-id"] == "client-chosen-42"
    assert "compute;dur=" in r.headers["server-timing"]
    metrics = httpx.get(f"{demo_server.url}/metrics").text
    assert 'surge_requests_total{code="400",endpoint="digits"}' in metrics
    assert 'surge_stage_latency_seconds_bucket{endpoint="digits",le="+Inf",stage="queue_wait"}' in (
        metrics
    )
