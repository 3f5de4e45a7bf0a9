"""The dynamic batcher: a sans-IO state machine over one deployment's queue.

The driver pushes requests and calls `step(now, idle_replicas)`; the batcher
answers with a batch to run (or none), the requests whose deadline passed
while queued, and when it next needs to be asked. It never reads a clock.

A batch closes when it reaches `max_batch_size` rows, when a preferred size
can be formed, or when the oldest request has waited `max_queue_delay_s`.
While every replica is busy nothing closes, so the queue fills the next batch
and batches grow with load. For text, a batch is the oldest request plus the
queued requests closest to it in length (`key`), so padding wastes little
compute while the oldest is always served first (no starvation).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class BatchingPolicy:
    max_batch_size: int
    max_queue_delay_s: float
    preferred_batch_sizes: tuple[int, ...] = ()
    # How far past a full batch the batcher looks for requests of similar length.
    grouping_window_batches: int = 4


@dataclass(slots=True, eq=False)
class QueuedRequest:
    payload: Any
    rows: int
    arrival: float
    deadline: float
    key: int = 0  # a size measure (e.g. tokens); 0 everywhere means FIFO


@dataclass(frozen=True)
class Step:
    batch: tuple[QueuedRequest, ...] = ()
    expired: tuple[QueuedRequest, ...] = ()
    wake_at: float | None = None  # ask again at this time even if nothing happens

    @property
    def rows(self) -> int:
        return sum(r.rows for r in self.batch)


@dataclass
class Batcher:
    policy: BatchingPolicy
    _queue: deque[QueuedRequest] = field(default_factory=deque)
    _rows: int = 0

    def __len__(self) -> int:
        return len(self._queue)

    @property
    def queued_rows(self) -> int:
        return self._rows

    def push(self, request: QueuedRequest) -> None:
        if request.rows > self.policy.max_batch_size:
            raise ValueError("a request cannot be larger than max_batch_size")
        self._queue.append(request)
        self._rows += request.rows

    def take_all(self) -> list[QueuedRequest]:
        """Empty the queue (shutdown)."""
        out = list(self._queue)
        self._queue.clear()
        self._rows = 0
        return out

    def step(self, now: float, idle_replicas: int) -> Step:
        expired = self._expire(now)
        if not self._queue:
            return Step(expired=expired)
        earliest_deadline = min(r.deadline for r in self._queue)
        if idle_replicas <= 0:
            return Step(expired=expired, wake_at=earliest_deadline)
        size = self._close_size(now)
        if size == 0:
            close_at = self._queue[0].arrival + self.policy.max_queue_delay_s
            return Step(expired=expired, wake_at=min(close_at, earliest_deadline))
        return Step(batch=self._form(size), expired=expired)

    def _expire(self, now: float) -> tuple[QueuedRequest, ...]:
        if not any(r.deadline <= now for r in self._queue):
            return ()
        gone = tuple(r for r in self._queue if r.deadline <= now)
        self._queue = deque(r for r in self._queue if r.deadline > now)
        self._rows -= sum(r.rows for r in gone)
        return gone

    def _close_size(self, now: float) -> int:
        """How many rows the batch closing now may take; 0 means keep waiting."""
        policy = self.policy
        if self._rows >= policy.max_batch_size:
            return policy.max_batch_size
        if now >= self._queue[0].arrival + policy.max_queue_delay_s:
            return self._rows
        reachable = [s for s in policy.preferred_batch_sizes if s <= self._rows]
        return max(reachable) if reachable else 0

    def _form(self, size: int) -> tuple[QueuedRequest, ...]:
        anchor = self._queue[0]
        window_len = size * self.policy.grouping_window_batches
        window = [r for _, r in zip(range(window_len), self._queue, strict=False)]
        if len(window) > 1 and any(r.key for r in window):
            # Oldest first, then the closest in length; ties by age (window order).
            order = sorted(range(1, len(window)), key=lambda i: abs(window[i].key - anchor.key))
            candidates = [anchor, *(window[i] for i in order)]
        else:
            candidates = window
        chosen: list[QueuedRequest] = []
        rows = 0
        for request in candidates:
            if rows + request.rows <= size:
                chosen.append(request)
                rows += request.rows
                if rows == size:
                    break
        taken = set(map(id, chosen))
        self._queue = deque(r for r in self._queue if id(r) not in taken)
        self._rows -= rows
        # Keep arrival order inside the batch so results map back predictably.
        chosen.sort(key=lambda r: r.arrival)
        return tuple(chosen)
