"""The request context: who, until when, and when each handoff happened.

Each leg of the relay stamps a monotonic time; the stamps become the
`Server-Timing` header and the per-stage latency histograms (and later, the receipt).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Stage names in relay order. A stage's duration is its stamp minus the previous stamp present.
STAGES = (
    "received",
    "validated",
    "admitted",
    "batched",
    "compute_start",
    "compute_end",
    "responded",
)


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

    def decide(self, policy: str, choice: str, reason: str, **numbers: Any) -> None:
        self.decisions.append({"policy": policy, "choice": choice, "reason": reason, **numbers})

    def stamp(self, stage: str, now: float) -> None:
        self.stamps[stage] = now

    def remaining_s(self, now: float) -> float:
        return self.deadline - now
