"""Receipts over real HTTP, stored in SQLite and in the real PostgreSQL: a cascade's
escalation and a deadline ladder's degraded answer explained in plain fields, cost and
energy attributed, errors receipted, lists filtered, and the receipt inline on request."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import ADMIN, ADMIN_KEY, run_server
from rollout_helpers import rollout_repository
from sklearn.datasets import load_digits
from test_routes import SLOW_DIGITS, endpoint, python_version, v2_body

from surge.store.receipts import ReceiptFilter
from surge.store.registry import open_store

POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
PRICE = {"per_compute_second": 0.5, "per_item": 0.001, "currency": "EUR"}


@pytest.fixture(scope="module")
def repo(demo_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = rollout_repository(demo_models, tmp_path_factory.mktemp("receipts-repo"))
    python_version(root, "slow", SLOW_DIGITS)
    return root


def _postgres() -> str:
    psycopg = pytest.importorskip("psycopg")
    try:
        with psycopg.connect(POSTGRES_URL, connect_timeout=3) as conn:
            conn.execute("DROP TABLE IF EXISTS surge_receipts")
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL not reachable at {POSTGRES_URL}: {exc}")
    return POSTGRES_URL


def _config(repo: Path, receipts_url: str) -> dict:
    return {
        "model_repository": str(repo),
        "endpoints": {
            "small": endpoint("digits", "1", cost=PRICE),
            "big": endpoint("digits", "2", cost=PRICE),
            "slow": endpoint("slow", "1", cost=PRICE),
        },
        "routes": {
            "smart": {"cascade": {"tiers": [
                {"target": "small", "threshold": 0.9999},
                {"target": "big", "threshold": 0.0},
            ]}},
            "timeboxed": {"ladder": {"rungs": ["slow", "small"]}},
        },
        "observability": {"receipts": {"url": receipts_url, "flush_interval_s": 0.05}},
        "tenants": {"acme": {}},  # cost series label only the tenants the config names
    }  # fmt: skip


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_receipt_explains_escalation_and_degradation_in_plain_fields(backend, repo, tmp_path):
    url = _postgres() if backend == "postgresql" else f"sqlite:///{tmp_path / 'receipts.db'}"
    images = load_digits().data.astype(np.float32)
    with (
        run_server(_config(repo, url), tmp_path) as server,
        httpx.Client(base_url=server.url, timeout=30) as client,
    ):
        # 16 images the small model mostly never saw: at 0.9999 some rows are unsure and escalate.
        cascade = client.post(
            "/v2/models/smart/infer",
            json=v2_body(images[-16:]),
            headers={"X-Request-Id": f"cascade-{backend}", "X-Tenant": "acme"},
        )
        assert cascade.status_code == 200, cascade.text
        assert "escalated" in cascade.headers["x-surge-route"]
        hurried = client.post(
            "/v2/models/timeboxed/infer",
            json=v2_body(images[:1]),
            headers={"X-Request-Id": f"hurried-{backend}", "X-Request-Timeout-Ms": "60"},
        )
        assert hurried.status_code == 200, hurried.text

        receipt = client.get(f"/admin/receipts/cascade-{backend}", headers=ADMIN).json()
        assert receipt["endpoint"] == "smart" and receipt["tenant"] == "acme"
        assert receipt["status"] == 200 and receipt["escalated"] is True
        assert receipt["served_by"] == "digits@2"
        escalation = receipt["decisions"][0]
        assert escalation["policy"] == "cascade" and escalation["action"] == "escalate"
        assert escalation["choice"] == "digits@1" and escalation["threshold"] == 0.9999
        assert "escalated to big" in escalation["reason"]
        assert "escalated to big" in receipt["why"] and "answered by digits@2" in receipt["why"]
        # Both tiers ran: the small one on all 16 rows, the big one on the unsure ones.
        small, big = receipt["runs"]
        assert (small["model"], small["rows"]) == ("digits@1", 16)
        assert big["model"] == "digits@2" and 0 < big["rows"] <= 16
        assert receipt["models"] == ["digits@1 (live)", "digits@2 (live)"]
        for run in receipt["runs"]:
            assert run["compute_ms"] > 0 and run["batch_rows"] >= run["rows"]
            assert run["cost"] == pytest.approx(
                run["compute_ms"] / 1000 * PRICE["per_compute_second"]
                + run["rows"] * PRICE["per_item"],
                rel=1e-3,  # compute_ms is shown rounded to 0.1 µs
            )
        assert receipt["cost"]["currency"] == "EUR"
        assert receipt["cost"]["total"] == pytest.approx(sum(r["cost"] for r in receipt["runs"]))
        assert receipt["energy"]["joules"] > 0 and receipt["energy"]["source"] == "estimate"
        assert list(receipt["stages_ms"]) == [
            "validate",
            "route",
            "admit",
            "queue",
            "batch",
            "compute",
            "post_route",
            "respond",
        ]

        degraded = client.get(f"/admin/receipts/hurried-{backend}", headers=ADMIN).json()
        assert degraded["degraded"] is True and degraded["escalated"] is False
        assert degraded["served_by"] == "digits@1"
        ladder = degraded["decisions"][0]
        assert ladder["policy"] == "ladder" and ladder["choice"] == "small"
        assert ladder["degraded"] is True and ladder["remaining_ms"] < 60
        assert ladder["estimate_ms"] > 0
        assert "(degraded)" in degraded["why"]

        # Errors get receipts too, with the reason.
        bad = client.post(
            "/v2/models/smart/infer",
            json={"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3],
                              "data": [1, 2, 3]}]},
            headers={"X-Request-Id": f"bad-{backend}"},
        )  # fmt: skip
        assert bad.status_code == 400
        refused = client.get(f"/admin/receipts/bad-{backend}", headers=ADMIN).json()
        assert refused["status"] == 400 and refused["error"] == "invalid_input"
        assert refused["served_by"] is None and refused["cost"]["total"] == 0

        # Lists filter; the summary adds up; unknown ids and bad filters are 4xx.
        listed = client.get("/admin/receipts?degraded=true", headers=ADMIN).json()["receipts"]
        assert [r["id"] for r in listed] == [f"hurried-{backend}"]
        by_tenant = client.get("/admin/receipts?tenant=acme", headers=ADMIN).json()["receipts"]
        assert [r["id"] for r in by_tenant] == [f"cascade-{backend}"]
        summary = client.get("/admin/receipts/summary?endpoint=smart", headers=ADMIN).json()
        assert summary["receipts"] == 2 and summary["escalated"] == 1
        assert summary["dropped_total"] == 0
        assert client.get("/admin/receipts/nope", headers=ADMIN).status_code == 404
        assert client.get("/admin/receipts?since=yesterday", headers=ADMIN).status_code == 400
        assert client.get("/admin/receipts?color=red", headers=ADMIN).status_code == 400
        assert client.get("/admin/receipts").status_code == 401

        # Inline: the same receipt in a response header, when asked for.
        inline = client.post(
            "/v2/models/smart/infer",
            json=v2_body(images[:2]),
            headers={"X-Surge-Receipt": "1"},
        )
        assert inline.status_code == 200
        doc = json.loads(inline.headers["x-surge-receipt"])
        assert doc["id"] == inline.headers["x-request-id"] and doc["runs"][0]["rows"] == 2
        assert (
            "x-surge-receipt"
            not in client.post("/v2/models/smart/infer", json=v2_body(images[:1])).headers
        )

        # Cost and energy totals are exported, and the idle line is its own series.
        metrics = client.get("/metrics").text
        assert 'surge_cost_total{endpoint="small",tenant="acme",version="1"}' in metrics
        assert "surge_energy_joules_total" in metrics
        assert 'surge_idle_cost_total{endpoint="slow",version="1"}' in metrics
        costs = client.get("/admin/costs", headers=ADMIN).json()
        slow = next(r for r in costs["endpoints"] if r["endpoint"] == "slow")
        assert slow["idle_s"] > 0 and slow["idle_cost"] > 0 and slow["currency"] == "EUR"
        assert costs["energy_sources"]["digits@1"] == "estimate"

        # The CLI shows the same receipt, readable.
        shown = subprocess.run(
            [sys.executable, "-m", "surge", "receipts", f"cascade-{backend}",
             "--url", server.url, "--admin-key", ADMIN_KEY],
            capture_output=True, text=True, timeout=60, check=True,
        ).stdout  # fmt: skip
        assert "[escalated]" in shown and "escalated to big" in shown
        assert "ran         digits@2 (live)" in shown and "EUR" in shown
        listed = subprocess.run(
            [sys.executable, "-m", "surge", "receipts", "--degraded",
             "--url", server.url, "--admin-key", ADMIN_KEY],
            capture_output=True, text=True, timeout=60, check=True,
        ).stdout  # fmt: skip
        assert f"hurried-{backend}" in listed and f"cascade-{backend}" not in listed


def test_every_answer_is_receipted_even_when_the_server_stops_right_after(repo, tmp_path):
    url = f"sqlite:///{tmp_path / 'receipts.db'}"
    config = _config(repo, url)
    config["observability"]["receipts"]["flush_interval_s"] = 30  # only the stop flushes
    images = load_digits().data.astype(np.float32)
    with run_server(config, tmp_path) as server, httpx.Client(base_url=server.url) as client:
        for i in range(40):
            r = client.post("/v2/models/smart/infer", json=v2_body(images[i : i + 1]))
            assert r.status_code == 200
        assert server.terminate() == 0  # SIGTERM: drain, flush receipts, stop the sink
    store = open_store(url)
    try:
        assert store.summarize_receipts(ReceiptFilter(endpoint="smart"))["receipts"] == 40
    finally:
        store.close()
