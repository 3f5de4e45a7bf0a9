"""A request's receipt: where the time went, what ran, why, what it cost and how much
energy it took, in plain fields.

Two steps, so the cost lands where it can be afforded:
- `record_of(ctx, prices)` on the writer's thread for every request: the context's facts
  and each run's price, as a compact dict (what is stored, as JSON). Cheap: no
  formatting, no rounding, one small dict.
- `render(record)` when someone reads a receipt (the admin API, the CLI, the dashboard,
  the inline header): the plain fields, stage durations, totals and the "why" sentence.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from surge.config_observe import CostConfig
from surge.core.context import RequestContext, legs
from surge.store.receipts import columns

FREE = CostConfig()


def record_of(ctx: RequestContext, prices: dict[str, CostConfig]) -> dict[str, Any]:
    """The stored form of a finished request. Each run is priced here, at the prices in
    force when it ran, so a later price change never rewrites an old receipt."""
    runs = list(ctx.runs)  # a copy: a shadow run may still be appended meanwhile
    currency = None
    for run in runs:
        if "cost" not in run:
            price = prices.get(run["endpoint"], FREE)
            run["cost"] = run["compute_s"] * price.per_compute_second + run["rows"] * price.per_item
            run["currency"] = price.currency
        currency = currency or run["currency"]
    cache = ctx.cache
    if cache is not None and "saved_cost" not in cache and "endpoint" in cache:
        # What the reused rows would have cost, at the endpoint's prices now.
        price = prices.get(cache["endpoint"], FREE)
        saved_rows = cache["hit_rows"] if not cache["coalesced"] else cache["rows"]
        cache = {**cache, "saved_cost": cache["saved_compute_s"] * price.per_compute_second
                 + saved_rows * price.per_item}  # fmt: skip
    return {
        "id": ctx.request_id,
        "endpoint": ctx.endpoint,
        "tenant": ctx.tenant,
        "status": ctx.status,
        "error": ctx.error,
        "wall": ctx.wall_time,
        "received": ctx.received,
        "stamps": ctx.stamps,
        "runs": runs,
        "decisions": ctx.decisions,
        "degraded": ctx.degraded,
        "needs_review": ctx.needs_review,
        "cache_hit": ctx.cache_hit,
        "cache": cache,
        "currency": currency or FREE.currency,
    }


def stage_ms(stamps: dict[str, float], received: float) -> dict[str, float]:
    return {name: round((end - start) * 1000, 3) for name, start, end in legs(stamps, received)}


def render(record: dict[str, Any]) -> dict[str, Any]:
    """The receipt as people read it."""
    totals = columns(record)
    runs = [
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
            "cost": run["cost"],
            **{k: run[k] for k in LLM_RUN_FIELDS if k in run},
        }
        for run in record["runs"]
    ]
    live = [r for r in runs if r["role"] == "live"]
    final = live[-1] if live else None
    sources = sorted({r["energy_source"] for r in record["runs"] if r["energy_source"]})
    return {
        "id": record["id"],
        "time": datetime.fromtimestamp(record["wall"], UTC).isoformat(timespec="milliseconds"),
        "time_epoch": record["wall"],
        "endpoint": record["endpoint"],
        "tenant": record["tenant"],
        "status": record["status"],
        "error": record["error"],
        "served_by": totals["served_by"],
        "models": [f"{r['model']} ({r['role']})" for r in runs],
        "total_ms": round(totals["total_ms"], 3),
        "stages_ms": stage_ms(record["stamps"], record["received"]),
        "queue_ms": round(sum(r["queue_ms"] for r in live), 3),
        "batch_rows": final["batch_rows"] if final else None,
        "compute_ms": round(sum(r["compute_ms"] for r in live), 4),
        "runs": runs,
        "decisions": record["decisions"],
        "why": explain(record, totals["served_by"], totals["escalated"]),
        "escalated": totals["escalated"],
        "degraded": record["degraded"],
        "needs_review": record["needs_review"],
        "cache_hit": record["cache_hit"],
        "cache": record.get("cache"),
        "tokens": _tokens(record["runs"]),
        "cost": {
            "total": totals["cost"],
            "currency": record["currency"],
            "compute_s": totals["compute_s"],
        },
        "energy": {
            "joules": totals["energy_j"],
            "cpu_s": sum(r["cpu_s"] for r in record["runs"]),
            "source": "+".join(sources) or None,
        },
    }


# What a language model's run adds to a receipt: tokens (and how they were counted),
# time to first token, time per output token, how the answer ended.
LLM_RUN_FIELDS = ("prompt_tokens", "completion_tokens", "usage_source", "ttft_ms", "tpot_ms",
                  "finish_reason")  # fmt: skip


def _tokens(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The request's tokens over its language-model runs (None for other models)."""
    llm = [r for r in runs if "prompt_tokens" in r]
    if not llm:
        return None
    return {
        "prompt": sum(r["prompt_tokens"] for r in llm),
        "completion": sum(r["completion_tokens"] for r in llm),
        "counted_by": sorted({r["usage_source"] for r in llm}),
    }


def build_receipt(ctx: RequestContext, prices: dict[str, CostConfig]) -> dict[str, Any]:
    return render(record_of(ctx, prices))


def explain(record: dict[str, Any], served_by: str | None, escalated: bool) -> str:
    """One sentence per decision, in order, then the outcome: the receipt's plain answer
    to "why did this request go where it went"."""
    parts = [f"{d['policy']}: {d['reason']} -> {d['choice']}" for d in record["decisions"]]
    if record["status"] != 200:
        parts.append(f"answered {record['status']} ({record['error'] or 'error'})")
    elif served_by is not None:
        flags = [f for f, on in (("escalated", escalated), ("degraded", record["degraded"])) if on]
        parts.append(f"answered by {served_by}" + (f" ({', '.join(flags)})" if flags else ""))
    return "; ".join(parts)
