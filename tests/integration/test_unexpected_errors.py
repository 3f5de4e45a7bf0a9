"""A bug answers 500 in the protocol's shape and the connection stays usable."""

from __future__ import annotations

import threading
import time

import httpx
import uvicorn
from conftest import free_port, run_server
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from surge.api.middleware import RequestIdMiddleware
from surge.repository import write_manifest


async def broken(request):
    raise RuntimeError("a bug")


async def fine(request):
    return PlainTextResponse("ok")


def test_a_bug_gets_a_500_and_the_keep_alive_connection_survives():
    app = Starlette(
        routes=[Route("/v2/broken", broken), Route("/v2/fine", fine)],
        middleware=[Middleware(RequestIdMiddleware)],
    )
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="critical"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
            failed = client.get("/v2/broken", headers={"X-Request-Id": "bug-1"})
            assert failed.status_code == 500
            assert failed.json() == {"error": "internal error: RuntimeError"}
            assert failed.headers["x-request-id"] == "bug-1"
            # Same connection: uvicorn closes it when an exception escapes the app.
            assert client.get("/v2/fine").text == "ok"
    finally:
        server.should_exit = True
        thread.join(10)


WRONG_ROWS = """
class Model:
    def predict(self, batch):
        x = batch["input"]
        return {"output": x[:1] if len(x) == 2 else x}  # a bug warm-up does not meet
"""


def test_a_model_returning_the_wrong_rows_gets_a_prompt_500_not_a_timeout(tmp_path):
    version = tmp_path / "repo" / "wrong" / "1"
    version.mkdir(parents=True)
    (version / "model.py").write_text(WRONG_ROWS)
    write_manifest(version, {
        "runtime": "python", "artifact": "model.py", "parameters": {"class": "Model"},
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 2]}],
        "outputs": [{"name": "output", "datatype": "FP32", "shape": [-1, 2]}],
    })  # fmt: skip
    config = {"model_repository": str(tmp_path / "repo"),
              "endpoints": {"wrong": {"warmup_batches": 0, "timeout_ms": 30000}}}  # fmt: skip
    body = {
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 2], "data": [1, 2, 3, 4]}]
    }
    with run_server(config, tmp_path) as server:
        started = time.monotonic()
        answer = httpx.post(f"{server.url}/v2/models/wrong/infer", json=body, timeout=60)
        assert answer.status_code == 500
        assert "returned 1 rows for output 'output'; the batch has 2" in answer.json()["error"]
        assert time.monotonic() - started < 10  # not the 30 s deadline
