"""Single-flight: identical requests that arrive while the first is computing wait for
its answer instead of computing again (within one process; across processes the Redis
tier's `claim` / `wait_for` do the same).

The computation runs as a task of its own, and every caller, the first included,
awaits it shielded, bounded by its own `timeout_s`. So:

- a caller whose deadline passes gets its own `TimeoutError`; the computation goes on
  for the others. Cancelling any one caller (the first included: a client that hung up)
  cancels only that caller;
- the computation is cancelled when the last caller waiting for it leaves: nobody
  wants the answer any more, and a batcher can drop the request before it runs;
- a failure is shared: every caller waiting gets the same exception. Retrying once per
  follower would multiply the load on a model that just failed. The exception types in
  `retry_on` are the exception: a failure that belongs to the first caller alone (its
  own deadline, enforced inside the computation) sends each follower whose time is not
  up to try again, the first of them computing with its own `compute`. A caller retries
  only after following, never after its own computation failed, so retries are
  bounded by the number of callers;
- a computation cancelled from outside while callers still wait (a shutdown) gives them
  `CoalescedCancelled` rather than hanging.

The answer is one object shared by every caller: treat it as read-only.

Bounded: at most `max_keys` computations are tracked; a new key past that is computed
without coalescing (counted in `bypassed`), so a flood of distinct keys costs nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, NamedTuple, TypeVar

T = TypeVar("T")


class CoalescedCancelled(RuntimeError):
    """The shared computation was cancelled from outside while this caller waited."""


class Shared(NamedTuple, Generic[T]):
    value: T
    coalesced: bool  # True: another caller's computation answered this one


@dataclass(eq=False)
class _Flight:
    task: asyncio.Future[Any]
    waiters: int = 0


class SingleFlight:
    def __init__(
        self, max_keys: int = 10_000, retry_on: tuple[type[BaseException], ...] = ()
    ) -> None:
        if max_keys < 1:
            raise ValueError(f"max_keys must be at least 1, got {max_keys}")
        self.max_keys = max_keys
        self.retry_on = retry_on
        self._flights: dict[str, _Flight] = {}
        self._abandoned: set[asyncio.Future[Any]] = set()  # cancelled, not yet finished
        self.leaders = 0  # computations started
        self.followers = 0  # joins of a computation already running (coalesced)
        self.retries = 0  # followers that tried again after a `retry_on` failure
        self.bypassed = 0  # computed without coalescing: too many keys in flight
        self.abandoned = 0  # computations cancelled because every caller left

    @property
    def in_flight(self) -> int:
        return len(self._flights)

    def _finished(self, key: str, flight: _Flight) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]
        if not flight.task.cancelled():
            flight.task.exception()  # read, so an answer nobody awaited is not logged

    async def run(
        self, key: str, compute: Callable[[], Awaitable[T]], *, timeout_s: float | None = None
    ) -> Shared[T]:
        """The answer for `key`: computed by `compute()` if no identical computation is
        running, else that computation's. Raises `TimeoutError` after `timeout_s`."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout_s is None else loop.time() + timeout_s
        while True:
            flight = self._flights.get(key)
            if flight is not None and flight.task.done():
                # Finished, its callback not run yet: its answer may be a failure that
                # must not be handed to a caller that arrived after it.
                del self._flights[key]
                flight = None
            if flight is None:
                if len(self._flights) >= self.max_keys:
                    self.bypassed += 1
                    async with asyncio.timeout_at(deadline):
                        return Shared(await compute(), False)
                flight = _Flight(asyncio.ensure_future(compute()))
                self._flights[key] = flight
                flight.task.add_done_callback(lambda _, k=key, f=flight: self._finished(k, f))
                self.leaders += 1
                following = False
            else:
                self.followers += 1
                following = True
            flight.waiters += 1
            try:
                try:
                    async with asyncio.timeout_at(deadline):
                        return Shared(await asyncio.shield(flight.task), following)
                except asyncio.CancelledError:
                    task = asyncio.current_task()
                    if flight.task.cancelled() and task is not None and not task.cancelling():
                        raise CoalescedCancelled(
                            f"the computation of {key!r} was cancelled"
                        ) from None
                    raise
            except self.retry_on:
                if not following or (deadline is not None and loop.time() >= deadline):
                    raise
                self.retries += 1
            finally:
                flight.waiters -= 1
                if flight.waiters == 0 and not flight.task.done():
                    self._abandon(key, flight)

    def _abandon(self, key: str, flight: _Flight) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]
        flight.task.cancel()
        self.abandoned += 1
        # Held until it has finished unwinding: the loop keeps only weak references.
        self._abandoned.add(flight.task)
        flight.task.add_done_callback(self._abandoned.discard)

    def stats(self) -> dict[str, int]:
        return {
            "leaders": self.leaders,
            "followers": self.followers,
            "retries": self.retries,
            "bypassed": self.bypassed,
            "abandoned": self.abandoned,
            "in_flight": self.in_flight,
        }
