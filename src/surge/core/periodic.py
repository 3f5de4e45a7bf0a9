"""Work that runs every few seconds on the event loop: the receipt writer, the burst
mode and rollout timers, the bandit's sync of its shared counts.

One helper so that each gets the same two guarantees. A tick that raises is logged and
the loop goes on: a hand-written `while True` whose try misses one path dies silently,
and the feature it drives stops without a word. And `stop()` returns only once the
loop is over, so a shutdown that goes on to close a store never races a tick still
using it.

Ticks are spaced by `interval_s` from the end of one to the start of the next, so a
slow tick delays the next instead of piling up behind it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger("surge.periodic")


class Periodic:
    def __init__(
        self,
        name: str,
        interval_s: float,
        tick: Callable[[], Awaitable[object]],
        *,
        first_tick_now: bool = False,  # tick at start, else one interval after it
        logger: logging.Logger = log,
    ) -> None:
        if not interval_s > 0:  # `not >` also refuses NaN
            raise ValueError(f"{name}: interval_s must be positive, got {interval_s}")
        self.name = name
        self.interval_s = interval_s
        self.tick = tick
        self.first_tick_now = first_tick_now
        self.log = logger
        self.failures = 0  # ticks that raised, since the start
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        if self._task is not None:
            raise RuntimeError(f"{self.name} is already running")
        self._task = asyncio.get_running_loop().create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        """Cancel the loop (a tick under way is cancelled where it waits) and wait until
        it is over. Stopping what never started does nothing; it may start again."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        # `wait` rather than `await task`: the task's cancellation is expected and is
        # not raised here, while a cancellation of the caller still is.
        await asyncio.wait({task})

    async def _run(self) -> None:
        if not self.first_tick_now:
            await asyncio.sleep(self.interval_s)
        while True:
            try:
                await self.tick()
            except Exception:
                self.failures += 1
                self.log.exception("%s failed; it runs again in %g s", self.name, self.interval_s)
            await asyncio.sleep(self.interval_s)
