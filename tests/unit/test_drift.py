"""Drift: PSI and KS on known cases, the monitor's windows and verdicts, the per-batch
signals, and the Prometheus families."""

from __future__ import annotations

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from scipy.stats import ks_2samp

from surge.config_observe import DriftConfig
from surge.observe.drift import (
    MIN_ROWS,
    DriftMonitor,
    ModelDriftRegistry,
    SlidingRows,
    ks_statistic,
    psi,
    summarize,
)
from surge.observe.drift_metrics import DriftCollector

CONFIG = DriftConfig(reference_rows=1000, window_rows=1000)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(7)


def digits_batch(rng: np.random.Generator, rows: int, scale: float = 1.0) -> np.ndarray:
    return (rng.integers(0, 17, (rows, 64)) * scale).astype(np.float32)


def probabilities(rng: np.random.Generator, rows: int, sharpness: float = 1.0) -> np.ndarray:
    return rng.dirichlet(np.full(10, sharpness), rows).astype(np.float32)


# -- statistics ------------------------------------------------------------------------------


def test_psi_is_small_for_the_same_distribution(rng):
    assert psi(rng.normal(size=1000), rng.normal(size=1000)) < 0.1


def test_psi_and_ks_see_a_shift_of_one_standard_deviation(rng):
    reference, shifted = rng.normal(size=1000), rng.normal(1.0, 1.0, size=1000)
    assert psi(reference, shifted) > 0.25
    assert ks_statistic(reference, shifted) > 0.2


def test_psi_of_a_constant_reference_sees_a_move_to_either_side():
    reference = np.ones(500)  # an L2-normalised embedding's norm
    assert psi(reference, np.ones(500)) == pytest.approx(0.0)
    assert psi(reference, np.full(500, 1.5)) > 0.25
    assert psi(reference, np.full(500, 0.5)) > 0.25


@pytest.mark.parametrize("sizes", [(1000, 1000), (200, 700), (50, 3)])
def test_ks_matches_scipy(rng, sizes):
    a = rng.normal(size=sizes[0])
    b = rng.normal(0.3, 1.2, size=sizes[1])
    assert ks_statistic(a, b) == pytest.approx(ks_2samp(a, b).statistic, abs=1e-12)


def test_ks_with_ties_matches_scipy(rng):
    a, b = rng.integers(0, 5, 300), rng.integers(1, 6, 400)
    assert ks_statistic(a, b) == pytest.approx(ks_2samp(a, b).statistic, abs=1e-12)


# -- the monitor -------------------------------------------------------------------------------


def feed(monitor: DriftMonitor, rng: np.random.Generator, rows: int, scale: float = 1.0) -> None:
    for _ in range(rows // 50):
        batch = digits_batch(rng, 50, scale)
        monitor.observe(summarize({"input": batch}, {"probabilities": probabilities(rng, 50)}))


def test_monitor_stays_calm_while_inputs_do_not_move(rng):
    monitor = DriftMonitor(CONFIG)
    feed(monitor, rng, 3000)
    states = {s["signal"]: s for s in monitor.status()}
    assert set(states) == {"input:input:mean", "input:input:norm", "confidence"}
    assert not monitor.drifting
    assert all(s["state"] == "ok" and s["psi"] < 0.1 for s in states.values()), states
    assert all(s["reference_rows"] == 1000 and s["window_rows"] == 1000 for s in states.values())


def test_monitor_marks_drifting_once_inputs_shift(rng):
    monitor = DriftMonitor(CONFIG)
    feed(monitor, rng, 2000)
    assert not monitor.drifting
    feed(monitor, rng, 1000, scale=0.5)
    states = {s["signal"]: s for s in monitor.status()}
    assert monitor.drifting
    assert states["input:input:mean"]["state"] == "drifting"
    assert states["input:input:mean"]["psi"] >= CONFIG.psi_threshold
    assert not states["confidence"]["drifting"]  # the fake model's confidence did not move


def test_monitor_reports_what_it_is_still_collecting(rng):
    monitor = DriftMonitor(CONFIG)
    assert monitor.status() == []
    feed(monitor, rng, 600)
    first = monitor.status()[0]
    assert first["state"] == "collecting reference" and first["psi"] is None
    assert first["reference_rows"] == 600 and first["window_rows"] == 0
    feed(monitor, rng, 400 + MIN_ROWS - 50)
    assert monitor.status()[0]["state"] == "collecting window"
    feed(monitor, rng, 50)
    assert monitor.status()[0]["state"] == "ok"


def test_a_batch_across_the_reference_boundary_is_split():
    monitor = DriftMonitor(DriftConfig(reference_rows=60, window_rows=100))
    monitor.observe({"x": np.arange(100, dtype=np.float64)})
    windows = monitor.signals["x"]
    assert windows.reference is not None
    assert windows.reference.tolist() == list(range(60))
    assert windows.window.values().tolist() == list(range(60, 100))


def test_sliding_window_keeps_exactly_the_latest_rows():
    window = SlidingRows(100)
    for start in range(0, 1000, 30):
        window.add(np.arange(start, start + 30, dtype=np.float64))
    assert window.rows == 100
    assert window.values().tolist() == list(range(920, 1020))
    window.add(np.arange(5000, 5250, dtype=np.float64))  # a batch bigger than the window
    assert window.values().tolist() == list(range(5150, 5250))


def test_status_is_recomputed_only_after_a_tenth_of_the_window(rng):
    monitor = DriftMonitor(CONFIG)
    feed(monitor, rng, 1500)
    before = monitor.status()
    feed(monitor, rng, 50)  # 5 % of the window: the cached figures stand
    assert monitor.status() == before
    feed(monitor, rng, 50)
    after = monitor.status()
    assert after[0]["window_rows"] == 600 and after[0]["psi"] != before[0]["psi"]


def test_registry_keeps_one_monitor_per_version(rng):
    drift = ModelDriftRegistry(DriftConfig(reference_rows=50, window_rows=50))
    assert drift.monitor_for("digits", "1") is drift.monitor_for("digits", "1")
    for version, scale in (("1", 1.0), ("2", 1.0)):
        drift.monitor_for("digits", version).observe({"x": np.ones(50) * scale})
    drift.monitor_for("digits", "1").observe({"x": np.full(50, 9.0)})
    drift.monitor_for("digits", "2").observe({"x": np.ones(50)})
    assert drift.drifting("digits", "1") and not drift.drifting("digits", "2")
    assert not drift.drifting("digits", "3")  # never served
    rows = drift.snapshot()
    assert {(r["endpoint"], r["version"], r["signal"]) for r in rows} == {
        ("digits", "1", "x"),
        ("digits", "2", "x"),
    }
    assert drift.describe("digits", "1")["state"] == "drifting"
    assert drift.describe("digits", "3") is None


# -- signals of a batch --------------------------------------------------------------------


def test_summarize_a_digits_batch(rng):
    batch = digits_batch(rng, 64)
    probs = probabilities(rng, 64)
    summary = summarize({"input": batch}, {"probabilities": probs, "label": probs.argmax(1)})
    assert set(summary) == {"input:input:mean", "input:input:norm", "confidence"}
    assert np.allclose(summary["input:input:mean"], batch.mean(axis=1))
    assert np.allclose(summary["input:input:norm"], np.linalg.norm(batch, axis=1), rtol=1e-5)
    assert np.allclose(summary["confidence"], probs.max(axis=1))
    assert all(v.shape == (64,) and v.dtype == np.float64 for v in summary.values())


def test_summarize_a_text_batch():
    text = np.array([b"hello", "h\u00e9llo".encode(), b""], dtype=object)
    summary = summarize({"text": text}, {})
    assert summary["input:text:length"].tolist() == [5.0, 6.0, 0.0]


def test_summarize_an_embedding_output(rng):
    embedding = rng.normal(size=(8, 384)).astype(np.float32)
    summary = summarize({"text": np.array([b"a"] * 8, dtype=object)}, {"embedding": embedding})
    assert set(summary) == {"input:text:length", "output:embedding:norm"}
    assert np.allclose(summary["output:embedding:norm"], np.linalg.norm(embedding, axis=1))


def test_summarize_finds_unnamed_probabilities_and_drops_non_finite_rows(rng):
    scores = probabilities(rng, 4)
    batch = np.ones((4, 3), dtype=np.float32)
    batch[1, 0] = np.nan
    summary = summarize({"x": batch}, {"scores": scores})
    assert np.allclose(summary["confidence"], scores.max(axis=1))
    assert summary["input:x:mean"].shape == (3,)


# -- metrics -----------------------------------------------------------------------------------


def test_collector_renders_drift_metrics(rng):
    drift = ModelDriftRegistry(DriftConfig(reference_rows=100, window_rows=100))
    monitor = drift.monitor_for("digits", "1")
    feed(monitor, rng, 200)
    feed(monitor, rng, 100, scale=0.2)
    registry = CollectorRegistry()
    registry.register(DriftCollector(drift))
    text = generate_latest(registry).decode()
    labels = 'endpoint="digits",signal="input:input:mean",version="1"'
    assert f"surge_drift_psi{{{labels}}}" in text
    assert f"surge_drift_ks_statistic{{{labels}}}" in text
    assert 'surge_model_drifting{endpoint="digits",version="1"} 1.0' in text
    assert 'surge_model_confidence_bucket{endpoint="digits",le="1.0",version="1"} 300.0' in text
    assert 'surge_model_confidence_count{endpoint="digits",version="1"} 300.0' in text


def test_a_retired_version_stops_being_exported_once_no_deployment_uses_it():
    registry = ModelDriftRegistry(DriftConfig())
    first = registry.monitor_for("digits", "1")
    second = registry.monitor_for("digits", "1")  # a redeploy beside the old one
    assert first is second
    registry.discard("digits", "1")  # the old deployment stops: the new one still serves
    assert ("digits", "1") in registry.monitors
    registry.discard("digits", "1")
    assert ("digits", "1") not in registry.monitors
