"""The receipt log: a bounded buffer on the request path, a writer off it.

A finished request's context is appended to the buffer (one deque append; when the
buffer is full the receipt is counted as dropped, never waited for). Every
`flush_interval_s` the writer takes everything buffered and, on a worker thread, turns
each context into a compact record, adds it to the cost ledger and sends the batch as
one frame to the receipt sink, a child process that stores it (sink_client.py says
why a process). Building late has a benefit: a shadow copy that finished meanwhile
is on the receipt. Reads (the admin API) use a store connection of this process.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from surge.config_observe import CostConfig, ReceiptsConfig
from surge.core.context import RequestContext
from surge.core.periodic import Periodic
from surge.observe.cost import CostLedger
from surge.observe.receipt import record_of, render
from surge.observe.sink_client import SinkClient
from surge.store.receipts import ReceiptFilter, ReceiptTable
from surge.store.registry import open_store

log = logging.getLogger("surge.receipts")

RETENTION_SWEEP_S = 60.0  # how often receipts past the retention are deleted
LATEST_KEPT = 100  # the newest receipts kept in memory for the dashboard
SETTLE_TIMEOUT_S = 10.0  # a read waits at most this long for the sink to catch up


class ReceiptLog:
    def __init__(
        self,
        config: ReceiptsConfig,
        prices: dict[str, CostConfig],
        ledger: CostLedger,
        url: str,
        namespace: str = "surge",
    ) -> None:
        self.config = config
        self.prices = prices
        self.ledger = ledger
        self.url = url
        self.namespace = namespace
        self.store: ReceiptTable | None = None  # for reads
        self.sink = SinkClient(url, namespace)  # for writes
        self._buffer: deque[RequestContext] = deque()
        self._latest: deque[dict[str, Any]] = deque(maxlen=LATEST_KEPT)  # records
        self.buffer_full = 0
        # Called with each batch of records on the writer's thread (budgets count spend).
        self.listeners: list[Callable[[list[dict[str, Any]]], None]] = []
        self._flushing = asyncio.Lock()
        self._writer = Periodic(
            "receipt writer", config.flush_interval_s, self._write_round, logger=log
        )
        self._next_sweep = 0.0  # monotonic time of the next retention sweep

    # -- the request path --------------------------------------------------------------

    def submit(self, ctx: RequestContext) -> None:
        if len(self._buffer) >= self.config.buffer:
            self.buffer_full += 1
            return
        self._buffer.append(ctx)

    def counts(self) -> tuple[int, int]:
        """(stored, dropped): dropped counts a full buffer and a failed store alike."""
        return self.sink.written, self.buffer_full + self.sink.failed

    # -- the writer ------------------------------------------------------------------------

    async def start(self) -> None:
        # Reads get a connection of this process (it also creates the schema); writes go
        # to the sink, which opens its own.
        self.store = await asyncio.to_thread(open_store, self.url, self.namespace)
        self._next_sweep = time.monotonic()
        self._writer.start()

    async def stop(self) -> None:
        await self._writer.stop()
        await self.flush()  # what was answered before shutdown is still receipted
        await asyncio.to_thread(self.sink.close)
        if self.store is not None:
            close = getattr(self.store, "close", None)
            if close is not None:
                close()

    async def _write_round(self) -> None:
        await self.flush()
        if time.monotonic() >= self._next_sweep:
            self._next_sweep = time.monotonic() + RETENTION_SWEEP_S
            cutoff = time.time() - self.config.retention_s
            await asyncio.to_thread(self.sink.delete_before, cutoff)

    async def flush(self, settle: bool = False) -> None:
        """Send everything buffered now; with `settle`, also wait (bounded) until the sink
        has stored it: the admin API does, so a request's receipt can be read as soon as
        its answer arrived."""
        async with self._flushing:
            if self._buffer and self.store is not None:
                batch = list(self._buffer)
                self._buffer.clear()
                await asyncio.to_thread(self._write, batch)
            if settle:
                await asyncio.to_thread(self.sink.wait_settled, SETTLE_TIMEOUT_S)

    def _write(self, batch: list[RequestContext]) -> None:
        records = [record_of(ctx, self.prices) for ctx in batch]
        self.sink.send(records)
        # Costs count what was answered, stored or not: the bill is not the log.
        self.ledger.add(records)
        for listener in self.listeners:  # e.g. tenants' budgets (security/quotas.py)
            listener(records)
        self._latest.extend(records)

    # -- reading ---------------------------------------------------------------------------

    def latest(self, limit: int = 20) -> list[dict[str, Any]]:
        """The newest receipts, newest first, from memory (the dashboard polls this)."""
        return [render(record) for record in list(self._latest)[-limit:][::-1]]

    async def lookup(self, request_id: str) -> list[dict[str, Any]]:
        await self.flush(settle=True)
        store = self.store
        assert store is not None
        # Rendered on the worker thread too: a page of receipts is real work for the loop.
        return await asyncio.to_thread(lambda: _rendered(store.receipts_for(request_id)))

    async def search(self, selection: ReceiptFilter) -> list[dict[str, Any]]:
        await self.flush(settle=True)
        store = self.store
        assert store is not None
        return await asyncio.to_thread(lambda: _rendered(store.list_receipts(selection)))

    async def summary(self, selection: ReceiptFilter) -> dict[str, Any]:
        await self.flush(settle=True)
        assert self.store is not None
        return await asyncio.to_thread(self.store.summarize_receipts, selection)


def _rendered(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [render(record) for record in records]
