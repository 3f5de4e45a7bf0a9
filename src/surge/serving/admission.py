"""Admission: take a request into the queue, or refuse it at once with a reason (sans-IO).

A refused request is cheaper for everyone than one that waits and fails:
- the deployment is loading or draining: 503, retry after the expected wait;
- the queue is full: 429, retry after the time the queue needs to drain at the
  measured rate;
- the deadline cannot be met given the work queued ahead and the measured
  batch latency: 504 at once instead of after the wait.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from surge.core.errors import SurgeError
from surge.serving.latency import BatchLatencyModel


@dataclass(frozen=True)
class QueueState:
    queued_requests: int
    queued_rows: int
    busy_replicas: int
    replicas: int


@dataclass(frozen=True)
class AdmissionPolicy:
    max_queue: int
    max_batch_size: int
    max_queue_delay_s: float
    not_ready_retry_after_s: float = 1.0


def completion_estimate_s(
    rows: int,
    state: QueueState,
    latency: BatchLatencyModel,
    policy: AdmissionPolicy,
    now: float | None = None,
) -> float:
    """Expected seconds from `now` until a new request of `rows` rows has its answer.

    With nothing queued or running, the request's batch runs alone at once: it is
    estimated as a batch on an idle deployment (`idle_estimate_s`), so contention a
    past burst measured does not refuse it for ever. Without `now`, and whenever work
    is queued or running, the batches ahead cost what the last batches measured."""
    batch = policy.max_batch_size
    idle = state.queued_requests == 0 and state.busy_replicas == 0
    if now is not None and idle and rows <= batch:
        estimate = latency.idle_estimate_s(rows, now)
        return estimate + (policy.max_queue_delay_s if rows < batch else 0.0)
    total_rows = state.queued_rows + rows
    batches = math.ceil(total_rows / batch)
    waves = math.ceil(batches / state.replicas)
    estimate = (waves - 1) * latency.estimate_s(batch) + latency.estimate_s(min(total_rows, batch))
    if state.busy_replicas >= state.replicas:
        # On average the batches running now are half done.
        estimate += 0.5 * latency.estimate_s(batch)
    if total_rows < batch:
        estimate += policy.max_queue_delay_s
    return estimate


def retry_after_s(state: QueueState, latency: BatchLatencyModel, policy: AdmissionPolicy) -> float:
    """Seconds until the queue has drained at the measured rate (at least 1 s)."""
    rate = latency.drain_rate(policy.max_batch_size, state.replicas)
    return max(1.0, math.ceil(state.queued_rows / rate)) if math.isfinite(rate) else 1.0


def admit(
    *,
    now: float,
    deadline: float,
    rows: int,
    state: QueueState,
    latency: BatchLatencyModel,
    policy: AdmissionPolicy,
    accepting: bool,
    endpoint: str,
) -> None:
    """Return if the request may queue; raise the refusal otherwise."""
    if not accepting:
        raise SurgeError(
            "not_ready",
            f"endpoint {endpoint!r} is not ready (loading or draining); retry shortly",
            503,
            policy.not_ready_retry_after_s,
        )
    if state.queued_requests >= policy.max_queue:
        wait = retry_after_s(state, latency, policy)
        raise SurgeError(
            "queue_full",
            f"endpoint {endpoint!r} queue is full ({state.queued_requests} requests); "
            f"retry after {wait:.0f} s",
            429,
            wait,
        )
    estimate = completion_estimate_s(rows, state, latency, policy, now)
    if now + estimate > deadline:
        raise SurgeError(
            "deadline_infeasible",
            f"cannot finish within the deadline: {max(0.0, deadline - now) * 1000:.0f} ms left, "
            f"estimated {estimate * 1000:.0f} ms with {state.queued_rows} rows queued ahead; "
            "send a longer X-Request-Timeout-Ms or retry later",
            504,
            retry_after_s(state, latency, policy),
        )


DEADLINE_REFUSALS = frozenset(
    {"deadline_infeasible", "deadline_expired_in_queue", "deadline_exceeded"}
)
# `RequestContext.deadline_from` of a client deadline under `modes.min_client_deadline_ms`.
CLIENT_BELOW_FLOOR = "client_below_floor"


def client_deadline_source(timeout_s: float, floor_s: float) -> str:
    """Who a client-set deadline is evidence about: below the floor, only the client."""
    return CLIENT_BELOW_FLOOR if timeout_s < floor_s else "client"


def signals_overload(code: str, deadline_from: str, budget_s: float, unloaded_s: float) -> bool:
    """Whether a refusal is evidence that the deployment lacks capacity, the signal burst
    modes rise on. A full queue is. A missed or infeasible deadline is, unless a burst
    mode's own cap set it (counting those kept emergency mode, with its 250 ms deadlines,
    refusing everything for ever: measured on the demo under a closed loop), or the caller
    set it below `modes.min_client_deadline_ms` (`CLIENT_BELOW_FLOOR`), or below what the
    batch takes on an idle deployment (`unloaded_s`). Without the floor any client could
    switch modes: `X-Request-Timeout-Ms: 1` beats the unloaded cost of a fast model yet
    not its batching delay, and an endpoint without warm-up has an unloaded cost of 0
    until a batch runs, which a deadline of 0.001 ms keeps from ever happening."""
    if code == "queue_full":
        return True
    if code not in DEADLINE_REFUSALS or deadline_from in ("mode", CLIENT_BELOW_FLOOR):
        return False
    return deadline_from != "client" or budget_s >= unloaded_s
