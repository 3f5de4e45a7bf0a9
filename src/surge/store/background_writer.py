"""A bounded background writer: records that need not be on the request path (cascade
review items, mode audit entries) are handed over and written later, so a slow or dead
database never stalls or fails an answer whose compute already finished.

- `offer` never waits: it queues the record, or drops it when the queue is full. The
  bound keeps a database outage from turning into unbounded memory; what is dropped is
  counted (per reason, exported to Prometheus when `metric` is set) and logged once per
  burst, not once per record.
- One task writes, a batch at a time, in one thread hop per batch. Each batch has a
  deadline: past it the batch stops after the record in flight (a thread cannot be
  interrupted) and the rest is dropped as `timed_out`. The next batch waits for that
  thread to end, so at most one thread is ever blocked on the database (the stores
  serialize on their connection anyway: a second one would only queue behind it).
- `close` drains what is queued within a bound, then drops the rest as `shutdown`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

T = TypeVar("T")
log = logging.getLogger("surge.store.writer")

REASONS = ("queue_full", "failed", "timed_out", "shutdown")


class BackgroundWriter(Collector, Generic[T]):
    def __init__(
        self,
        name: str,
        write: Callable[[T], object],
        *,
        capacity: int,
        batch_size: int,
        write_timeout_s: float,
        metric: str | None = None,
        logger: logging.Logger = log,
    ) -> None:
        if capacity < 1 or batch_size < 1 or not write_timeout_s > 0:
            raise ValueError(f"{name}: capacity, batch_size and write_timeout_s must be > 0")
        self.name = name
        self._write_one = write  # called in a worker thread, one record at a time
        self.capacity = capacity
        self.batch_size = batch_size
        self.write_timeout_s = write_timeout_s
        self.metric = metric
        self.log = logger
        self.written = 0
        self.dropped = dict.fromkeys(REASONS, 0)
        self._queue: deque[T] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._in_flight = 0  # records of the batch being written
        self._burst = 0  # records dropped since the queue last had room (one log per burst)
        self._failing = False  # the last batch failed: log again only once one succeeds
        self._stop = threading.Event()  # set: the batch being written stops early

    @property
    def pending(self) -> int:
        return len(self._queue) + self._in_flight

    # -- the request path ---------------------------------------------------------------

    def offer(self, record: T) -> bool:
        """Queue `record` for writing; False when it was dropped. Never waits."""
        if self._closed:
            self._drop("shutdown", 1)
            return False
        if len(self._queue) >= self.capacity:
            if not self._burst:
                self.log.warning(
                    "%s: %d records wait to be written; dropping new ones until there is room",
                    self.name,
                    self.capacity,
                )
            self._burst += 1
            self._drop("queue_full", 1)
            return False
        if self._burst:
            self.log.warning("%s: room again after dropping %d records", self.name, self._burst)
            self._burst = 0
        self._queue.append(record)
        self._wake.set()
        return True

    # -- the writer task ----------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=self.name)

    async def close(self, timeout_s: float) -> None:
        """Stop taking records; write what is queued for at most `timeout_s` seconds and
        drop (and count) what is left."""
        self._closed = True
        self._wake.set()
        task, self._task = self._task, None
        if task is not None:
            done, _ = await asyncio.wait({task}, timeout=timeout_s)
            if not done:
                self._stop.set()  # the thread ends after the record in flight
                task.cancel()
                await asyncio.wait({task})
        left = len(self._queue) + self._in_flight
        self._queue.clear()
        self._in_flight = 0
        if left:
            self._drop("shutdown", left)
            self.log.warning("%s: %d records not written at shutdown", self.name, left)

    async def _run(self) -> None:
        while True:
            if not self._queue:
                if self._closed:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            take = min(self.batch_size, len(self._queue))
            batch = [self._queue.popleft() for _ in range(take)]
            self._in_flight = len(batch)
            try:
                await self._write(batch)
            except Exception:  # a bug here must not end the writer for good
                self.log.exception("%s: writing a batch failed", self.name)
            self._in_flight = 0

    async def _write(self, batch: list[T]) -> None:
        self._stop = stop = threading.Event()
        running = asyncio.get_running_loop().run_in_executor(None, self._write_batch, batch, stop)
        try:
            written, failed, error = await asyncio.wait_for(
                asyncio.shield(running), self.write_timeout_s
            )
        except TimeoutError:
            stop.set()
            self._trouble(f"a write took over {self.write_timeout_s:g} s; dropping its batch")
            written, failed, error = await running  # ends after the record in flight
            self._drop("timed_out", len(batch) - written - failed)
        self.written += written
        if failed:
            self._drop("failed", failed)
            self._trouble(f"{failed} records not written: {error}")
        elif written and self._failing:
            self.log.warning("%s: writing again", self.name)
            self._failing = False

    def _trouble(self, message: str) -> None:
        """Log the first failure of a run of them; the counters keep the rest."""
        if not self._failing:
            self.log.warning("%s: %s", self.name, message)
        self._failing = True

    def _write_batch(
        self, batch: list[T], stop: threading.Event
    ) -> tuple[int, int, Exception | None]:
        """In a worker thread: (records written, records failed, the first error)."""
        written = failed = 0
        error: Exception | None = None
        for record in batch:
            if stop.is_set():
                break
            try:
                self._write_one(record)
            except Exception as exc:  # one bad record must not cost the others
                failed += 1
                error = error or exc
            else:
                written += 1
        return written, failed, error

    # -- metrics ------------------------------------------------------------------------

    def _drop(self, reason: str, count: int) -> None:
        self.dropped[reason] += count

    def collect(self) -> Iterator[Metric]:
        if self.metric is None:
            return
        family = CounterMetricFamily(
            self.metric, f"Records {self.name} dropped instead of writing", labels=["reason"]
        )
        for reason, count in self.dropped.items():
            family.add_metric([reason], count)
        yield family
