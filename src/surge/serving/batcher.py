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

import heapq
import itertools
from collections import deque
from dataclasses import dataclass
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
    queued: bool = True  # False once taken into a batch or expired


@dataclass(frozen=True)
class Step:
    batch: tuple[QueuedRequest, ...] = ()
    expired: tuple[QueuedRequest, ...] = ()
    wake_at: float | None = None  # ask again at this time even if nothing happens

    @property
    def rows(self) -> int:
        return sum(r.rows for r in self.batch)


class Batcher:
    """Queue operations are O(log n) per request, so a long queue under overload stays cheap.

    Requests leave the queue lazily: a request taken out of order (length grouping) or
    expired is marked and skipped, and dropped from the deque when it reaches the head.
    Deadlines sit in a heap so the earliest one is known without a scan.
    """

    def __init__(self, policy: BatchingPolicy) -> None:
        self.policy = policy
        self._queue: deque[QueuedRequest] = deque()
        self._deadlines: list[tuple[float, int, QueuedRequest]] = []
        self._seq = itertools.count()
        self._count = 0
        self._rows = 0

    def __len__(self) -> int:
        return self._count

    @property
    def queued_rows(self) -> int:
        return self._rows

    def oldest_wait_s(self, now: float) -> float:
        """How long the oldest queued request has waited (0 with none queued)."""
        return now - self._oldest().arrival if self._count else 0.0

    def push(self, request: QueuedRequest) -> None:
        if request.rows > self.policy.max_batch_size:
            raise ValueError("a request cannot be larger than max_batch_size")
        self._queue.append(request)
        heapq.heappush(self._deadlines, (request.deadline, next(self._seq), request))
        self._count += 1
        self._rows += request.rows

    def take_all(self) -> list[QueuedRequest]:
        """Empty the queue (shutdown)."""
        out = [r for r in self._queue if r.queued]
        for r in out:
            self._remove(r)
        self._queue.clear()
        self._deadlines.clear()
        return out

    def step(self, now: float, idle_replicas: int, compute_s: float = 0.0) -> Step:
        """Decide what to do at `now` with `idle_replicas` free.

        `compute_s` is how long the next batch is expected to run: a request whose
        deadline falls before `now + compute_s` cannot be answered in time, so it is
        expired here rather than computed and then failed (which wastes capacity
        exactly when there is none to spare).
        """
        expired = self._expire(now + compute_s)
        if not self._count:
            return Step(expired=expired)
        expire_at = self._deadlines[0][0] - compute_s
        if idle_replicas <= 0:
            return Step(expired=expired, wake_at=expire_at)
        oldest = self._oldest()
        size = self._close_size(now, oldest)
        if size == 0:
            close_at = oldest.arrival + self.policy.max_queue_delay_s
            return Step(expired=expired, wake_at=min(close_at, expire_at))
        return Step(batch=self._form(size, oldest), expired=expired)

    def _remove(self, request: QueuedRequest) -> None:
        request.queued = False
        self._count -= 1
        self._rows -= request.rows

    def _oldest(self) -> QueuedRequest:
        while not self._queue[0].queued:
            self._queue.popleft()
        return self._queue[0]

    def _expire(self, cutoff: float) -> tuple[QueuedRequest, ...]:
        gone: list[QueuedRequest] = []
        heap = self._deadlines
        while heap and (heap[0][0] <= cutoff or not heap[0][2].queued):
            _, _, request = heapq.heappop(heap)
            if request.queued:
                self._remove(request)
                gone.append(request)
        return tuple(gone)

    def _close_size(self, now: float, oldest: QueuedRequest) -> int:
        """How many rows the batch closing now may take; 0 means keep waiting."""
        policy = self.policy
        if self._rows >= policy.max_batch_size:
            return policy.max_batch_size
        if now >= oldest.arrival + policy.max_queue_delay_s:
            return self._rows
        reachable = [s for s in policy.preferred_batch_sizes if s <= self._rows]
        return max(reachable) if reachable else 0

    def _form(self, size: int, anchor: QueuedRequest) -> tuple[QueuedRequest, ...]:
        window_len = size * self.policy.grouping_window_batches
        window = list(itertools.islice((r for r in self._queue if r.queued), window_len))
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
        for request in chosen:
            self._remove(request)
        # Keep arrival order inside the batch so results map back predictably.
        chosen.sort(key=lambda r: r.arrival)
        return tuple(chosen)
