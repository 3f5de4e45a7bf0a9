"""Who is serving: every process writes a heartbeat row to the registry each interval
with what it serves (the route revision of each endpoint, versions it could not load)
and what it measured (per-version rollout windows). The rollout leader merges the
windows of every live process; `surge status` shows which revision each one serves.

A process whose heartbeat is older than `timeout_s` is counted out (it died, or cannot
reach the registry); a clean shutdown removes its row at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from typing import Any

from surge.store.registry import ProcessRecord, RegistryStore

log = logging.getLogger("surge.presence")


def new_process_id() -> str:
    """host:pid:random, unique even when a pid is reused after a restart."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Presence:
    def __init__(
        self,
        store: RegistryStore,
        process_id: str,
        state: Callable[[], dict[str, Any]],
        timeout_s: float,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.process_id = process_id
        self.state = state
        self.timeout_s = timeout_s
        self.wall_clock = wall_clock
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.started_at = wall_clock()
        self.healthy = True

    async def beat(self) -> bool:
        try:
            await asyncio.to_thread(
                self.store.heartbeat,
                self.process_id,
                self.host,
                self.pid,
                self.started_at,
                self.state(),
                self.wall_clock(),
            )
        except Exception as exc:
            if self.healthy:
                log.warning("cannot publish this process's heartbeat: %s", exc)
            self.healthy = False
            return False
        self.healthy = True
        return True

    async def peers(self) -> list[ProcessRecord]:
        """Every live process, this one included (as of its last heartbeat)."""
        since = self.wall_clock() - self.timeout_s
        return await asyncio.to_thread(self.store.processes, since)

    async def leave(self) -> None:
        try:
            await asyncio.to_thread(self.store.forget_process, self.process_id)
        except Exception:  # it times out by itself
            log.warning("could not remove this process's heartbeat; it times out by itself")
