"""The request context: who, until when, and when each handoff happened.

Each leg of the relay stamps a monotonic time; the stamps become the
`Server-Timing` header and the per-stage latency histograms (and later, the receipt).
"""

from __future__ import annotations

from dataclasses import dataclass, field

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

    def stamp(self, stage: str, now: float) -> None:
        self.stamps[stage] = now

    def remaining_s(self, now: float) -> float:
        return self.deadline - now
