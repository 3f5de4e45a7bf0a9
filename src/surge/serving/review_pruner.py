"""Keeps each cascade's human-review queue bounded, in the background.

Review items come from anonymous low-confidence rows, so without a bound anyone could
fill the registry. Every `interval_s` the pruner applies each cascade route's retention
and caps (`review_retention_s`, `review_max_pending`, `review_max_labelled`; see
`store/review.py` for what is kept). It never runs on the request path: a request only
queues an item, and the deletes run on a worker thread between ticks. Run by one process
(`leading`): the deletes are idempotent, so two at once only repeat work.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from surge.config_routes import CascadeConfig, RouteConfig
from surge.core.periodic import Periodic
from surge.store.registry import RegistryStore

log = logging.getLogger("surge.review")

PRUNE_EVERY_S = 60.0


class ReviewPruner:
    def __init__(
        self,
        store: RegistryStore,
        queues: dict[str, CascadeConfig],
        *,
        interval_s: float = PRUNE_EVERY_S,
        leading: Callable[[], bool] = lambda: True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.queues = queues  # route name -> its cascade (the review items' endpoint)
        self.leading = leading
        self.clock = clock
        self.pruned = 0  # items removed since the start
        self._ticker = Periodic("review pruning", interval_s, self.prune, logger=log)

    @classmethod
    def for_routes(
        cls, routes: dict[str, RouteConfig], store: RegistryStore, **options: Any
    ) -> ReviewPruner:
        """A pruner for every cascade route that queues reviews."""
        queues = {
            name: route.cascade
            for name, route in routes.items()
            if route.cascade is not None and route.cascade.review
        }
        return cls(store, queues, **options)

    async def prune(self) -> int:
        """One pass over every queue; how many items went."""
        if not self.leading():
            return 0
        removed = 0
        for name, cascade in self.queues.items():
            counts = await asyncio.to_thread(
                self.store.prune_reviews,
                endpoint=name,
                unlabelled_before=self.clock() - cascade.review_retention_s,
                max_unlabelled=cascade.review_max_pending,
                max_labelled=cascade.review_max_labelled,
            )
            if any(counts.values()):
                log.info("review queue of %s pruned: %s", name, counts)
            removed += sum(counts.values())
        self.pruned += removed
        return removed

    def start(self) -> None:
        if self.queues:
            self._ticker.start()

    async def stop(self) -> None:
        await self._ticker.stop()
