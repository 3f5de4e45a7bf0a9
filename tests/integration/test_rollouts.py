"""Rollouts over real HTTP: hot swap, canary with automatic promotion and rollback,
sticky A/B, shadow traffic, and a restart mid-rollout, with the registry in SQLite
(and PostgreSQL in test_rollouts_postgres.py)."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from conftest import ADMIN_KEY, run_server
from rollout_helpers import (
    SteadyLoad,
    admin,
    deploy,
    digit_body,
    digits_config,
    history,
    rollout_repository,
    status,
    wait_for,
)


@pytest.fixture(scope="module")
def repo(demo_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return rollout_repository(demo_models, tmp_path_factory.mktemp("rollout-repo"))


def test_hot_swap_under_load_fails_no_request(repo, tmp_path):
    with run_server(digits_config(repo), tmp_path) as server, SteadyLoad(server.url) as load:
        wait_for(lambda: load.total >= 50, 30, "traffic on v1")
        r = deploy(server.url, version="2")
        assert r.status_code == 200, r.text
        assert [v["version"] for v in r.json()["versions"]] == ["2"]
        seen_v2 = load.versions["2"]
        wait_for(lambda: load.versions["2"] >= seen_v2 + 100, 30, "traffic on v2")
        load.stop()
        assert load.codes == {200: load.total}, load.failures[:3]
        assert load.versions["1"] > 0 and load.versions["2"] > 0
        deploys = [e for e in history(server.url) if e["action"] == "deploy"]
        assert deploys[0]["actor"] == "tester"
        assert deploys[0]["before"]["stable"]["version"] == "1"
        assert deploys[0]["after"]["stable"]["version"] == "2"


def test_canary_steps_up_and_promotes_itself_with_no_failed_request(repo, tmp_path):
    with run_server(digits_config(repo), tmp_path) as server, SteadyLoad(server.url) as load:
        wait_for(lambda: load.total >= 50, 30, "traffic on v1")
        r = deploy(server.url, version="2", mode="canary", percent=5)
        assert r.status_code == 200, r.text
        started = r.json()
        assert started["rollout"]["percent"] == 5
        assert {v["version"]: v["traffic_percent"] for v in started["versions"]} == {
            "1": 95.0,
            "2": 5.0,
        }
        wait_for(lambda: status(server.url)["mode"] == "single", 90, "automatic promotion")
        final = status(server.url)
        assert [(v["version"], v["traffic_percent"]) for v in final["versions"]] == [
            ("2", 100.0)
        ], history(server.url)[0]["reason"]
        load.stop()
        assert load.codes == {200: load.total}, load.failures[:3]
        steps = [(e["actor"], e["action"]) for e in reversed(history(server.url))]
        assert steps[-3:] == [
            ("controller", "advance"),
            ("controller", "advance"),
            ("controller", "promote"),
        ], steps


def test_bad_canary_is_rolled_back_and_clients_barely_notice(repo, tmp_path):
    config = digits_config(repo)
    with run_server(config, tmp_path) as server, SteadyLoad(server.url) as load:
        wait_for(lambda: load.total >= 50, 30, "traffic on v1")
        before = load.total
        r = deploy(server.url, version="9", mode="canary", percent=5)
        assert r.status_code == 200, r.text
        wait_for(lambda: status(server.url)["mode"] == "single", 60, "automatic rollback")
        rolled_back_at = load.total
        load.stop()
        final = status(server.url)
        assert [v["version"] for v in final["versions"]] == ["1"]
        entry = history(server.url)[0]
        assert (entry["actor"], entry["action"]) == ("controller", "rollback")
        assert "error rate" in entry["reason"], entry["reason"]
        # Failures on the canary were retried on stable: clients saw no more than the
        # canary's 5 % share of errors during the rollout (here: none at all).
        during = rolled_back_at - before
        errors = load.total - load.codes[200]
        assert errors <= 0.05 * during, (load.codes, load.failures[:3])
        metrics = httpx.get(f"{server.url}/metrics").text
        assert 'surge_version_retried_on_stable_total{endpoint="digits",version="9"}' in metrics


@pytest.mark.parametrize("source", ["header", "parameter"])
def test_sticky_ab_keeps_each_user_on_one_arm(source, repo, tmp_path):
    body = {"version": "2", "mode": "ab", "percent": 50}
    if source == "parameter":
        body["ab_key"] = "parameter:user"  # a field in the v2 request's parameters

    def request(user: int, round_: int) -> tuple[dict, dict]:
        row = digit_body(user + round_)
        if source == "header":  # the endpoint's default ab_key, header:x-user-id
            return row, {"X-User-Id": f"user-{user}"}
        return {**row, "parameters": {"user": f"user-{user}"}}, {}

    with run_server(digits_config(repo), tmp_path) as server:
        r = deploy(server.url, **body)
        assert r.status_code == 200, r.text
        assert r.json()["ab_key"] == body.get("ab_key", "header:x-user-id")
        arms: dict[str, set[str]] = {}
        with httpx.Client(base_url=server.url, timeout=10) as client:
            for round_ in range(2):
                for user in range(150):
                    payload, headers = request(user, round_)
                    answer = client.post("/v2/models/digits/infer", json=payload, headers=headers)
                    assert answer.status_code == 200, answer.text
                    arms.setdefault(f"user-{user}", set()).add(answer.headers["x-model-version"])
        assert all(len(a) == 1 for a in arms.values())
        on_v2 = sum(a == {"2"} for a in arms.values())
        assert 50 <= on_v2 <= 100, on_v2  # 150 users at 50 %: far from all on one arm


def test_shadow_candidate_reports_agreement_and_latency_delta(repo, tmp_path):
    config = {
        "model_repository": str(repo),
        "endpoints": {
            "embed": {"batching": {"max_batch_size": 8, "max_queue_delay_ms": 2},
                      "timeout_ms": 10000, "warmup_batches": 1,
                      "rollout": {"min_requests": 20, "min_step_s": 0.5, "max_p99_ratio": 10.0,
                                  "evaluate_interval_s": 0.2}},
        },
    }  # fmt: skip
    with run_server(config, tmp_path) as server:
        r = admin(
            server.url,
            "POST",
            "/admin/endpoints/embed/deploy",
            json={"version": "2", "mode": "shadow"},
        )
        assert r.status_code == 200, r.text
        with httpx.Client(base_url=server.url, timeout=30) as client:
            for i in range(40):
                answer = client.post(
                    "/v1/embeddings",
                    json={"model": "embed", "input": [f"sentence number {i} about shadows"]},
                )
                assert answer.status_code == 200 and answer.headers["x-model-version"] == "1"
                time.sleep(0.02)  # a gentle load: shadow copies are dropped when queues build
        current = wait_for(
            lambda: (
                (s := status(server.url, "embed"))["versions"][1]["shadow"]["compared"] >= 20 and s
            ),
            30,
            "shadow comparisons",
        )
        candidate = current["versions"][1]
        assert candidate["role"] == "candidate" and candidate["traffic_percent"] == 0.0
        assert 0.95 <= candidate["shadow"]["agreement"] <= 1.0  # int8 vs fp32 cosine
        assert candidate["shadow"]["latency_delta_ms"] is not None
        wait_for(
            lambda: "shadow criteria met" in status(server.url, "embed")["rollout"]["waiting_for"],
            20,
            "the controller to judge the shadow",
        )
        metrics = httpx.get(f"{server.url}/metrics").text
        assert 'surge_shadow_agreement_ratio{endpoint="embed",version="2"}' in metrics
        assert 'surge_shadow_latency_delta_seconds{endpoint="embed",version="2"}' in metrics


def test_admin_api_needs_a_key_and_explains_bad_requests(repo, tmp_path):
    with run_server(digits_config(repo), tmp_path) as server:
        url = f"{server.url}/admin/endpoints/digits/deploy"
        missing = httpx.post(url, json={"version": "2"})
        assert missing.status_code == 401 and "Bearer" in missing.json()["error"]["message"]
        wrong = httpx.post(url, json={"version": "2"}, headers={"X-Admin-Key": "nope"})
        assert wrong.status_code == 401
        assert wrong.headers["x-request-id"] == wrong.json()["error"]["request_id"]
        cases = [
            ({"version": "7"}, 404, "not found"),
            ({"version": "1"}, 409, "already serves"),
            ({"version": "2", "mode": "sideways"}, 400, "mode"),
            ({"version": "2", "mode": "canary", "percent": "lots"}, 400, "percent"),
            ({}, 400, "'version' is required"),
        ]
        for body, code, words in cases:
            answer = admin(server.url, "POST", "/admin/endpoints/digits/deploy", json=body)
            assert answer.status_code == code, (body, answer.text)
            assert words in answer.json()["error"]["message"], answer.text
        no_rollout = admin(server.url, "POST", "/admin/endpoints/digits/promote")
        assert no_rollout.status_code == 409
        typo = admin(server.url, "POST", "/admin/endpoints/digits/promot")
        assert typo.status_code == 404
        unknown = admin(server.url, "GET", "/admin/endpoints/nope")
        assert unknown.status_code == 404
        # Still serving.
        assert (
            httpx.post(f"{server.url}/v2/models/digits/infer", json=digit_body(0)).status_code
            == 200
        )


def test_cli_deploys_shows_status_and_history(repo, tmp_path):
    import os
    import subprocess
    import sys

    def surge(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "surge", *args, "--url", server.url],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "SURGE_ADMIN_KEY": ADMIN_KEY},
        )

    config = digits_config(repo, min_step_s=3600)  # the canary holds at its first step
    with run_server(config, tmp_path) as server:
        deployed = surge("deploy", "digits", "digits", "2", "--canary", "5%")
        assert deployed.returncode == 0, deployed.stderr
        assert "canary" in deployed.stdout and "digits@2" in deployed.stdout
        shown = surge("status", "digits")
        assert shown.returncode == 0 and "waiting for:" in shown.stdout, shown.stdout
        rolled = surge("rollback", "digits", "--reason", "changed my mind")
        assert rolled.returncode == 0, rolled.stderr
        log = surge("history", "digits")
        assert "rollback" in log.stdout and "changed my mind" in log.stdout, log.stdout
        refused = surge("promote", "digits")
        assert refused.returncode != 0 and "no candidate" in refused.stderr
