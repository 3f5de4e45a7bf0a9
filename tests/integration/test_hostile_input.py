"""Hostile input over real HTTP: bodies and headers built to break the parser get a 400 in
the protocol's shape (never a 500), and deadlines no server could meet do not let a
client switch the burst mode for everyone."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import orjson
import pytest
from conftest import ADMIN, run_server

ROW = [1.0] * 64


def _v2_infer(server_url: str, body: bytes, **headers) -> httpx.Response:
    return httpx.post(f"{server_url}/v2/models/digits/infer", content=body, headers=headers)


def _v2_body(data: bytes = orjson.dumps(ROW), parameters: bytes = b"{}") -> bytes:
    return (
        b'{"parameters":' + parameters + b',"inputs":[{"name":"input","datatype":"FP32",'
        b'"shape":[1,64],"data":' + data + b"}]}"
    )  # fmt: skip


V2_CASES = {
    "data nested 1,000 deep": (_v2_body(b"[" * 1000 + b"1.0" + b"]" * 1000), "nested deeper"),
    "parameters nested 1,000 deep": (
        _v2_body(parameters=b'{"a":' * 1000 + b"1" + b"}" * 1000),
        "nested more than",
    ),
}


@pytest.mark.parametrize("case", list(V2_CASES))
def test_v2_deeply_nested_bodies_are_400s(demo_server, case):
    body, needle = V2_CASES[case]
    r = _v2_infer(demo_server.url, body)
    assert r.status_code == 400, r.text
    assert needle in r.json()["error"] and r.headers["x-request-id"]


@pytest.mark.parametrize("value", [b"\xb2", b"1" * 40, b"99999999999999999"])
def test_v2_header_length_that_is_not_a_count_of_this_body_is_a_400(demo_server, value):
    # b"\xb2" is '²' in latin-1: str.isdigit() said yes and int() said no (a 500).
    r = _v2_infer(demo_server.url, _v2_body(), **{"Inference-Header-Content-Length": value})
    assert r.status_code == 400, r.text
    assert "Inference-Header-Content-Length" in r.json()["error"]


def test_openai_input_count_is_refused_before_its_items(demo_server):
    body = orjson.dumps({"model": "embed", "input": ["a"] * 100_000 + [[1, 2]]})
    r = httpx.post(f"{demo_server.url}/v1/embeddings", content=body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["message"] == "'input' has 100001 strings; at most 32 per request"


@pytest.mark.parametrize(
    "body",
    [
        b'{"model": "embed", "input": ["ok", [[["deep"]]]]}',
        b'{"model": "embed", "input": "x", "dimensions": true}',
        b'{"model": "embed", "input": ["ok", 123456789012345678901234567890]}',
        b'{"model": "embed", "input": [NaN]}',
    ],
)
def test_openai_hostile_values_are_400s(demo_server, body):
    r = httpx.post(f"{demo_server.url}/v1/embeddings", content=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["type"] == "invalid_request_error"


# -- burst modes ---------------------------------------------------------------------------


def _endpoint(**extra) -> dict:
    return {"model": "digits", "version": "1", "timeout_ms": 5000,
            "batching": {"max_batch_size": 16, "max_queue_delay_ms": 1}, **extra}  # fmt: skip


async def _hostile_round(url: str, n: int) -> list[int]:
    body = _v2_body()
    # Two tricks: 0.001 ms on an endpoint with no warm-up (its unloaded cost is 0 until a
    # batch runs, which such deadlines never let happen), and 1 ms on a warm one (more
    # than the batch costs, less than its batching delay).
    calls = [("cold", "0.001"), ("warm", "1")] * (n // 2)
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        answers = await asyncio.gather(
            *(
                client.post(
                    f"/v2/models/{name}/infer", content=body, headers={"X-Request-Timeout-Ms": ms}
                )
                for name, ms in calls
            )
        )
    return [a.status_code for a in answers]


def test_tiny_client_deadlines_cannot_put_the_server_in_emergency_mode(demo_models: Path, tmp_path):
    config = {
        "model_repository": str(demo_models),
        # Evaluated every 0.1 s: each round of 50 lands in one or two intervals, well past
        # the minimum sample, so it is the deadline floor that has to hold the mode.
        "modes": {"evaluate_interval_s": 0.1, "hold_s": 0.5, "min_dwell_s": 0.2},
        "endpoints": {"cold": _endpoint(warmup_batches=0), "warm": _endpoint(warmup_batches=1)},
    }
    with run_server(config, tmp_path) as server:
        codes: list[int] = []
        for _ in range(2):  # ~100 requests, repeated as an attacker would
            codes += asyncio.run(_hostile_round(server.url, 50))
            time.sleep(0.3)  # three evaluations see the round
        assert codes.count(504) >= 90 and set(codes) <= {200, 504}, codes
        state = httpx.get(f"{server.url}/admin/mode", headers=ADMIN).json()
        assert state["mode"] == "normal", state["history"]
        assert state["history"] == []
        r = httpx.post(f"{server.url}/v2/models/cold/infer", content=_v2_body())
        assert r.status_code == 200, r.text  # honest callers are served as usual
