"""One decider: a lease in the registry that one process at a time holds.

The rollout controller acts only in the process that holds the `rollouts` lease. The
lease is a row with a holder, an expiry and a fencing token (`store.acquire_lease`):
the holder renews it every third of its TTL; when the holder dies, the row expires and
the next process to ask takes it with a larger token. A decision is written with the
token (`update_route(..., fence=...)`), checked in the same transaction as the write,
so a leader that was paused past its expiry (and replaced) cannot overwrite its
successor's decisions: the database refuses it, whatever the leader believes.

Why the registry and not a Redis lease: the fence must be checked where the decision is
written, and decisions are written to the registry; a Redis lease could not fence them.
It also works on SQLite (several workers on one host) with no Redis at all.

Expiry is judged by the callers' wall clocks (hosts kept in sync by NTP): a lease TTL of
seconds tolerates the usual milliseconds of skew.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from surge.core.clock import monotonic
from surge.store.registry import RegistryStore

log = logging.getLogger("surge.lease")


class LeaseKeeper:
    def __init__(
        self,
        store: RegistryStore,
        name: str,
        holder: str,
        ttl_s: float,
        clock: Callable[[], float] = monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.name = name
        self.holder = holder
        self.ttl_s = ttl_s
        self.clock = clock
        self.wall_clock = wall_clock
        self.token: int | None = None
        self._valid_until = 0.0  # this process's clock: when to stop acting on the lease

    @property
    def renew_interval_s(self) -> float:
        return self.ttl_s / 3

    @property
    def leading(self) -> bool:
        """Whether to act: holding the lease with a safe margin left. The margin (a
        third of the TTL) covers a renewal that is late by one interval."""
        return self.token is not None and self.clock() < self._valid_until

    @property
    def fence(self) -> tuple[str, int] | None:
        return (self.name, self.token) if self.leading and self.token is not None else None

    async def renew(self) -> bool:
        """Take or renew the lease; whether this process leads now."""
        asked_at = self.clock()
        try:
            token = await asyncio.to_thread(
                self.store.acquire_lease, self.name, self.holder, self.ttl_s, self.wall_clock()
            )
        except Exception as exc:
            if self.token is not None and not self.leading:
                log.warning(
                    "lost the %s lease: the registry cannot be reached (%s)", self.name, exc
                )
                self.token = None
            return self.leading
        if token is None:
            if self.token is not None:
                log.warning("the %s lease was taken by another process", self.name)
            self.token = None
            return False
        if token != self.token:
            log.info("%s: this process leads now (fencing token %d)", self.name, token)
        self.token = token
        # Counted from before the call: the row's expiry is at least this late.
        self._valid_until = act_until(asked_at, self.ttl_s)
        return True

    async def release(self) -> None:
        if self.token is None:
            return
        self.token = None
        try:
            await asyncio.to_thread(self.store.release_lease, self.name, self.holder)
        except Exception:  # it expires by itself
            log.warning("could not release the %s lease; it expires by itself", self.name)


def act_until(asked_at: float, ttl_s: float) -> float:
    """Act on a lease for two thirds of its TTL after asking: renewals come every third,
    so one late renewal never leaves a gap where two processes both think they lead."""
    return asked_at + ttl_s * 2 / 3
