"""How fast each bandit strategy finds the best arm: three arms of known quality
(Bernoulli rewards, p = 0.55, 0.70, 0.85), 2,000 requests, averaged over 20 seeds.

    .venv/bin/python -m benchmarks.bandit_sim [--seeds 20] [--requests 2000]

Prints a markdown table and writes benchmarks/results/bandit.md and bandit.json.
Pure Python, a few seconds. Regret is the expected reward lost against always
sending to the best arm: the sum over requests of (p_best - p_chosen), which does
not depend on the luck of the reward draws.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from surge.routing.bandit import make_bandit

ARMS_P = (0.55, 0.70, 0.85)
REQUESTS = 2000
SEEDS = 20
KINDS = ("thompson", "epsilon_greedy", "uniform")
RESULTS = Path(__file__).parent / "results"


def simulate(
    kind: str,
    arms_p: Sequence[float] = ARMS_P,
    requests: int = REQUESTS,
    seed: int = 0,
    *,
    tail: int | None = None,
    **options: Any,
) -> dict[str, Any]:
    """One run of `requests` choose/reward rounds; `tail` (default: the last half) is
    the stretch over which the share sent to the best arm shows what was learned."""
    if requests < 1:
        raise ValueError("requests must be at least 1")
    tail = requests // 2 if tail is None else tail
    if not 0 < tail <= requests:
        raise ValueError(f"tail must lie in (0, {requests}], got {tail}")
    p = {f"p{q:g}": q for q in arms_p}
    best = max(p, key=p.__getitem__)
    bandit = make_bandit(kind, list(p), random.Random(seed), **options)
    # Its own stream, one draw per request shared by all arms (common random numbers):
    # every strategy meets the same luck, so their differences are their own.
    env = random.Random(f"bandit-sim-environment-{seed}")
    picks = dict.fromkeys(p, 0)
    tail_best = 0
    regret = 0.0
    for i in range(requests):
        arm = bandit.choose()
        u = env.random()
        bandit.reward(arm, 1.0 if u < p[arm] else 0.0)
        picks[arm] += 1
        regret += p[best] - p[arm]
        if i >= requests - tail and arm == best:
            tail_best += 1
    return {
        "kind": kind,
        "seed": seed,
        "requests": requests,
        "tail": tail,
        "best_arm": best,
        "picks": picks,
        "best_share": picks[best] / requests,
        "best_share_tail": tail_best / tail,
        "regret": regret,
    }


def summarize(runs: list[dict[str, Any]]) -> dict[str, float]:
    tail = [r["best_share_tail"] for r in runs]
    share = [r["best_share"] for r in runs]
    regret = [r["regret"] for r in runs]
    return {
        "best_share_tail_mean": statistics.fmean(tail),
        "best_share_tail_min": min(tail),
        "best_share_mean": statistics.fmean(share),
        "best_share_min": min(share),
        "regret_mean": statistics.fmean(regret),
        "regret_max": max(regret),
    }


def markdown(summary: dict[str, dict[str, float]], arms_p: Sequence[float], requests: int,
             seeds: int) -> str:  # fmt: skip
    tail = requests // 2
    uniform = summary["uniform"]["regret_mean"]
    lines = [
        f"# Bandit simulation: arms p = {', '.join(f'{q:g}' for q in arms_p)}, "
        f"{requests:,} requests, {seeds} seeds",
        "",
        f"| policy | best arm, last {tail:,} (mean / min) | best arm, all {requests:,} "
        "(mean / min) | regret (mean / max) | regret / uniform |",
        "|---|---|---|---|---|",
    ]
    for kind, s in summary.items():
        lines.append(
            f"| {kind} | {s['best_share_tail_mean']:.1%} / {s['best_share_tail_min']:.1%} "
            f"| {s['best_share_mean']:.1%} / {s['best_share_min']:.1%} "
            f"| {s['regret_mean']:.1f} / {s['regret_max']:.1f} "
            f"| {s['regret_mean'] / uniform:.2f} |"
        )
    expected_uniform = requests * (max(arms_p) - statistics.fmean(arms_p))
    lines += [
        "",
        "Regret: expected reward lost against always choosing the best arm, "
        "sum of (p_best - p_chosen). "
        f"Uniform's expected regret is {expected_uniform:.1f}. "
        "epsilon_greedy uses epsilon = 0.1; thompson a Beta(1, 1) prior.",
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=SEEDS)
    parser.add_argument("--requests", type=int, default=REQUESTS)
    args = parser.parse_args(argv)
    runs = {
        kind: [simulate(kind, ARMS_P, args.requests, seed) for seed in range(args.seeds)]
        for kind in KINDS
    }
    summary = {kind: summarize(kind_runs) for kind, kind_runs in runs.items()}
    table = markdown(summary, ARMS_P, args.requests, args.seeds)
    print(table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bandit.md").write_text(table)
    report = {
        "arms_p": list(ARMS_P),
        "requests": args.requests,
        "seeds": args.seeds,
        "summary": summary,
        "runs": runs,
    }
    (RESULTS / "bandit.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
