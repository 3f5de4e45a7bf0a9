"""What the observability layer asks of a deployment: hooks around each batch.

A deployment built without a watch (receipts, energy and drift all off) does none of
this work; one built with it measures energy on the replica thread, summarises the
batch for drift there too (never on the event loop), and records one run per request
on its context for the receipt.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from surge.core.context import RequestContext
from surge.core.tensors import Tensors
from surge.observe.energy import BatchEnergy, EnergyMeter
from surge.runtimes.base import RuntimeSettings


@dataclass(frozen=True)
class BatchWatch:
    # A replica's settings (its cores, its device) -> a meter for that replica (one per
    # replica: it is used on its thread).
    meter: Callable[[RuntimeSettings], EnergyMeter] | None = None
    # On the replica thread after each batch: per-row drift signals of inputs and outputs.
    summarize: Callable[[Tensors, Tensors], Any] | None = None
    # On the event loop with what `summarize` returned.
    observe: Callable[[Any], None] | None = None
    record_runs: bool = True  # append a run per request to its context (receipts)
    # When the deployment stops for good (retired after a swap or rollback, or shutdown).
    retire: Callable[[], None] | None = None


def record_runs(
    contexts: list[RequestContext],
    *,
    model: str,
    endpoint: str,
    version: str,
    busy_s: float,
    energy: BatchEnergy | None,
) -> None:
    """Each request's share of a batch, by rows, appended to its context for the receipt:
    the replica time it occupied (what cost is attributed by), its CPU time and energy,
    and how long it queued."""
    rows = sum(ctx.rows for ctx in contexts)
    for ctx in contexts:
        share = ctx.rows / rows
        ctx.runs.append(
            {
                "model": model,
                "endpoint": endpoint,
                "version": version,
                "role": ctx.role,
                "rows": ctx.rows,
                "batch_rows": rows,
                "compute_s": busy_s * share,
                "queue_s": ctx.stamps["batched"] - ctx.stamps["admitted"],
                "cpu_s": energy.cpu_s * share if energy else 0.0,
                "energy_j": energy.joules * share if energy else 0.0,
                "energy_source": energy.source if energy else None,
            }
        )
