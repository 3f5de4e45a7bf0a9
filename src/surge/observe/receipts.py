"""The receipt log: a bounded buffer on the request path, a writer off it.

A finished request's context is appended to the buffer (one deque append; when the
buffer is full the receipt is counted as dropped, never waited for). Every
`flush_interval_s` the writer takes everything buffered and, on a worker thread,
builds the receipts, stores them in one transaction and adds them to the cost ledger.
Building late has a benefit: a shadow copy that finished meanwhile is on the receipt.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from surge.config_observe import CostConfig, ReceiptsConfig
from surge.core.context import RequestContext
from surge.observe.cost import CostLedger
from surge.observe.receipt import record_of, render
from surge.store.receipts import ReceiptFilter, ReceiptTable

log = logging.getLogger("surge.receipts")

RETENTION_SWEEP_S = 60.0  # how often receipts past the retention are deleted
LATEST_KEPT = 100  # the newest receipts kept in memory for the dashboard


class ReceiptLog:
    def __init__(
        self,
        config: ReceiptsConfig,
        prices: dict[str, CostConfig],
        ledger: CostLedger,
        open_store: Callable[[], ReceiptTable],
    ) -> None:
        self.config = config
        self.prices = prices
        self.ledger = ledger
        self._open_store = open_store
        self.store: ReceiptTable | None = None
        self._buffer: deque[RequestContext] = deque()
        self._latest: deque[dict[str, Any]] = deque(maxlen=LATEST_KEPT)  # records
        self.written = 0
        self.dropped = {"buffer_full": 0, "store_error": 0}
        self._flushing = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    # -- the request path --------------------------------------------------------------

    def submit(self, ctx: RequestContext) -> None:
        if len(self._buffer) >= self.config.buffer:
            self.dropped["buffer_full"] += 1
            return
        self._buffer.append(ctx)

    def counts(self) -> tuple[int, int]:
        return self.written, sum(self.dropped.values())

    # -- the writer ------------------------------------------------------------------------

    async def start(self) -> None:
        self.store = await asyncio.to_thread(self._open_store)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="receipt-writer")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()  # what was answered before shutdown is still receipted
        if self.store is not None:
            close = getattr(self.store, "close", None)
            if close is not None:
                close()

    async def _run(self) -> None:
        next_sweep = time.monotonic()
        while True:
            await asyncio.sleep(self.config.flush_interval_s)
            try:
                await self.flush()
                if time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + RETENTION_SWEEP_S
                    await asyncio.to_thread(self._sweep)
            except Exception:  # the writer must outlive any one bad batch
                log.exception("receipt writer failed a round; it goes on")

    async def flush(self) -> None:
        """Write everything buffered now (the admin API calls this before a lookup, so a
        request's receipt can be read as soon as its answer arrived)."""
        async with self._flushing:
            if not self._buffer or self.store is None:
                return
            batch = list(self._buffer)
            self._buffer.clear()
            await asyncio.to_thread(self._write, batch)

    def _write(self, batch: list[RequestContext]) -> None:
        records = [record_of(ctx, self.prices) for ctx in batch]
        assert self.store is not None
        try:
            self.store.add_receipts(records)
        except Exception as exc:
            self.dropped["store_error"] += len(records)
            log.warning("could not store %d receipts: %s", len(records), exc)
        else:
            self.written += len(records)
        # Costs count what was answered, stored or not: the bill is not the log.
        self.ledger.add(records)
        self._latest.extend(records)

    def _sweep(self) -> None:
        assert self.store is not None
        removed = self.store.delete_receipts_before(time.time() - self.config.retention_s)
        if removed:
            log.info("deleted %d receipts older than %.0f s", removed, self.config.retention_s)

    # -- reading ---------------------------------------------------------------------------

    def latest(self, limit: int = 20) -> list[dict[str, Any]]:
        """The newest receipts, newest first, from memory (the dashboard polls this)."""
        return [render(record) for record in list(self._latest)[-limit:][::-1]]

    async def lookup(self, request_id: str) -> list[dict[str, Any]]:
        await self.flush()
        assert self.store is not None
        return await asyncio.to_thread(self.store.receipts_for, request_id)

    async def search(self, selection: ReceiptFilter) -> list[dict[str, Any]]:
        await self.flush()
        assert self.store is not None
        return await asyncio.to_thread(self.store.list_receipts, selection)

    async def summary(self, selection: ReceiptFilter) -> dict[str, Any]:
        await self.flush()
        assert self.store is not None
        return await asyncio.to_thread(self.store.summarize_receipts, selection)
