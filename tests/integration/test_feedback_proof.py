"""Feedback needs proof, over real HTTP: a bandit's answer carries X-Feedback-Token, and
`POST /v1/feedback` takes the reward only with it; a stranger who knows a request id can
neither reward it nor use it up. What strangers can see no longer hands them request ids
(the dashboard) or grows with the tenant names they make up (/metrics)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from conftest import ADMIN, digits_rows, run_server

from surge.repository import link_version


def endpoint(version: str) -> dict:
    return {"model": "digits", "version": version, "warmup_batches": 1, "timeout_ms": 5000,
            "batching": {"max_batch_size": 16, "max_queue_delay_ms": 1}}  # fmt: skip


def v2_body(rows: Any) -> dict:
    return {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(rows.shape),
                        "data": rows.ravel().tolist()}]}  # fmt: skip


def wait_for(condition: Callable[[], Any], what: str, timeout_s: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (found := condition()):
        assert time.monotonic() < deadline, f"no {what} after {timeout_s} s"
        time.sleep(0.05)
    return found


def test_only_the_answers_token_rewards_it_and_strangers_see_no_ids(demo_models: Path, tmp_path):
    root = tmp_path / "repo"
    for version in ("1", "2"):
        link_version(demo_models / "digits" / version, root / "digits" / version)
    config = {
        "model_repository": str(root),
        "endpoints": {"one": endpoint("1"), "two": endpoint("2")},
        "routes": {"learner": {"bandit": {"arms": ["one", "two"], "segment_header": "x-tenant"}}},
        "observability": {"receipts": {"flush_interval_s": 0.05}},
    }
    rows, _ = digits_rows(1)
    with run_server(config, tmp_path) as server, httpx.Client(base_url=server.url) as client:

        def infer(tenant: str) -> httpx.Response:
            answer = client.post(
                "/v2/models/learner/infer", json=v2_body(rows), headers={"X-Tenant": tenant}
            )
            assert answer.status_code == 200, answer.text
            return answer

        mine, theirs = infer("acme"), infer("acme")
        request_id, token = mine.headers["x-request-id"], mine.headers["x-feedback-token"]
        assert token != theirs.headers["x-feedback-token"]

        def feedback(**proof: Any) -> httpx.Response:
            return client.post("/v1/feedback", json={"request_id": request_id, "reward": 0.0,
                                                      **proof})  # fmt: skip

        # a stranger who knows the id: no token, a made-up one, another answer's
        anonymous = feedback()
        assert anonymous.status_code == 401, anonymous.text
        assert "feedback_token" in anonymous.json()["error"]["message"]
        for forged in ("A" * 43, theirs.headers["x-feedback-token"]):
            refused = feedback(feedback_token=forged)
            assert refused.status_code == 403, refused.text
        # ... did not use the answer up: its owner still rewards it, once
        fed = feedback(feedback_token=token, reward=1.0)
        assert fed.status_code == 200, fed.text
        assert fed.json()["segment"] == "acme"
        assert feedback(feedback_token=token).status_code == 404
        learned = client.get("/admin/routes", headers=ADMIN).json()["routes"]["learner"]
        rewards = sum(arm["pulls"] for arm in learned["bandit"]["acme"].values())
        assert rewards == 1  # the stranger's tries taught the bandit nothing

        # made-up tenants do not become series of their own
        for i in range(20):
            infer(f"made-up-{i}")
        scraped = wait_for(
            lambda: (text := client.get("/metrics").text).count('tenant="other"') and text,
            "cost series of the made-up tenants",
        )
        assert "made-up" not in scraped

        # the dashboard shows what went where, never an id a stranger could act on
        ids = {request_id, theirs.headers["x-request-id"]}
        snapshot = wait_for(
            lambda: (got := client.get("/dashboard/snapshot")).json()["receipts"] and got,
            "receipts on the dashboard",
        )
        assert not any(i in snapshot.text for i in ids)
        receipt = snapshot.json()["receipts"][0]
        assert "id" not in receipt and "why" not in receipt
        assert receipt["route"] in ("bandit: one", "bandit: two")
        assert "made-up" not in snapshot.text  # nor the segments the reasons quote
        page = client.get("/dashboard").text
        assert ">id<" not in page and "r.id" not in page
