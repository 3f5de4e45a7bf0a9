"""How the machine's cores are divided among workers, endpoints and replicas."""

from __future__ import annotations

import os
from dataclasses import dataclass

from surge.config import Config


def cpu_count() -> int:
    """The cores this process may run on (its affinity, which a container may limit)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class CoreShare:
    replicas: int
    threads_per_replica: int


def plan_cores(config: Config, cores: int) -> tuple[dict[str, CoreShare], list[str]]:
    """Each worker process gets cores / workers; an endpoint's replicas split that share.

    Endpoints of one worker share its cores: when they peak at the same time the
    OS interleaves them. Pin `threads_per_replica` per endpoint to partition instead.
    """
    workers = config.server.workers
    per_worker = max(1, cores // workers)
    lines = [f"{cores} cores, {workers} worker process(es): {per_worker} core(s) per worker"]
    plan: dict[str, CoreShare] = {}
    for name, endpoint in config.endpoints.items():
        threads = endpoint.threads_per_replica or max(1, per_worker // endpoint.replicas)
        plan[name] = CoreShare(endpoint.replicas, threads)
        used = endpoint.replicas * threads
        note = "" if used <= per_worker else f"  (oversubscribed: {used} threads > {per_worker})"
        lines.append(
            f"  {name}: {endpoint.replicas} replica(s) x {threads} thread(s) = {used} of "
            f"{per_worker} core(s){note}"
        )
    return plan, lines
