"""Autoscaling on a trace: the real policy (surge.routing.autoscale) on a fake clock,
driving a simulated deployment, against static provisioning for the peak.

    .venv/bin/python -m benchmarks.autoscale_trace [--seed 1]

Writes benchmarks/results/autoscale.md, autoscale.json and autoscale.png; about 40 s
of CPU. The simulated deployment is surge's: one FIFO queue per endpoint, batches of up
to `max_batch_size` rows taken by whichever replica frees first, a batch of n rows
costing `fixed + per_row * n` (fitted to the demo embed model's measured batch
latency), rows whose deadline passes in the queue dropped (a 504 in surge), one row per
request, Poisson arrivals. A new replica serves `COLD_START_S` after it is asked for
and costs replica-seconds from that moment; a removed one finishes its batch. The
autoscaler observes (rows in flight averaged over the interval, the oldest queued
row's wait) and decides every `evaluate_interval_s` on the same clock.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import json
import math
import re
from bisect import bisect_left, bisect_right
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from surge.routing.autoscale import AutoscalePolicy, Autoscaler, Signals

RESULTS = Path(__file__).parent / "results"
DEADLINE_S = 1.0
SLO_TARGET = 0.99
COST_TARGET = 0.50
COLD_START_S = 5.0  # load + warm-up of one replica (the demo's embed model: ~2-4 s)
MAX_BATCH = 32  # the config's default max_batch_size
PEAK_ROWS_PER_S = 3000.0
# The policy under test: the product defaults, with a ceiling a user would set.
POLICY = replace(AutoscalePolicy(), max_replicas=32)
ASSUMED_FIXED_S, ASSUMED_PER_ROW_S = 0.003, 0.0022  # when serving_core.md has no figures


def batch_latency_model() -> tuple[float, float, str]:
    """(fixed s, per-row s, where they came from): a least-squares line through the
    measured p50 batch latencies of surge's EmbeddingsRuntime at batch 8/16/32/64."""
    source = RESULTS / "serving_core.md"
    pattern = re.compile(r"surge runtime, batch (\d+) \|.*?batch p50 ([\d.]+) ms")
    points = pattern.findall(source.read_text()) if source.exists() else []
    if len(points) < 2:
        note = "assumed (no measured batch latency found in serving_core.md)"
        return ASSUMED_FIXED_S, ASSUMED_PER_ROW_S, note
    rows, ms = np.array(points, dtype=float).T
    per_row, fixed = np.polyfit(rows, ms / 1000, 1)
    shown = ", ".join(f"{r} rows {t} ms" for r, t in points)
    return float(fixed), float(per_row), f"fitted to serving_core.md batch p50s ({shown})"


# -- traces: rows per second, one value per second -----------------------------------------


def launch_spike(seconds: int = 3600) -> np.ndarray:
    """10 minutes at a tenth of the peak, then 10x in one step (a launch), held 10
    minutes, falling back to the base with a 5-minute time constant."""
    t = np.arange(seconds, dtype=float)
    base = PEAK_ROWS_PER_S / 10
    after = np.clip(t - 1200, 0, None)
    extra = np.where(t < 600, 0.0, 9 * base * np.exp(-after / 300))
    return base + extra


def diurnal_day(seconds: int = 7200) -> np.ndarray:
    """A business day compressed 12x (1 s = 12 s): 10 % of the peak at 03:00, the peak
    at 15:00, a raised cosine squared between. Its mean is 44 % of its peak: no
    autoscaler can spend less than that share of static peak provisioning."""
    hours = np.arange(seconds, dtype=float) * 24 / seconds
    bump = ((1 - np.cos(2 * np.pi * (hours - 3) / 24)) / 2) ** 2
    return PEAK_ROWS_PER_S * (0.1 + 0.9 * bump)


def poisson_arrivals(rates: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    counts = rng.poisson(rates)
    starts = np.repeat(np.arange(len(rates), dtype=float), counts)
    return np.sort(starts + rng.random(len(starts)))


# -- the simulated deployment --------------------------------------------------------------


@dataclass
class Replica:
    asked_at: float
    ready_at: float
    busy_until: float = 0.0
    batch_rows: int = 0
    removed_at: float | None = None


@dataclass
class Run:
    done: np.ndarray  # completion time per row; inf: dropped at its deadline
    seconds: np.ndarray  # the tick times
    paid: list[int] = field(default_factory=list)  # replicas paid for at each tick
    ready: list[int] = field(default_factory=list)
    replica_seconds: float = 0.0
    decisions: list[dict[str, Any]] = field(default_factory=list)


def mean_in_flight(arrivals: np.ndarray, done: np.ndarray, since: float, until: float) -> float:
    """Rows queued or running, averaged over [since, until): each row counts from its
    arrival to its answer, or to its deadline when it was dropped or is still queued."""
    lo = np.searchsorted(arrivals, since - 2 * DEADLINE_S)
    hi = np.searchsorted(arrivals, until)
    arrived = arrivals[lo:hi]
    left = np.minimum(done[lo:hi], arrived + DEADLINE_S)
    # A row in a batch that started before its deadline is in flight until its answer.
    left = np.where(np.isfinite(done[lo:hi]), done[lo:hi], left)
    overlap = np.minimum(left, until) - np.maximum(arrived, since)
    return float(np.clip(overlap, 0, None).sum() / (until - since))


# fmt: off
def simulate(arrivals: np.ndarray, fixed_s: float, per_row_s: float, *,
             static: int | None = None, policy: AutoscalePolicy = POLICY) -> Run:
    # fmt: on
    """Static provisioning when `static` is a count, else the autoscaler under `policy`."""
    arr = arrivals.tolist()
    n = len(arr)
    done = np.full(n, np.inf)
    end = math.ceil(arr[-1]) + 2 if n else 1
    interval = policy.evaluate_interval_s
    ticks = np.arange(interval, end + interval / 2, interval)
    run = Run(done, ticks)
    replicas: list[Replica] = []
    free: list[tuple[float, int]] = []  # (when the replica can take its next batch, id)

    def add(at: float, warm: bool) -> None:
        replicas.append(Replica(at, at if warm else at + COLD_START_S))
        heapq.heappush(free, (replicas[-1].ready_at, len(replicas) - 1))

    for _ in range(static or policy.min_replicas):
        add(0.0, warm=True)
    scaler = None if static else Autoscaler(policy, now=0.0)
    head = 0  # first row not yet taken or dropped
    for tick in ticks.tolist():
        # Every batch that starts before the tick, in the order replicas free up.
        while free and free[0][0] < tick and head < n:
            t_free, rid = heapq.heappop(free)
            rep = replicas[rid]
            if rep.removed_at is not None:
                continue
            head = bisect_left(arr, t_free - DEADLINE_S, head)  # expired in the queue
            if head >= n:
                heapq.heappush(free, (t_free, rid))
                break
            start = max(t_free, arr[head])
            if start >= tick:
                heapq.heappush(free, (start, rid))  # idle until the next arrival
                continue
            rows = min(MAX_BATCH, bisect_right(arr, start, head) - head)
            rep.busy_until = start + fixed_s + per_row_s * rows
            rep.batch_rows = rows
            done[head : head + rows] = rep.busy_until
            head += rows
            heapq.heappush(free, (rep.busy_until, rid))
        live = [r for r in replicas if r.removed_at is None]
        run.paid.append(len(live))
        run.ready.append(sum(r.ready_at <= tick for r in live))
        if scaler is None:
            continue
        oldest = max(head, bisect_left(arr, tick - DEADLINE_S, head))
        queued = bisect_right(arr, tick, oldest) - oldest
        signals = Signals(
            in_flight_rows=mean_in_flight(arrivals, done, tick - interval, tick),
            queue_wait_s=tick - arr[oldest] if queued else 0.0,
            ready=run.ready[-1],
            pending=len(live) - run.ready[-1],
            replica_rows_per_s=MAX_BATCH / (fixed_s + per_row_s * MAX_BATCH),
        )
        scaler.observe(tick, signals)
        decision = scaler.decide(tick)
        if decision.action == "hold":
            continue
        run.decisions.append(asdict(decision))
        for _ in range(decision.desired - len(live)):
            add(tick, warm=False)
        # Fewer: cancel replicas still starting, then idle ones, then the soonest free.
        surplus = max(len(live) - decision.desired, 0)
        for rep in sorted(live, key=lambda r: (r.ready_at <= tick, r.busy_until))[:surplus]:
            rep.removed_at = max(tick, rep.busy_until) if rep.ready_at <= tick else tick
    run.replica_seconds = sum(
        (r.removed_at if r.removed_at is not None else end) - r.asked_at for r in replicas
    )
    return run


# -- figures --------------------------------------------------------------------------------


def attainment(arrivals: np.ndarray, run: Run) -> float:
    return float(np.mean(run.done - arrivals <= DEADLINE_S))


def p99_series(arrivals: np.ndarray, run: Run, bucket_s: float = 10.0) -> tuple[list, list]:
    """p99 latency of the rows arriving in each bucket; None where over 1 % were dropped."""
    latency = run.done - arrivals
    edges = np.searchsorted(arrivals, np.arange(0, arrivals[-1] + bucket_s, bucket_s))
    times, p99 = [], []
    for k, (lo, hi) in enumerate(itertools.pairwise(edges)):
        if hi > lo:
            value = float(np.quantile(latency[lo:hi], 0.99, method="higher"))
            times.append((k + 0.5) * bucket_s)
            p99.append(value if math.isfinite(value) else None)
    return times, p99


def fewest_static(arrivals: np.ndarray, fixed_s: float, per_row_s: float, start: int) -> tuple:
    """The fewest always-on replicas that meet the SLO over the trace, and their run."""
    for count in itertools.count(start):
        run = simulate(arrivals, fixed_s, per_row_s, static=count)
        if attainment(arrivals, run) >= SLO_TARGET:
            return count, run
    raise AssertionError("unreachable")


def static_at_target(rate: float, fixed_s: float, per_row_s: float, start: int) -> int:
    """The replicas the policy's own target asks for at a steady `rate`: the fewest whose
    rows in flight per replica, measured over 100 s, stay within the target."""
    arrivals = poisson_arrivals(np.full(120, rate), np.random.default_rng(0))
    for count in itertools.count(start):
        done = simulate(arrivals, fixed_s, per_row_s, static=count).done
        if (
            mean_in_flight(arrivals, done, 20.0, 120.0) / count
            <= POLICY.target_in_flight_rows_per_replica
        ):
            return count
    raise AssertionError("unreachable")


def direction_changes(paid: list[int]) -> int:
    steps = [b - a for a, b in itertools.pairwise(paid) if b != a]
    return sum(1 for a, b in itertools.pairwise(steps) if (a > 0) != (b > 0))


def evaluate(name: str, rates: np.ndarray, fixed_s: float, per_row_s: float, seed: int) -> dict:
    arrivals = poisson_arrivals(rates, np.random.default_rng(seed))
    auto = simulate(arrivals, fixed_s, per_row_s)
    most_per_replica = MAX_BATCH / (fixed_s + per_row_s * MAX_BATCH)
    lowest = math.ceil(rates.max() / most_per_replica)  # fewer cannot keep up at the peak
    fewest, static = fewest_static(arrivals, fixed_s, per_row_s, lowest)
    at_target = static_at_target(float(rates.max()), fixed_s, per_row_s, fewest)
    duration = len(auto.seconds) * POLICY.evaluate_interval_s
    slo = attainment(arrivals, auto)
    ratios = {
        "fewest": auto.replica_seconds / static.replica_seconds,
        "at_target": auto.replica_seconds / (at_target * duration),
    }
    # An oracle that knows each second's rate, starts replicas at once and runs them as
    # hot as the fewest static fleet does at the peak: a floor for any autoscaler.
    oracle = np.ceil(rates / (rates.max() / fewest)).sum() / (fewest * len(rates))
    # fmt: off
    return {
        "trace": name, "requests": len(arrivals),
        "mean_over_peak_rate": float(rates.mean() / rates.max()),
        "autoscaled": {"slo_attainment": slo, "replica_seconds": auto.replica_seconds,
                       "most_replicas": max(auto.paid),
                       "direction_changes": direction_changes(auto.paid)},
        "static_fewest": {"replicas": fewest, "slo_attainment": attainment(arrivals, static),
                          "busy_at_peak": float(rates.max() / (fewest * most_per_replica)),
                          "replica_seconds": static.replica_seconds},
        "static_at_target": {"replicas": at_target, "replica_seconds": at_target * duration},
        "replica_seconds_ratio": ratios,
        "oracle_ratio_vs_fewest": float(oracle),
        "met": {k: slo >= SLO_TARGET and v <= COST_TARGET for k, v in ratios.items()},
        "series": {"t": auto.seconds.tolist(), "replicas": auto.paid, "ready": auto.ready,
                   "rate": rates.tolist(), "p99": p99_series(arrivals, auto)},
        "decision_log": auto.decisions,
    }
    # fmt: on


def markdown(results: list[dict], fixed_s: float, per_row_s: float, note: str) -> str:
    def verdict(r: dict, key: str) -> str:
        return "met" if r["met"][key] else "**not met**"

    lines = [
        "# Autoscaling on a trace",
        "",
        "`python -m benchmarks.autoscale_trace`: the autoscaler's own code "
        "(surge.routing.autoscale) on a fake clock, driving a simulated deployment.",
        "",
        "| trace | requests | SLO attainment (≤ 1 s) | replica-s / fewest static | "
        "replica-s / static at the target | oracle / fewest static | most replicas | "
        "direction changes |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        a, ratio = r["autoscaled"], r["replica_seconds_ratio"]
        fewest, at_target = r["static_fewest"], r["static_at_target"]
        lines.append(
            f"| {r['trace']} | {r['requests']:,} | {a['slo_attainment']:.2%} | "
            f"{ratio['fewest']:.1%} ({fewest['replicas']} replicas, "
            f"{fewest['slo_attainment']:.2%} in time): {verdict(r, 'fewest')} | "
            f"{ratio['at_target']:.1%} ({at_target['replicas']} replicas): "
            f"{verdict(r, 'at_target')} | {r['oracle_ratio_vs_fewest']:.1%} | "
            f"{a['most_replicas']} | {a['direction_changes']} |"
        )
    knobs = ", ".join(f"{k} {v}" for k, v in asdict(POLICY).items())
    busy = max(r["static_fewest"]["busy_at_peak"] for r in results)
    extra = max(r["static_at_target"]["replicas"] - r["static_fewest"]["replicas"] for r in results)
    lines += [
        "",
        f"Target: ≥ {SLO_TARGET:.0%} of requests within the deadline at ≤ {COST_TARGET:.0%} "
        "of the replica-seconds of static provisioning for the peak. Two static fleets: "
        "the **fewest** always-on replicas that meet the same SLO over the trace (at the "
        f"peak they run at {busy:.0%} of their full-batch throughput, no margin for a rate "
        "above it), and the count the policy's own per-replica target asks for at the peak "
        "(**at the target**: the headroom the autoscaler keeps).",
        "",
        "The autoscaler keeps replicas below the knee of the queueing curve "
        f"({POLICY.target_in_flight_rows_per_replica:g} rows in flight each): near it the "
        "rows in flight jump with small changes of load and the count would flap. That "
        f"headroom costs {extra} replica{'s' * (extra != 1)} more than the fewest static fleet "
        "at the peak. The "
        "oracle: ceil(rate / what one replica of the fewest static fleet serves at the "
        "peak), changed every second with no start time, what even a perfect autoscaler "
        "running as hot as that fleet would spend; a trace whose mean is near half its "
        "peak cannot reach 50 % of that fleet.",
        "",
        f"- Batch latency: {fixed_s * 1000:.2f} ms + {per_row_s * 1000:.3f} ms per row, "
        f"{note}; batches of up to {MAX_BATCH} rows, one row per request.",
        f"- Deadline {DEADLINE_S:g} s per request (a row still queued at its deadline is "
        f"dropped: a miss); cold start {COLD_START_S:g} s per new replica, paid from the "
        "moment it is asked for.",
        f"- Policy: the defaults of AutoscalePolicy with max_replicas 32 ({knobs}).",
        f"- Traces (1 s resolution, Poisson arrivals, peak {PEAK_ROWS_PER_S:g} rows/s): "
        + "; ".join(f"{r['trace']}: mean {r['mean_over_peak_rate']:.0%} of peak" for r in results)
        + ".",
        "- Direction changes: how often the replica count turned from rising to falling or back.",
        "",
    ]
    return "\n".join(lines)


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display; before pyplot is imported
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results), 1, figsize=(11, 4 * len(results)))
    for ax, r in zip(np.atleast_1d(axes), results, strict=True):
        s = r["series"]
        minutes = np.array(s["t"]) / 60
        ax.step(minutes, s["replicas"], where="post", label="replicas (paid)", color="C0")
        ax.step(minutes, s["ready"], where="post", label="replicas ready", color="C0", alpha=0.4)
        ax.axhline(r["static_fewest"]["replicas"], color="C0", linestyle=":", label="fewest static")
        ax.set(ylabel="replicas", xlabel="minutes")
        load = ax.twinx()
        load.plot(np.arange(len(s["rate"])) / 60, s["rate"], color="C1", label="load (rows/s)")
        load.set_ylabel("rows/s", color="C1")
        lat = ax.twinx()
        lat.spines["right"].set_position(("axes", 1.08))
        times, p99 = s["p99"]
        p99 = [2.0 if v is None else min(v, 2.0) for v in p99]  # None: over 1 % dropped
        lat.plot(np.array(times) / 60, p99, color="C3", label="p99 (s, per 10 s)")
        lat.axhline(DEADLINE_S, color="C3", linestyle=":", linewidth=0.8)
        lat.set_ylabel("p99 s (capped at 2)", color="C3")
        ax.set_title(
            f"{r['trace']}: {r['autoscaled']['slo_attainment']:.2%} within {DEADLINE_S:g} s, "
            f"{r['replica_seconds_ratio']['fewest']:.0%} of the fewest static's replica-seconds"
        )
        handles = [h for axis in (ax, load, lat) for h in axis.get_legend_handles_labels()[0]]
        ax.legend(handles=handles, loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    fixed_s, per_row_s, note = batch_latency_model()
    traces = {"10x launch spike": launch_spike(), "diurnal day (12x compressed)": diurnal_day()}
    results = [evaluate(k, v, fixed_s, per_row_s, args.seed) for k, v in traces.items()]
    print(table := markdown(results, fixed_s, per_row_s, note))
    (RESULTS / "autoscale.md").write_text(table)
    latency = {"fixed_s": fixed_s, "per_row_s": per_row_s, "source": note}
    report = dict(latency_model=latency, deadline_s=DEADLINE_S, cold_start_s=COLD_START_S,
                  policy=asdict(POLICY), results=results)  # fmt: skip
    (RESULTS / "autoscale.json").write_text(json.dumps(report) + "\n")
    plot(results, RESULTS / "autoscale.png")


if __name__ == "__main__":
    main()
