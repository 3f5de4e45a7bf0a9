"""An upstream model call is bounded by the request's deadline, not only by the manifest's
timeout: once the client has its 504, the replica stops waiting on the remote and is free
for the next batch; a batch whose deadline has passed is not sent at all."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml
from conftest import run_server
from test_routes import DIGITS_TENSORS

from surge.core.errors import SurgeError
from surge.repository import ModelRepository
from surge.runtimes.base import RuntimeSettings
from surge.runtimes.upstream import UpstreamRuntime

SLOW_S = 3.0  # how long the remote takes when slow; far beyond every deadline below


class SlowUpstream:
    """A v2 server on 127.0.0.1 that answers any digits request after `delay_s`."""

    def __init__(self) -> None:
        self.delay_s = 0.0
        self.received = 0
        self.lock = threading.Lock()
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as a real model server

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with upstream.lock:
                    upstream.received += 1
                    delay_s = upstream.delay_s
                time.sleep(delay_s)
                rows = body["inputs"][0]["shape"][0]
                answer = json.dumps({"model_name": "digits", "outputs": [
                    {"name": "probabilities", "datatype": "FP32", "shape": [rows, 10],
                     "data": [0.1] * (10 * rows)},
                    {"name": "label", "datatype": "INT64", "shape": [rows], "data": [0] * rows},
                ]}).encode()  # fmt: skip
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(answer)))
                    self.end_headers()
                    self.wfile.write(answer)
                except OSError:  # the caller stopped waiting and closed the connection
                    self.close_connection = True

            def log_message(self, *args: object) -> None:  # keep the test output quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)


@pytest.fixture
def slow() -> Iterator[SlowUpstream]:
    upstream = SlowUpstream()
    upstream.thread.start()
    yield upstream
    upstream.server.shutdown()
    upstream.server.server_close()


def upstream_repository(root: Path, remote_url: str) -> Path:
    version = root / "far" / "1"
    version.mkdir(parents=True)
    (version / "model.yaml").write_text(yaml.safe_dump({
        "runtime": "upstream", **DIGITS_TENSORS,
        "parameters": {"url": remote_url, "protocol": "v2", "model": "digits", "timeout_s": 5.0},
    }))  # fmt: skip
    return root


@pytest.fixture
def runtime(tmp_path: Path, slow: SlowUpstream) -> Iterator[UpstreamRuntime]:
    """The upstream runtime on its own, as a replica's thread runs it."""
    version = ModelRepository(upstream_repository(tmp_path, slow.url)).version("far", "1")
    runtime = UpstreamRuntime(version, RuntimeSettings())
    runtime.load()
    yield runtime
    runtime.client.close()


def one_image() -> dict[str, np.ndarray]:
    return {"input": np.zeros((1, 64), dtype=np.float32)}


def test_the_remote_call_gives_up_at_the_batch_deadline(runtime, slow):
    slow.delay_s = SLOW_S
    began = time.monotonic()
    runtime.deadline = began + 0.3
    with pytest.raises(SurgeError) as info:
        runtime.run(one_image())
    assert info.value.status == 504
    assert time.monotonic() - began < 1.0  # not the manifest's 5 s, nor the remote's 3 s


def test_a_batch_whose_deadline_has_passed_is_not_sent(runtime, slow):
    runtime.deadline = time.monotonic() - 0.001
    with pytest.raises(SurgeError) as info:
        runtime.run(one_image())
    assert info.value.status == 504 and "deadline" in info.value.message
    assert slow.received == 0
    runtime.deadline = None  # no deadline: the manifest's timeout alone bounds the call
    assert runtime.run(one_image())["label"].tolist() == [0]
    assert slow.received == 1


def test_after_a_deadline_miss_the_replica_is_free_for_the_next_request(tmp_path, slow):
    endpoint = {"model": "far", "version": "1", "warmup_batches": 1, "timeout_ms": 5000,
                "batching": {"max_batch_size": 8, "max_queue_delay_ms": 1}}  # fmt: skip
    config = {
        "model_repository": str(upstream_repository(tmp_path / "repo", slow.url)),
        "endpoints": {"far": endpoint},  # one replica: a blocked one would hold up the next
    }
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64],
                        "data": [0.0] * 64}]}  # fmt: skip
    with run_server(config, tmp_path) as server, httpx.Client(base_url=server.url) as client:
        slow.delay_s = SLOW_S
        began = time.monotonic()
        missed = client.post(
            "/v2/models/far/infer", json=body, headers={"X-Request-Timeout-Ms": "300"}
        )
        assert missed.status_code == 504, missed.text
        assert time.monotonic() - began < 1.0

        slow.delay_s = 0.0
        began = time.monotonic()
        answer = client.post("/v2/models/far/infer", json=body, timeout=10)
        assert answer.status_code == 200, answer.text
        # Had the replica waited on the first call, this would take the remote's 3 s less
        # the 0.3 s already spent.
        assert time.monotonic() - began < 1.0
        assert slow.received == 2
