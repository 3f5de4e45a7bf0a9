"""Routes over real HTTP: a confidence cascade with its human-review queue, a deadline
ladder that degrades to fit the caller's budget, and a fallback behind breakers."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml
from conftest import ADMIN, run_server
from pydantic import ValidationError
from rollout_helpers import BROKEN_ON_REAL_INPUT, rollout_repository
from sklearn.datasets import load_digits

from surge.config import Config
from surge.repository import link_version, write_manifest

SLOW_DIGITS = """
import time
import numpy as np

class Model:
    def predict(self, batch):
        time.sleep(0.15)  # a big, slow model
        n = len(batch["input"])
        p = np.full((n, 10), 0.01, dtype=np.float32)
        p[:, 7] = 0.91
        return {"probabilities": p, "label": np.full(n, 7, dtype=np.int64)}
"""

DIGITS_TENSORS = {
    "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}],
    "outputs": [
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]},
        {"name": "label", "datatype": "INT64", "shape": [-1]},
    ],
}


def python_version(root: Path, model: str, source: str) -> None:
    version = root / model / "1"
    version.mkdir(parents=True)
    (version / "model.py").write_text(source)
    write_manifest(version, {"runtime": "python", "artifact": "model.py",
                             "parameters": {"class": "Model"}, **DIGITS_TENSORS})  # fmt: skip


@pytest.fixture(scope="module")
def repo(demo_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = rollout_repository(demo_models, tmp_path_factory.mktemp("routes-repo"))
    python_version(root, "slow", SLOW_DIGITS)
    python_version(root, "broken", BROKEN_ON_REAL_INPUT)
    return root


def endpoint(model: str, version: str = "1", **extra) -> dict:
    return {"model": model, "version": version, "warmup_batches": 1, "timeout_ms": 5000,
            "batching": {"max_batch_size": 16, "max_queue_delay_ms": 1}, **extra}  # fmt: skip


def v2_body(rows: np.ndarray) -> dict:
    return {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(rows.shape),
                        "data": rows.ravel().tolist()}]}  # fmt: skip


def test_cascade_escalates_unsure_rows_and_queues_the_last_tiers_doubts(repo, tmp_path):
    config = {
        "model_repository": str(repo),
        "endpoints": {"small": endpoint("digits", "1"), "big": endpoint("digits", "2")},
        "routes": {"smart": {"cascade": {"tiers": [
            {"target": "small", "threshold": 0.95},
            {"target": "big", "threshold": 0.9},
        ]}}},
    }  # fmt: skip
    images, truth = load_digits(return_X_y=True)
    images = images.astype(np.float32)[-400:]  # the end of the set, mostly unseen in training
    truth = truth[-400:]
    with run_server(config, tmp_path) as server, httpx.Client(base_url=server.url) as client:
        labels, routes, flagged = [], [], 0
        for start in range(0, len(images), 8):
            r = client.post("/v2/models/smart/infer", json=v2_body(images[start : start + 8]))
            assert r.status_code == 200, r.text
            doc = r.json()
            assert doc["model_name"] == "smart"
            labels += next(o for o in doc["outputs"] if o["name"] == "label")["data"]
            routes.append(r.headers["x-surge-route"])
            flagged += len(doc.get("parameters", {}).get("needs_review", []))
        accuracy = float(np.mean(np.array(labels) == truth))
        escalated = sum("escalated" in route for route in routes)
        assert 0 < escalated < len(routes), routes[:5]
        assert accuracy >= 0.9, accuracy
        assert any(route.startswith("digits@1") for route in routes)  # all rows sure at tier 0
        pending = client.get("/admin/review", headers=ADMIN).json()["items"]
        assert len(pending) == flagged > 0
        item = pending[0]
        assert item["endpoint"] == "smart" and item["served_by"] == "digits@2"
        assert len(item["inputs"]["input"]) == 64 and item["confidence"] < 0.9
        labelled = client.post(f"/admin/review/{item['id']}", json={"label": 3}, headers=ADMIN)
        assert labelled.status_code == 200 and labelled.json()["labelled_by"] == "tester"
        again = client.post(f"/admin/review/{item['id']}", json={"label": 4}, headers=ADMIN)
        assert again.status_code == 409
        done = client.get("/admin/review?state=labelled", headers=ADMIN).json()["items"]
        assert [(i["id"], i["label"]) for i in done] == [(item["id"], 3)]
        missing = client.post("/admin/review/999999", json={"label": 1}, headers=ADMIN)
        assert missing.status_code == 404


def test_deadline_ladder_degrades_to_fit_the_callers_budget(repo, tmp_path):
    config = {
        "model_repository": str(repo),
        "endpoints": {"big": endpoint("slow"), "fast": endpoint("digits")},
        "routes": {"timeboxed": {"ladder": {"rungs": ["big", "fast"]}}},
    }
    row = v2_body(load_digits().data[:1].astype(np.float32))
    with run_server(config, tmp_path) as server, httpx.Client(base_url=server.url) as client:
        relaxed = client.post(
            "/v2/models/timeboxed/infer", json=row, headers={"X-Request-Timeout-Ms": "3000"}
        )
        assert relaxed.status_code == 200
        assert relaxed.headers["x-surge-route"] == "slow@1"
        hurried = client.post(
            "/v2/models/timeboxed/infer", json=row, headers={"X-Request-Timeout-Ms": "60"}
        )
        assert hurried.status_code == 200, hurried.text
        assert hurried.headers["x-surge-route"] == "digits@1; degraded"


def test_fallback_answers_from_the_next_target_and_the_breaker_cuts_the_failing_one(repo, tmp_path):
    config = {
        "model_repository": str(repo),
        "endpoints": {"flaky": endpoint("broken"), "steady": endpoint("digits")},
        "routes": {"safe": {"fallback": {"targets": ["flaky", "steady"],
                                         "failure_threshold": 3, "open_s": 60}}},
    }  # fmt: skip
    images = load_digits().data.astype(np.float32)
    with run_server(config, tmp_path) as server, httpx.Client(base_url=server.url) as client:
        answers = [
            client.post("/v2/models/safe/infer", json=v2_body(images[i : i + 1])) for i in range(20)
        ]
        assert [a.status_code for a in answers] == [200] * 20
        assert all(a.headers["x-surge-route"] == "digits@1; degraded" for a in answers)
        # After 3 failures the breaker opened: the broken model saw no more requests.
        metrics = client.get("/metrics").text
        assert 'surge_breaker_open{route="safe",target="flaky"} 1.0' in metrics
        decisions = 'surge_route_decisions_total{{action="{}",route="safe",target="{}"}} {}'
        assert decisions.format("failed", "flaky", "3.0") in metrics
        lines = [line for line in metrics.splitlines() if "route_decisions_total{" in line]
        assert decisions.format("skipped_open", "flaky", "17.0") in metrics, lines
        assert 'surge_route_decisions_total{action="served",route="safe",target="steady"} 20.0' in (
            metrics
        )


ALWAYS_ZERO = """
import numpy as np

class Model:
    def predict(self, batch):
        n = len(batch["input"])
        p = np.full((n, 10), 0.01, dtype=np.float32)
        p[:, 0] = 0.91
        return {"probabilities": p, "label": np.zeros(n, dtype=np.int64)}
"""


def test_bandit_learns_from_feedback_and_shares_what_it_learned(repo, tmp_path):
    root = tmp_path / "repo"
    link_version(repo / "digits" / "1", root / "digits" / "1")
    python_version(root, "zero", ALWAYS_ZERO)
    config = {
        "model_repository": str(root),
        "endpoints": {"good": endpoint("digits"), "lazy": endpoint("zero")},
        "routes": {"learner": {"bandit": {"arms": ["good", "lazy"], "sync_s": 0.2}}},
    }
    images, truth = load_digits(return_X_y=True)
    images = images.astype(np.float32)
    with run_server(config, tmp_path) as server, httpx.Client(base_url=server.url) as client:
        arms = []
        for i in range(300):
            answer = client.post("/v2/models/learner/infer", json=v2_body(images[i : i + 1]))
            assert answer.status_code == 200
            label = next(o for o in answer.json()["outputs"] if o["name"] == "label")["data"][0]
            arms.append(answer.headers["x-surge-route"])
            reward = 1.0 if label == truth[i] else 0.0
            fed = client.post(
                "/v1/feedback",
                json={
                    "request_id": answer.headers["x-request-id"],
                    "reward": reward,
                    "feedback_token": answer.headers["x-feedback-token"],
                },
            )
            assert fed.status_code == 200, fed.text
        assert sum(a == "digits@1" for a in arms[-100:]) >= 85, arms[-100:]
        unknown = client.post(
            "/v1/feedback", json={"request_id": "nope", "reward": 1, "feedback_token": "t"}
        )
        assert unknown.status_code == 404
        bad = client.post("/v1/feedback", json={"request_id": "x", "reward": "great"})
        assert bad.status_code == 400
        learned = client.get("/admin/routes", headers=ADMIN).json()["routes"]["learner"]
        pulls = learned["bandit"][""]["good"]["pulls"]
        assert pulls > 200
    # A second server on the same registry starts from the counts the first one shared.
    with run_server(config, tmp_path) as server, httpx.Client(base_url=server.url) as client:
        again = client.get("/admin/routes", headers=ADMIN).json()["routes"]["learner"]
        assert again["bandit"][""]["good"]["pulls"] == pulls


def test_rules_send_requests_where_their_size_and_headers_say(repo, tmp_path):
    rules = [
        {"name": "big-batches", "when": [{"field": "input_rows", "op": "gt", "value": 4}],
         "target": "big"},
        {"name": "gold", "when": [{"field": "header:x-tier", "op": "eq", "value": "gold"}],
         "target": "big"},
    ]  # fmt: skip
    config = {
        "model_repository": str(repo),
        "endpoints": {"small": endpoint("digits", "1"), "big": endpoint("digits", "2")},
        "routes": {"sorted": {"rules": {"rules": rules, "default": "small"}}},
    }
    images = load_digits().data.astype(np.float32)
    with run_server(config, tmp_path) as server, httpx.Client(base_url=server.url) as client:

        def route(rows: int, headers: dict | None = None) -> str:
            r = client.post("/v2/models/sorted/infer", json=v2_body(images[:rows]), headers=headers)
            assert r.status_code == 200, r.text
            return r.headers["x-surge-route"]

        assert route(1) == "digits@1"
        assert route(8) == "digits@2"
        assert route(1, {"X-Tier": "gold"}) == "digits@2"
        assert route(1, {"X-Tier": "silver"}) == "digits@1"
        views = client.get("/admin/routes", headers=ADMIN).json()["routes"]["sorted"]
        assert {(d["target"], d["action"]) for d in views["decisions"]} == {
            ("small", "default"),
            ("big", "big-batches"),
            ("big", "gold"),
        }
    unknown_field = [{"name": "x", "target": "big", "when": [{"field": "colour", "op": "eq"}]}]
    bad = {**config, "routes": {"sorted": {"rules": {"rules": unknown_field, "default": "small"}}}}
    with pytest.raises(ValidationError, match="colour"):  # refused at start, not per request
        Config.model_validate(bad)


def test_a_remote_surge_serves_as_an_upstream_and_local_takes_over_when_it_dies(repo, tmp_path):
    remote_config = {"model_repository": str(repo), "endpoints": {"digits": endpoint("digits")}}
    (tmp_path / "remote-run").mkdir()
    (tmp_path / "front-run").mkdir()
    with run_server(remote_config, tmp_path / "remote-run") as remote:
        up = repo.parent / f"upstream-{remote.port}"
        version = up / "far" / "1"
        version.mkdir(parents=True)
        link_version(repo / "digits" / "1", up / "digits" / "1")
        (version / "model.yaml").write_text(yaml.safe_dump({
            "runtime": "upstream", **DIGITS_TENSORS,
            "parameters": {"url": remote.url, "protocol": "v2", "model": "digits",
                           "timeout_s": 1.0},
        }))  # fmt: skip
        front_config = {
            "model_repository": str(up),
            "endpoints": {"far": endpoint("far"), "near": endpoint("digits")},
            "routes": {"mixed": {"fallback": {"targets": ["far", "near"],
                                              "failure_threshold": 2, "open_s": 60}}},
        }  # fmt: skip
        images = load_digits().data.astype(np.float32)
        with (
            run_server(front_config, tmp_path / "front-run") as front,
            httpx.Client(base_url=front.url) as client,
        ):
            first = client.post("/v2/models/mixed/infer", json=v2_body(images[:3]))
            assert first.status_code == 200 and first.headers["x-surge-route"] == "far@1"
            direct = client.post("/v2/models/far/infer", json=v2_body(images[:3]))
            labels = next(o for o in direct.json()["outputs"] if o["name"] == "label")
            assert labels["data"] == [0, 1, 2]
            remote.terminate()  # the remote goes away
            after = [
                client.post("/v2/models/mixed/infer", json=v2_body(images[:1])) for _ in range(6)
            ]
            assert [a.status_code for a in after] == [200] * 6
            assert {a.headers["x-surge-route"] for a in after} == {"digits@1; degraded"}
            gone = client.post("/v2/models/far/infer", json=v2_body(images[:1]))
            assert gone.status_code == 502 and "upstream" in gone.json()["error"]
            metrics = client.get("/metrics").text
            assert 'surge_breaker_open{route="mixed",target="far"} 1.0' in metrics
