"""Endpoints and routes are one kind of target: a route hands the request's facts on to
whatever it calls, so an A/B endpoint behind a cascade still splits by the user key and a
rules route inside a fallback still sees the headers."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import run_server
from rollout_helpers import deploy, rollout_repository, status, wait_for
from sklearn.datasets import load_digits


@pytest.fixture(scope="module")
def repo(demo_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return rollout_repository(demo_models, tmp_path_factory.mktemp("targets-repo"))


def endpoint(model: str, version: str) -> dict:
    return {"model": model, "version": version, "warmup_batches": 1, "timeout_ms": 5000,
            "batching": {"max_batch_size": 16, "max_queue_delay_ms": 1}}  # fmt: skip


def v2_body(rows: np.ndarray) -> dict:
    return {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(rows.shape),
                        "data": rows.ravel().tolist()}]}  # fmt: skip


def test_routes_pass_headers_and_user_keys_to_what_they_call(repo, tmp_path):
    gold = {"name": "gold", "target": "big",
            "when": [{"field": "header:x-tier", "op": "eq", "value": "gold"}]}  # fmt: skip
    config = {
        "model_repository": str(repo),
        "endpoints": {"small": endpoint("digits", "1"), "big": endpoint("digits", "2")},
        "routes": {
            "sorted": {"rules": {"rules": [gold], "default": "small"}},
            "safe": {"fallback": {"targets": ["sorted", "big"]}},
            # Threshold 0: the first tier answers every row, so its A/B split decides.
            "smart": {"cascade": {"tiers": [{"target": "small", "threshold": 0.0},
                                            {"target": "big", "threshold": 0.0}]}},
        },
    }  # fmt: skip
    image = load_digits().data.astype(np.float32)[:1]
    with run_server(config, tmp_path) as server, httpx.Client(base_url=server.url) as client:

        def served_by(name: str, headers: dict[str, str] | None = None) -> str:
            r = client.post(f"/v2/models/{name}/infer", json=v2_body(image), headers=headers)
            assert r.status_code == 200, r.text
            return r.headers["x-model-version"]

        # The rules route, reached through the fallback route, reads the caller's header.
        assert served_by("safe", {"X-Tier": "gold"}) == "2"
        assert served_by("safe", {"X-Tier": "silver"}) == "1"
        assert served_by("safe") == "1"

        r = deploy(server.url, "small", model="digits", version="2", mode="ab", percent=50)
        assert r.status_code == 200, r.text
        wait_for(lambda: status(server.url, "small")["mode"] == "ab", 60, "the A/B split")

        users = [f"user-{i}" for i in range(40)]
        direct = {u: served_by("small", {"X-User-Id": u}) for u in users}
        via_route = {u: served_by("smart", {"X-User-Id": u}) for u in users}
        # Both arms serve users through the cascade, and each user sees the same arm
        # through the route as when calling the endpoint itself (sticky by the key).
        assert set(via_route.values()) == {"1", "2"}
        assert via_route == direct
        assert {u: served_by("smart", {"X-User-Id": u}) for u in users} == via_route
        # Without a user key, the stable arm (as for the endpoint itself).
        assert served_by("smart") == "1"
