"""How much of the big model's compute a confidence cascade saves, and what it costs in
accuracy: digits_small (logistic regression) answers what it is sure of, digits_big
(calibrated RBF SVC) the rest, on the 450 held-out rows of the fixed digits split.

    .venv/bin/python -m benchmarks.cascade_sweep [--repeats 15] [--big-threshold 0.9]

Writes benchmarks/results/cascade.md, cascade.json and cascade.png; about 15 s.

Compute is measured, not modelled: for every threshold the big model really runs on the
escalated rows only, and its time is compared with the big model running on every row.
Two ways to batch the escalated rows are timed, because the big model's fixed cost per
call (input checks, ten calibrators) is large next to its cost per row:
- batched: escalated rows are gathered into batches of 32, as the big deployment's
  batcher forms them when many requests are in flight (the target is judged on this);
- per request: each request of 32 rows sends its few escalated rows as one small call,
  what a lone client sees with no concurrency.
Times are the best of `repeats` runs, interleaved (each run times every measurement once,
so load from elsewhere on the machine skews no ratio), with one BLAS thread (one replica,
one core) and garbage collection paused; only model calls are timed, not judge / merge.
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from surge.core.tensors import Tensors
from surge.demo.cascade_models import train_digits_big, train_digits_small
from surge.demo.digits import digits_split
from surge.routing.cascade import CascadePolicy, CascadeTier, judge, merge

THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.97, 0.99, 0.995)
# The calibrated SVC's lowest confidence on held-out rows is about 0.8, so a last-tier
# threshold of 0.6 would never send a row to review; 0.9 flags the big model's least
# sure few percent of the rows it sees.
BIG_THRESHOLD = 0.9
BATCH_SIZE = 32
REPEATS = 15
TARGET_ACCURACY_DROP = 0.005  # cascade accuracy >= big accuracy - 0.5 points ...
TARGET_COMPUTE = 0.40  # ... at <= 40 % of the big model's compute
RESULTS = Path(__file__).parent / "results"


def _outputs(classes: np.ndarray, probabilities: np.ndarray) -> Tensors:
    """The tensors the sklearn runtime serves, so the cascade judges what it would see."""
    probabilities = probabilities.astype(np.float32, copy=False)
    label = classes[probabilities.argmax(axis=1)].astype(np.int64, copy=False)
    return {"probabilities": probabilities, "label": label}


def _chunks(rows: np.ndarray, size: int) -> list[np.ndarray]:
    return [rows[i : i + size] for i in range(0, len(rows), size)]


class _Timings:
    """Best-of timings of many measurements, interleaved: every repetition times every
    measurement once, so a slow stretch on a shared machine hits all of them alike
    rather than skewing the ratio between two measured minutes apart."""

    def __init__(self, x: np.ndarray) -> None:
        self._x = x
        self._jobs: list[tuple[Any, list[np.ndarray]]] = []

    def add(self, model: Any, batches: list[np.ndarray]) -> int:
        """Queue predict_proba over `batches` (row indices, in turn); returns its key."""
        inputs = [np.ascontiguousarray(self._x[b]) for b in batches if len(b)]
        self._jobs.append((model, inputs))  # gathering rows is not compute: done here
        return len(self._jobs) - 1

    def run(self, repeats: int) -> tuple[list[float], list[np.ndarray]]:
        """Best total seconds per job, and each job's probabilities in row order."""
        best = [float("inf")] * len(self._jobs)
        probabilities: list[np.ndarray] = []
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            for _ in range(repeats):
                probabilities = []
                for key, (model, inputs) in enumerate(self._jobs):
                    start = time.perf_counter()
                    out = [model.predict_proba(batch) for batch in inputs]
                    best[key] = min(best[key], time.perf_counter() - start)
                    width = len(model.classes_)
                    probabilities.append(np.concatenate(out) if out else np.empty((0, width)))
        finally:
            if gc_was_enabled:
                gc.enable()
        return best, probabilities


def _cascade_row(
    policy: CascadePolicy,
    small_out: Tensors,
    big_out: Tensors,
    escalated: np.ndarray,
    y: np.ndarray,
) -> dict[str, Any]:
    n = len(y)
    tier1 = judge(policy, 1, big_out)
    answer = merge(n, [(np.arange(n), small_out), (escalated, big_out)])
    correct = answer["label"] == y
    reviewed = np.zeros(n, dtype=bool)
    reviewed[escalated[tier1.review_rows]] = True
    return {
        "threshold": policy.tiers[0].threshold,
        "escalated_share": len(escalated) / n,
        "review_share": float(reviewed.mean()),
        "accuracy": float(correct.mean()),
        "accuracy_not_reviewed": float(correct[~reviewed].mean()) if (~reviewed).any() else None,
    }


def _target(big_accuracy: float, sweep: list[dict[str, Any]]) -> dict[str, Any]:
    accuracy_min = big_accuracy - TARGET_ACCURACY_DROP
    # a hair of slack so 0.9911 vs 0.99111... float noise never decides the verdict
    accurate = [r for r in sweep if r["accuracy"] >= accuracy_min - 1e-9]
    cheap = [r for r in sweep if r["compute_fraction"] <= TARGET_COMPUTE]
    met = [r for r in accurate if r["compute_fraction"] <= TARGET_COMPUTE]
    best = max(met, key=lambda r: (r["accuracy"], -r["compute_fraction"]), default=None)
    return {
        "accuracy_min": accuracy_min,
        "compute_max": TARGET_COMPUTE,
        "met": best is not None,
        "best": best,
        # when nothing meets both: the nearest miss from either side
        "most_accurate_within_compute": max(cheap, key=lambda r: r["accuracy"], default=None),
        "cheapest_accurate_enough": min(
            accurate, key=lambda r: r["compute_fraction"], default=None
        ),
        "met_per_request": any(
            r["compute_fraction_per_request"] <= TARGET_COMPUTE for r in accurate
        ),
    }


def run_sweep(
    thresholds: Sequence[float] = THRESHOLDS,
    *,
    big_threshold: float = BIG_THRESHOLD,
    batch_size: int = BATCH_SIZE,
    repeats: int = REPEATS,
    models: tuple[Any, Any] | None = None,
) -> dict[str, Any]:
    """The whole sweep as plain data. `models` is (small, big) already fitted; by default
    both are trained here with the very code the demo builders use."""
    if repeats < 1 or batch_size < 1:
        raise ValueError("repeats and batch_size must be at least 1")
    small, big = models if models is not None else (train_digits_small(), train_digits_big())
    _, x, _, y = digits_split()
    n = len(y)
    rows = np.arange(n)
    requests = _chunks(rows, batch_size)
    # Which rows escalate depends only on the small model's answers, so they are known
    # before timing; the same batches as the timed run, so every row's answer is identical.
    small_out = _outputs(
        small.classes_, np.concatenate([small.predict_proba(x[r]) for r in requests])
    )
    policies = [
        CascadePolicy(
            (CascadeTier("digits_small", t), CascadeTier("digits_big", big_threshold)),
            review=True,
        )
        for t in thresholds
    ]
    accepted = [judge(p, 0, small_out).accepted for p in policies]
    timings = _Timings(x)
    # the small tier runs on every row whatever the threshold: one measurement
    small_key, big_key = timings.add(small, requests), timings.add(big, requests)
    batched = [timings.add(big, _chunks(rows[~a], batch_size)) for a in accepted]
    per_request = [timings.add(big, [r[~a[r]] for r in requests]) for a in accepted]
    with threadpool_limits(limits=1):
        seconds, probabilities = timings.run(repeats)
    small_s, big_all_s = seconds[small_key], seconds[big_key]
    sweep = []
    for policy, a, b_key, r_key in zip(policies, accepted, batched, per_request, strict=True):
        big_out = _outputs(big.classes_, probabilities[b_key])  # the timed calls' answers
        row = _cascade_row(policy, small_out, big_out, rows[~a], y)
        row |= {
            "small_seconds": small_s,
            "big_seconds": seconds[b_key],
            "big_seconds_per_request": seconds[r_key],
            "compute_fraction": (small_s + seconds[b_key]) / big_all_s,
            "compute_fraction_per_request": (small_s + seconds[r_key]) / big_all_s,
        }
        sweep.append(row)
    small_accuracy = float((small_out["label"] == y).mean())
    big_accuracy = float((_outputs(big.classes_, probabilities[big_key])["label"] == y).mean())
    return {
        "rows": n,
        "batch_size": batch_size,
        "repeats": repeats,
        "big_threshold": big_threshold,
        "confidence": "max_probability",
        "small": {"accuracy": small_accuracy, "seconds": small_s, "us_per_row": small_s / n * 1e6},
        "big": {"accuracy": big_accuracy, "seconds": big_all_s, "us_per_row": big_all_s / n * 1e6},
        "sweep": sweep,
        "target": _target(big_accuracy, sweep),
    }


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2%}"


def markdown(report: dict[str, Any]) -> str:
    small, big, target = report["small"], report["big"], report["target"]
    lines = [
        f"# Confidence cascade: digits_small -> digits_big, {report['rows']} held-out rows",
        "",
        f"Small alone: accuracy {small['accuracy']:.2%}, {small['us_per_row']:.1f} µs/row "
        f"({small['seconds'] / big['seconds']:.1%} of big's compute). "
        f"Big alone: accuracy {big['accuracy']:.2%}, {big['us_per_row']:.1f} µs/row. "
        f"Batches of {report['batch_size']}, best of {report['repeats']} runs, one thread.",
        "",
        f"| small threshold | escalated | to review (big < {report['big_threshold']:g}) "
        "| accuracy | accuracy, not reviewed | compute / big (batched) "
        "| compute / big (per request) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in report["sweep"]:
        lines.append(
            f"| {r['threshold']:g} | {r['escalated_share']:.1%} | {r['review_share']:.1%} "
            f"| {r['accuracy']:.2%} | {_pct(r['accuracy_not_reviewed'])} "
            f"| {r['compute_fraction']:.1%} | {r['compute_fraction_per_request']:.1%} |"
        )
    goal = (
        f"accuracy >= {target['accuracy_min']:.2%} (big - 0.5 points) "
        f"at <= {target['compute_max']:.0%} of big's compute (batched)"
    )
    lines.append("")
    if target["met"]:
        b = target["best"]
        lines.append(
            f"**Target met** ({goal}): threshold {b['threshold']:g} gives "
            f"{b['accuracy']:.2%} at {b['compute_fraction']:.1%} of big's compute, "
            f"escalating {b['escalated_share']:.1%} of rows."
        )
    else:
        lines.append(f"**Target not met** ({goal}).")
        for key, label in (
            ("most_accurate_within_compute", "most accurate within the compute budget"),
            ("cheapest_accurate_enough", "cheapest accurate enough"),
        ):
            r = target[key]
            if r is not None:
                lines.append(
                    f"Closest, {label}: threshold {r['threshold']:g}, {r['accuracy']:.2%} "
                    f"at {r['compute_fraction']:.1%}."
                )
    lines += [
        "",
        "Per request, each request's few escalated rows are one small call to the big "
        "model, whose fixed cost per call dominates; the target is "
        f"{'met' if target['met_per_request'] else 'not met'} that way. "
        "Batched, escalated rows from many requests share batches of "
        f"{report['batch_size']}, as the big deployment's batcher forms them under load.",
        "",
    ]
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweep = report["sweep"]
    big, small, target = report["big"], report["small"], report["target"]
    fig, (ax, shares) = plt.subplots(1, 2, figsize=(12, 4.8))
    compute = [r["compute_fraction"] for r in sweep]
    accuracy = [r["accuracy"] for r in sweep]
    ax.plot(compute, accuracy, "o-", label="cascade, batched")
    ax.plot([r["compute_fraction_per_request"] for r in sweep], accuracy, "s--", alpha=0.5,
            label="cascade, per request")  # fmt: skip
    for r in sweep:
        ax.annotate(f"{r['threshold']:g}", (r["compute_fraction"], r["accuracy"]),
                    textcoords="offset points", xytext=(4, -10), fontsize=8)  # fmt: skip
    ax.plot([small["seconds"] / big["seconds"]], [small["accuracy"]], "v", label="small alone")
    ax.plot([1.0], [big["accuracy"]], "^", label="big alone")
    ax.axhline(target["accuracy_min"], color="grey", ls=":", label="target accuracy")
    ax.axvline(target["compute_max"], color="grey", ls="-.", label="target compute")
    ax.set_xlabel("compute / big model alone (measured)")
    ax.set_ylabel("accuracy")
    ax.set_title("accuracy vs compute (labels: small threshold)")
    ax.legend(fontsize=8, loc="lower right")
    thresholds = [r["threshold"] for r in sweep]
    shares.plot(thresholds, [r["escalated_share"] for r in sweep], "o-", label="escalated to big")
    shares.plot(thresholds, [r["review_share"] for r in sweep], "s-",
                label=f"to review (big < {report['big_threshold']:g})")  # fmt: skip
    shares.set_xlabel("small threshold")
    shares.set_ylabel("share of rows")
    shares.set_title("where rows go")
    shares.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=REPEATS)
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    parser.add_argument("--big-threshold", type=float, default=BIG_THRESHOLD)
    args = parser.parse_args(argv)
    report = run_sweep(
        big_threshold=args.big_threshold, batch_size=args.batch_size, repeats=args.repeats
    )
    table = markdown(report)
    print(table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "cascade.md").write_text(table)
    (RESULTS / "cascade.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(report, RESULTS / "cascade.png")


if __name__ == "__main__":
    main()
