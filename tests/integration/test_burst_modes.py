"""Burst modes over real HTTP: an operator forces emergency (low priorities shed, the
cascade's big tier skipped), and a burst flips the mode up and back down by itself."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import ADMIN, run_server
from rollout_helpers import rollout_repository, wait_for
from sklearn.datasets import load_digits
from test_routes import endpoint, python_version, v2_body

SLOW = """
import time

class Model:
    def predict(self, batch):
        time.sleep(0.05)
        return {"probabilities": batch["input"][:, :10] * 0 + 0.1,
                "label": (batch["input"][:, 0] * 0).astype("int64")}
"""


@pytest.fixture(scope="module")
def repo(demo_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = rollout_repository(demo_models, tmp_path_factory.mktemp("modes-repo"))
    python_version(root, "slow", SLOW)
    return root


def config(repo: Path, **modes) -> dict:
    return {
        "model_repository": str(repo),
        "modes": {"evaluate_interval_s": 0.1, "hold_s": 0.5, "min_dwell_s": 0.2, **modes},
        "endpoints": {
            "small": endpoint("digits", "1"),
            "big": endpoint("digits", "2"),
            "slow": endpoint("slow", max_queue=16, batching={"max_batch_size": 4}),
        },
        "routes": {"smart": {"cascade": {"tiers": [
            {"target": "small", "threshold": 0.999}, {"target": "big", "threshold": 0.5}]}}},
    }  # fmt: skip


def test_forced_emergency_sheds_low_priority_and_skips_the_big_tier(repo, tmp_path):
    images = load_digits().data.astype(np.float32)[:8]
    with (
        run_server(config(repo, enabled=False), tmp_path) as server,
        httpx.Client(base_url=server.url, headers=ADMIN) as client,
    ):
        before = client.post("/v2/models/smart/infer", json=v2_body(images))
        assert "escalated" in before.headers["x-surge-route"]
        forced = client.post("/admin/mode", json={"mode": "emergency", "reason": "drill"})
        assert forced.status_code == 200 and forced.json()["mode"] == "emergency"
        shed = client.post(
            "/v2/models/smart/infer", json=v2_body(images), headers={"X-Priority": "0"}
        )
        assert shed.status_code == 503 and "emergency" in shed.json()["error"]
        assert int(shed.headers["retry-after"]) >= 1
        kept = client.post(
            "/v2/models/smart/infer", json=v2_body(images), headers={"X-Surge-Receipt": "1"}
        )
        assert kept.status_code == 200
        route = kept.headers["x-surge-route"]
        assert route.startswith("digits@1")  # tier 0 only
        assert "escalated" not in route
        # The rows tier 0 doubts are the mode's cheaper answer, not a human's problem:
        # degraded, with the mode in the why, and none of them queued for review.
        assert "degraded" in route and "needs-review" not in route
        assert "needs_review" not in kept.json().get("parameters", {})
        receipt = json.loads(kept.headers["x-surge-receipt"])
        assert receipt["degraded"] is True
        assert "burst mode 'emergency'" in receipt["why"]
        assert client.get("/admin/review").json()["items"] == []
        bad = client.post("/v2/models/small/infer", json=v2_body(images),
                          headers={"X-Priority": "high"})  # fmt: skip
        assert bad.status_code == 400
        metrics = client.get("/metrics").text
        assert 'surge_mode{mode="emergency"} 1.0' in metrics
        assert "surge_mode_forced 1.0" in metrics
        released = client.request("DELETE", "/admin/mode", json={"reason": "drill over"})
        assert released.json()["forced"] is False
        audit = client.get("/admin/history?action=mode").json()["entries"]
        assert [e["reason"].split(":")[0] for e in audit][:2] == [
            "emergency -> emergency",
            "normal -> emergency",
        ]


async def _burst(url: str, n: int) -> list[int]:
    body = v2_body(load_digits().data.astype(np.float32)[:1])
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=n)) as client:
        answers = await asyncio.gather(
            *(client.post(f"{url}/v2/models/slow/infer", json=body) for _ in range(n))
        )
    return [a.status_code for a in answers]


def test_a_burst_raises_the_mode_and_calm_brings_it_back_down(repo, tmp_path):
    with run_server(config(repo), tmp_path) as server:
        mode = lambda: httpx.get(f"{server.url}/admin/mode", headers=ADMIN).json()  # noqa: E731
        assert mode()["mode"] == "normal"
        started = time.monotonic()
        codes: list[int] = []
        while time.monotonic() - started < 1.5:  # bounded: a few bursts in 1.5 s
            codes += asyncio.run(_burst(server.url, 40))
        assert set(codes) <= {200, 429, 503, 504}, set(codes)
        raised = mode()["history"]
        assert raised and raised[0]["from"] == "normal" and raised[0]["to"] != "normal"
        final = wait_for(lambda: (m := mode())["mode"] == "normal" and m, 15, "calm")
        ups = [c for c in final["history"] if c["to"] != "normal" and c["from"] == "normal"]
        assert len(ups) == 1, final["history"]  # up once, down, no flapping


def test_impossible_client_deadlines_do_not_switch_the_mode(repo, tmp_path):
    # Refusing a deadline no idle deployment could meet is the caller's problem, not a
    # sign of overload: 60 of them must not put the server in emergency mode (which
    # would then cap everyone's deadline at 250 ms and shed priority 0).
    body = v2_body(load_digits().data.astype(np.float32)[:1])
    with (
        run_server(config(repo), tmp_path) as server,
        httpx.Client(base_url=server.url, headers=ADMIN) as client,
    ):
        for _ in range(60):
            r = client.post(
                "/v2/models/small/infer", json=body, headers={"X-Request-Timeout-Ms": "0.001"}
            )
            assert r.status_code == 504
        time.sleep(0.5)  # several evaluations (every 0.1 s)
        state = client.get("/admin/mode").json()
        assert state["mode"] == "normal", state["history"]
        assert client.post("/v2/models/small/infer", json=body).status_code == 200
