"""The request context: who, until when, and when each handoff happened.

Each leg of the relay stamps a monotonic time; the stamps become the
`Server-Timing` header, the per-stage latency histograms, the trace's spans and
the receipt. Each model run (`runs`) and routing decision (`decisions`) is
appended as it happens, so the receipt can say what ran, what it cost and why.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# The legs of the relay, in order: (the stamp that ends the leg, the leg's name). A leg
# runs from the previous stamp present to its own. "route" ends when a deployment takes
# the request (after a cascade's first tier, for an escalated row: so the leg shows what
# came before the final model); "post_route" from the model's answer back to the
# adapter (splitting a batch, merging a cascade's tiers); "respond" is encoding.
# Every reader (Server-Timing, receipts, traces) uses this one table.
LEGS = (
    ("validated", "validate"),
    ("routed", "route"),
    ("admitted", "admit"),
    ("batched", "queue"),
    ("compute_start", "batch"),
    ("compute_end", "compute"),
    ("post_routed", "post_route"),
    ("responded", "respond"),
)


def legs(stamps: dict[str, float], received: float) -> list[tuple[str, float, float]]:
    """(leg name, start, end) in monotonic seconds for each leg the request stamped.

    A leg runs from the previous stamp present to its own, so a request refused at
    admission still gets the legs it went through, and they tile its whole time. The one
    walk over the stamps that Server-Timing, receipts and traces all read."""
    previous = received
    out = []
    for stage, name in LEGS:
        at = stamps.get(stage)
        if at is None:
            continue
        if at < previous:  # a stamp overwritten out of order must not run backwards
            at = previous
        out.append((name, previous, at))
        previous = at
    return out


@dataclass(slots=True)
class RequestContext:
    request_id: str
    endpoint: str
    deadline: float  # monotonic seconds
    received: float
    stamps: dict[str, float] = field(default_factory=dict)
    rows: int = 1  # rows this request adds to a batch
    # Every routing decision (policy, choice, reason, the numbers it used), in order:
    # what a receipt shows of why the request went where it went.
    decisions: list[dict[str, Any]] = field(default_factory=list)
    degraded: bool = False  # a cheaper target served than the route prefers (deadline, fallback)
    needs_review: list[int] = field(default_factory=list)  # rows a cascade flagged for review
    # One entry per model run this request took part in (escalations, retries, and a
    # shadow copy's run, which shares this list): see `Deployment._record`.
    runs: list[dict[str, Any]] = field(default_factory=list)
    role: str = "live"  # "shadow" for the mirrored copy of a request
    tenant: str | None = None  # X-Tenant
    traceparent: str | None = None  # W3C trace context sent by the caller
    trace: Any = None  # the tracer's per-request state (None when tracing is off)
    outbound_headers: dict[str, str] | None = None  # what an upstream call carries (traceparent)
    wall_time: float = 0.0  # epoch seconds at `received`, for the receipt
    status: int = 0  # the HTTP status answered
    error: str | None = None  # the error code, when not 200
    cache_hit: bool = False  # every row came from the response cache
    # What the response cache did for the request (serving/response_cache.py): result,
    # rows and rows found, coalesced, stale, the compute it saved; None: no cache.
    cache: dict[str, Any] | None = None
    # Who set the deadline: the caller ("client", X-Request-Timeout-Ms), the endpoint's
    # `timeout_ms` ("endpoint"), or a burst mode's cap on it ("mode"). A refusal of a
    # deadline the mode itself shortened is no evidence of overload (see admission.py).
    deadline_from: str = "endpoint"
    # A bandit route's proof for this answer's feedback (X-Feedback-Token): only the one
    # who got the answer can reward the arm that gave it.
    feedback_token: str | None = None

    def decide(self, policy: str, choice: str, reason: str, **numbers: Any) -> None:
        self.decisions.append({"policy": policy, "choice": choice, "reason": reason, **numbers})

    def stamp(self, stage: str, now: float) -> None:
        self.stamps[stage] = now

    def remaining_s(self, now: float) -> float:
        return self.deadline - now
