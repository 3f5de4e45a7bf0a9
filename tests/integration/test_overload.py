"""Backpressure and deadlines over real HTTP: nothing lost, nothing silently slow."""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from conftest import run_server

from surge.repository import write_manifest

SLOW_MODEL = """
import time

class Model:
    def predict(self, batch):
        time.sleep(0.05)  # 50 ms per batch, whatever its size
        return {"output": batch["input"] * 2}
"""

BODY = b'{"inputs":[{"name":"input","datatype":"FP32","shape":[1,4],"data":[1,2,3,4]}]}'


@pytest.fixture(scope="module")
def slow_repo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("repo")
    version = root / "slow" / "1"
    version.mkdir(parents=True)
    (version / "model.py").write_text(SLOW_MODEL)
    write_manifest(version, {
        "runtime": "python", "artifact": "model.py", "parameters": {"class": "Model"},
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [{"name": "output", "datatype": "FP32", "shape": [-1, 4]}],
    })  # fmt: skip
    return root


def slow_config(repo: Path, **endpoint) -> dict:
    return {
        "model_repository": str(repo),
        "server": {"shutdown_grace_s": 20},
        "endpoints": {
            "slow": {"batching": {"max_batch_size": 4, "max_queue_delay_ms": 1},
                     "max_queue": 8, "timeout_ms": 5000, "warmup_batches": 1, **endpoint}
        },
    }  # fmt: skip


async def burst(url: str, n: int, headers: dict | None = None) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=n)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        return await asyncio.gather(
            *(client.post(f"{url}/v2/models/slow/infer", content=BODY, headers=headers)
              for _ in range(n))
        )  # fmt: skip


def test_burst_past_the_queue_bound_gets_200_or_429_and_none_is_lost(slow_repo, tmp_path):
    with run_server(slow_config(slow_repo), tmp_path) as server:
        responses = asyncio.run(burst(server.url, 60))
        codes = Counter(r.status_code for r in responses)
        assert len(responses) == 60 and set(codes) <= {200, 429, 504}, codes
        assert codes[200] >= 8 and codes[429] > 0, codes
        for r in responses:
            if r.status_code == 429:
                assert int(r.headers["retry-after"]) >= 1 and "queue is full" in r.json()["error"]
            if r.status_code == 200:
                assert r.json()["outputs"][0]["data"] == [2, 4, 6, 8]
        # The server is still healthy and the refusals are counted by reason.
        assert httpx.post(f"{server.url}/v2/models/slow/infer", content=BODY).status_code == 200
        metrics = httpx.get(f"{server.url}/metrics").text
        assert (
            f'surge_rejected_requests_total{{endpoint="slow",reason="queue_full"}} {codes[429]}.0'
            in (metrics)
        )


def test_deadlines_refuse_or_expire_instead_of_answering_late(slow_repo, tmp_path):
    with run_server(slow_config(slow_repo, max_queue=64), tmp_path) as server:
        # 40 requests need ~10 batches of 50 ms; with 120 ms each, most cannot make it.
        start = time.monotonic()
        responses = asyncio.run(burst(server.url, 40, {"X-Request-Timeout-Ms": "120"}))
        elapsed = time.monotonic() - start
        codes = Counter(r.status_code for r in responses)
        assert set(codes) <= {200, 504} and codes[504] > 0 and codes[200] > 0, codes
        reasons = {r.json()["error"].split(":")[0] for r in responses if r.status_code == 504}
        assert reasons, reasons
        # Nobody waited for the whole queue: refusals came at once or at the deadline.
        assert elapsed < 3.0


def test_sigterm_finishes_in_flight_and_queued_work_and_exits_0(slow_repo, tmp_path):
    async def scenario(server) -> tuple[list[httpx.Response], int]:
        pending = asyncio.ensure_future(burst(server.url, 8))
        async with httpx.AsyncClient() as probe:
            # SIGTERM once all 8 have reached the server: some running, the rest queued.
            gauge = 'surge_inflight_requests{endpoint="slow"} 8.0'
            for _ in range(1000):
                if gauge in (await probe.get(f"{server.url}/metrics")).text:
                    break
                await asyncio.sleep(0.002)
            else:
                pytest.fail("the 8 requests never were in flight together")
        server.process.send_signal(signal.SIGTERM)
        responses = await pending
        return responses, await asyncio.to_thread(server.process.wait, 30)

    with run_server(slow_config(slow_repo), tmp_path) as server:
        responses, code = asyncio.run(scenario(server))
        assert [r.status_code for r in responses] == [200] * 8
        assert code == 0, server.log()
