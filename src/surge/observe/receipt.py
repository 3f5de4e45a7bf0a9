"""A request's receipt, built from its context: where the time went, what ran, why, what it
cost and how much energy it took, in plain fields.

Pure: `build_receipt` reads a finished context and the price list and returns a JSON-able
dict. The receipt writer calls it on its own thread, off the request path.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from surge.config_observe import CostConfig
from surge.core.context import RequestContext

# Stage legs in relay order: (stamp that ends the leg, the leg's name).
LEGS = (
    ("validated", "validate"),
    ("admitted", "admit"),
    ("batched", "queue"),
    ("compute_start", "batch"),
    ("compute_end", "compute"),
    ("responded", "respond"),
)
FREE = CostConfig()


def stage_ms(ctx: RequestContext) -> dict[str, float]:
    out: dict[str, float] = {}
    prev = ctx.received
    for stage, name in LEGS:
        t = ctx.stamps.get(stage)
        if t is not None:
            out[name] = round((t - prev) * 1000, 3)
            prev = t
    return out


def run_cost(run: dict[str, Any], price: CostConfig) -> float:
    return run["compute_s"] * price.per_compute_second + run["rows"] * price.per_item


def build_receipt(ctx: RequestContext, prices: dict[str, CostConfig]) -> dict[str, Any]:
    runs = []
    currency = None
    total_cost = compute_s = cpu_s = joules = 0.0
    sources: set[str] = set()
    for run in list(ctx.runs):  # a copy: a shadow run may still be appended meanwhile
        price = prices.get(run["endpoint"], FREE)
        currency = currency or price.currency
        cost = run_cost(run, price)
        total_cost += cost
        compute_s += run["compute_s"]
        cpu_s += run["cpu_s"]
        joules += run["energy_j"]
        if run["energy_source"]:
            sources.add(run["energy_source"])
        runs.append(
            {
                "model": run["model"],
                "endpoint": run["endpoint"],
                "role": run["role"],
                "rows": run["rows"],
                "batch_rows": run["batch_rows"],
                "share_of_batch": round(run["rows"] / run["batch_rows"], 4),
                "compute_ms": round(run["compute_s"] * 1000, 4),
                "queue_ms": round(run["queue_s"] * 1000, 3),
                "cpu_ms": round(run["cpu_s"] * 1000, 4),
                "energy_j": run["energy_j"],
                "cost": cost,
            }
        )
    live = [r for r in runs if r["role"] == "live"]
    final = live[-1] if live else None
    escalated = any(d.get("action") == "escalate" for d in ctx.decisions)
    responded = ctx.stamps.get("responded")
    total_ms = (responded - ctx.received) * 1000 if responded is not None else 0.0
    return {
        "id": ctx.request_id,
        "time": datetime.fromtimestamp(ctx.wall_time, UTC).isoformat(timespec="milliseconds"),
        "time_epoch": ctx.wall_time,
        "endpoint": ctx.endpoint,
        "tenant": ctx.tenant,
        "status": ctx.status,
        "error": ctx.error,
        "served_by": final["model"] if final and ctx.status == 200 else None,
        "models": [f"{r['model']} ({r['role']})" for r in runs],
        "total_ms": round(total_ms, 3),
        "stages_ms": stage_ms(ctx),
        "queue_ms": round(sum(r["queue_ms"] for r in live), 3),
        "batch_rows": final["batch_rows"] if final else None,
        "compute_ms": round(sum(r["compute_ms"] for r in live), 4),
        "runs": runs,
        "decisions": ctx.decisions,
        "why": explain(ctx, final["model"] if final else None, escalated),
        "escalated": escalated,
        "degraded": ctx.degraded,
        "needs_review": ctx.needs_review,
        "cache_hit": ctx.cache_hit,
        "cost": {
            "total": total_cost,
            "currency": currency or FREE.currency,
            "compute_s": compute_s,
        },
        "energy": {"joules": joules, "cpu_s": cpu_s, "source": "+".join(sorted(sources)) or None},
    }


def explain(ctx: RequestContext, final: str | None, escalated: bool) -> str:
    """One sentence per decision, in order, then the outcome: the receipt's plain answer
    to "why did this request go where it went"."""
    parts = [f"{d['policy']}: {d['reason']} -> {d['choice']}" for d in ctx.decisions]
    if ctx.status != 200:
        parts.append(f"answered {ctx.status} ({ctx.error or 'error'})")
    elif final is not None:
        flags = [f for f, on in (("escalated", escalated), ("degraded", ctx.degraded)) if on]
        parts.append(f"answered by {final}" + (f" ({', '.join(flags)})" if flags else ""))
    return "; ".join(parts)
