"""The cascade demo's two tiers and the sweep that measures what the cascade saves."""

from __future__ import annotations

from pathlib import Path

import joblib
import pytest
import yaml

from benchmarks.cascade_sweep import run_sweep
from surge.demo.cascade_models import build_digits_big, build_digits_small
from surge.repository import MANIFEST


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, float]]:
    root = tmp_path_factory.mktemp("cascade-models")
    out = {}
    for name, build in (("small", build_digits_small), ("big", build_digits_big)):
        version_dir = root / f"digits_{name}" / "1"
        version_dir.mkdir(parents=True)
        out[name] = (version_dir, build(version_dir))
    return out


def test_big_is_more_accurate_and_both_are_good(built: dict[str, tuple[Path, float]]) -> None:
    small_accuracy, big_accuracy = built["small"][1], built["big"][1]
    assert small_accuracy >= 0.94
    assert big_accuracy >= 0.94
    assert big_accuracy > small_accuracy


@pytest.mark.parametrize("name", ["small", "big"])
def test_manifest_serves_digits_tensors_with_sklearn(
    built: dict[str, tuple[Path, float]], name: str
) -> None:
    version_dir, accuracy = built[name]
    manifest = yaml.safe_load((version_dir / MANIFEST).read_text())
    assert manifest["runtime"] == "sklearn"
    assert manifest["artifact"] == "model.joblib"
    assert (version_dir / "model.joblib").exists()
    assert manifest["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
    assert {(t["name"], t["datatype"], tuple(t["shape"])) for t in manifest["outputs"]} == {
        ("probabilities", "FP32", (-1, 10)),
        ("label", "INT64", (-1,)),
    }
    assert manifest["parameters"]["held_out_accuracy"] == pytest.approx(accuracy)


def test_sweep_reports_shares_accuracy_and_measured_compute(
    built: dict[str, tuple[Path, float]],
) -> None:
    models = tuple(joblib.load(built[name][0] / "model.joblib") for name in ("small", "big"))
    thresholds = (0.5, 0.9, 0.99)
    report = run_sweep(thresholds, repeats=1, models=models)

    assert report["small"]["accuracy"] == pytest.approx(built["small"][1])
    assert report["big"]["accuracy"] == pytest.approx(built["big"][1])
    assert report["big"]["seconds"] > report["small"]["seconds"] > 0
    assert set(report["target"]) >= {"met", "best", "accuracy_min", "compute_max"}
    sweep = report["sweep"]
    assert [r["threshold"] for r in sweep] == list(thresholds)
    for r in sweep:
        assert set(r) >= {
            "escalated_share", "review_share", "accuracy", "accuracy_not_reviewed",
            "compute_fraction", "compute_fraction_per_request",
        }  # fmt: skip
        for key in ("escalated_share", "review_share", "accuracy", "accuracy_not_reviewed"):
            assert 0 <= r[key] <= 1
        assert r["review_share"] <= r["escalated_share"]  # only escalated rows reach review
        assert r["compute_fraction"] > 0
    escalated = [r["escalated_share"] for r in sweep]
    assert escalated == sorted(escalated) and escalated[0] < escalated[-1]
    # escalating more rows to the better model buys accuracy over the small model alone
    assert sweep[-1]["accuracy"] > report["small"]["accuracy"]
