"""Drift over real HTTP: digits served as trained stay `ok`; the same digits faded to a
third of their ink mark the model as drifting in /metrics and in `surge status`."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
from conftest import ADMIN, ADMIN_KEY, run_server
from sklearn.datasets import load_digits

ROWS_PER_PHASE = 1200
ROWS_PER_REQUEST = 25
DRIFTING_METRIC = 'surge_model_drifting{endpoint="digits",version="1"}'


def drift_config(demo_models: Path) -> dict:
    return {
        "model_repository": str(demo_models),
        "endpoints": {"digits": {"batching": {"max_batch_size": 64, "max_queue_delay_ms": 1}}},
        "observability": {"drift": {"reference_rows": 200, "window_rows": 200}},
    }


def send_digits(url: str, rows: np.ndarray) -> None:
    # One request after another, so the windows see the rows in this order.
    with httpx.Client(base_url=url, timeout=30) as client:
        for start in range(0, len(rows), ROWS_PER_REQUEST):
            chunk = rows[start : start + ROWS_PER_REQUEST]
            body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(chunk.shape),
                                "data": chunk.ravel().tolist()}]}  # fmt: skip
            response = client.post("/v2/models/digits/infer", json=body)
            assert response.status_code == 200, response.text


def drift_of(url: str) -> dict:
    doc = httpx.get(f"{url}/admin/endpoints/digits", headers=ADMIN, timeout=10).json()
    (version,) = doc["versions"]
    return version["drift"]


def drifting_metric(url: str) -> float | None:
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith(DRIFTING_METRIC):
            return float(line.split()[-1])
    return None


def wait_for_metric(url: str, want: float, timeout_s: float = 10) -> None:
    # The last batch is observed on the loop right around its answer; allow a moment.
    deadline = time.monotonic() + timeout_s
    while drifting_metric(url) != want:
        assert time.monotonic() < deadline, f"{DRIFTING_METRIC} never became {want}"
        time.sleep(0.1)


def surge_status(url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "surge", "status", "digits", "--url", url],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SURGE_ADMIN_KEY": ADMIN_KEY},
    )


def test_faded_digits_mark_the_model_as_drifting(demo_models, tmp_path):
    x, _ = load_digits(return_X_y=True)
    rows = x[np.random.default_rng(0).permutation(len(x))[:ROWS_PER_PHASE]].astype(np.float32)
    with run_server(drift_config(demo_models), tmp_path) as server:
        send_digits(server.url, rows)
        wait_for_metric(server.url, 0.0)
        calm = drift_of(server.url)
        assert calm["state"] == "ok", calm
        signals = {s["signal"] for s in calm["signals"]}
        assert {"input:input:mean", "input:input:norm", "confidence"} <= signals
        shown = surge_status(server.url)
        assert shown.returncode == 0, shown.stderr
        assert "drift: ok (psi" in shown.stdout, shown.stdout

        send_digits(server.url, rows * 0.3)
        wait_for_metric(server.url, 1.0)
        metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
        assert 'surge_drift_psi{endpoint="digits",signal="input:input:mean",version="1"}' in metrics
        assert 'surge_model_confidence_count{endpoint="digits",version="1"}' in metrics
        assert drift_of(server.url)["state"] == "drifting"
        shown = surge_status(server.url)
        assert shown.returncode == 0, shown.stderr
        assert "digits@1 drift: DRIFTING input:input:mean psi" in shown.stdout, shown.stdout
