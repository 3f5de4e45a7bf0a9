"""Traces over the wire: real servers export OTLP/HTTP to a real (tiny) receiver.

A caller's `traceparent` is joined, the server span names the caller's span as its parent
and has a child per stage; a server that calls another through the upstream runtime
passes its own span on, so the remote's span hangs under it in the same trace.
"""

from __future__ import annotations

import gzip
import threading
import time
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import yaml
from conftest import digits_rows, run_server
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

STAGES = {"validate", "route", "admit", "queue", "batch", "compute", "post_route", "respond"}
DIGITS_TENSORS = {
    "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}],
    "outputs": [
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]},
        {"name": "label", "datatype": "INT64", "shape": [-1]},
    ],
}


class OtlpReceiver:
    """Accepts POST /v1/traces (OTLP/HTTP protobuf) and keeps every span as a dict."""

    def __init__(self) -> None:
        self.spans: list[dict] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                encoding = self.headers.get("Content-Encoding", "")
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                if self.path != "/v1/traces":
                    self.send_response(404)
                    self.end_headers()
                    return
                receiver.take(ExportTraceServiceRequest.FromString(body))
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: object) -> None:  # keep the test output quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def take(self, request: ExportTraceServiceRequest) -> None:
        for resource_spans in request.resource_spans:
            resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    with self.lock:
                        self.spans.append(
                            {
                                "service": resource.get("service.name"),
                                "name": span.name,
                                "trace_id": span.trace_id.hex(),
                                "span_id": span.span_id.hex(),
                                "parent": span.parent_span_id.hex(),
                                "start": span.start_time_unix_nano,
                                "end": span.end_time_unix_nano,
                                "attributes": {a.key: a.value for a in span.attributes},
                            }
                        )

    def wait_for(self, trace_id: str, services: set[str], timeout_s: float = 30) -> list[dict]:
        """The spans of `trace_id`, once each of `services` sent its server span."""
        deadline = time.monotonic() + timeout_s
        while True:
            with self.lock:
                spans = [s for s in self.spans if s["trace_id"] == trace_id]
            servers = {s["service"] for s in spans if s["name"].startswith("surge ")}
            if services <= servers or time.monotonic() > deadline:
                return spans
            time.sleep(0.05)


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver()
    receiver.thread.start()
    yield receiver
    receiver.server.shutdown()
    receiver.server.server_close()


def tracing(receiver: OtlpReceiver, service: str) -> dict:
    return {"tracing": {"otlp_endpoint": receiver.url, "service_name": service}}


def endpoint(model: str) -> dict:
    return {"model": model, "version": "1", "warmup_batches": 1, "timeout_ms": 5000,
            "batching": {"max_batch_size": 8, "max_queue_delay_ms": 1}}  # fmt: skip


def v2_body(n: int = 1) -> dict:
    rows, _ = digits_rows(n)
    return {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(rows.shape),
                        "data": rows.ravel().tolist()}]}  # fmt: skip


def upstream_repository(root: Path, remote_url: str) -> Path:
    version = root / "far" / "1"
    version.mkdir(parents=True)
    (version / "model.yaml").write_text(yaml.safe_dump({
        "runtime": "upstream", **DIGITS_TENSORS,
        "parameters": {"url": remote_url, "protocol": "v2", "model": "digits", "timeout_s": 5.0},
    }))  # fmt: skip
    return root


def server_span(spans: list[dict], service: str) -> dict:
    [span] = [s for s in spans if s["service"] == service and s["name"].startswith("surge ")]
    return span


def test_spans_join_the_callers_trace_and_follow_the_request_upstream(
    demo_models: Path, tmp_path: Path, receiver: OtlpReceiver, monkeypatch: pytest.MonkeyPatch
):
    # Export every 100 ms instead of the SDK's 5 s, so the test waits less (read at start).
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
    remote_config = {
        "model_repository": str(demo_models),
        "endpoints": {"digits": endpoint("digits")},
        "observability": tracing(receiver, "surge-remote"),
    }
    (tmp_path / "remote").mkdir()
    (tmp_path / "front").mkdir()
    with run_server(remote_config, tmp_path / "remote") as remote:
        front_config = {
            "model_repository": str(upstream_repository(tmp_path / "repo", remote.url)),
            "endpoints": {"far": endpoint("far")},
            "observability": tracing(receiver, "surge-front"),
        }
        with run_server(front_config, tmp_path / "front") as front:
            direct_trace, direct_caller = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
            answer = httpx.post(
                f"{remote.url}/v2/models/digits/infer",
                json=v2_body(),
                headers={"traceparent": f"00-{direct_trace}-{direct_caller}-01"},
            )
            assert answer.status_code == 200, answer.text

            relay_trace, relay_caller = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
            relayed = httpx.post(
                f"{front.url}/v2/models/far/infer",
                json=v2_body(),
                headers={"traceparent": f"00-{relay_trace}-{relay_caller}-01"},
                timeout=10,
            )
            assert relayed.status_code == 200, relayed.text

            direct = receiver.wait_for(direct_trace, {"surge-remote"})
            relay = receiver.wait_for(relay_trace, {"surge-front", "surge-remote"})

    # The direct call: the server span hangs under the caller's span, stages under it.
    server = server_span(direct, "surge-remote")
    assert server["name"] == "surge digits" and server["parent"] == direct_caller
    assert server["attributes"]["surge.model"].string_value == "digits@1"
    assert server["attributes"]["http.response.status_code"].int_value == 200
    children = [s for s in direct if s["parent"] == server["span_id"]]
    assert {s["name"] for s in children} == STAGES
    for child in children:  # each stage lies within the request
        assert server["start"] <= child["start"] <= child["end"] <= server["end"]

    # The relayed call: caller -> front's server span -> the remote's server span.
    front_span = server_span(relay, "surge-front")
    remote_span = server_span(relay, "surge-remote")
    assert front_span["parent"] == relay_caller
    assert remote_span["parent"] == front_span["span_id"]
    assert {s["name"] for s in relay if s["parent"] == remote_span["span_id"]} == STAGES
    assert front_span["start"] <= remote_span["start"]  # same clock here: one machine
