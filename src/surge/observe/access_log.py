"""A sampled access log: one structured line per chosen request, every 5xx always.

Per-request INFO logging on the hot path costs more than a small model's compute, so
the default sample is 0 and then `maybe_log` is one comparison for a good answer.
Lines go to the `surge.access` logger with their fields in `extra=`, which the JSON
formatter (`logs.py`) writes as keys: request_id, endpoint, status, total_ms, ...
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable

from surge.config_observe import LogsConfig
from surge.core.context import RequestContext

log = logging.getLogger("surge.access")


class AccessLog:
    def __init__(self, config: LogsConfig, rng: Callable[[], float] = random.random) -> None:
        self.sample = config.access_log_sample
        self.rng = rng

    def maybe_log(self, ctx: RequestContext) -> None:
        if ctx.status < 500 and (self.sample == 0.0 or self.rng() >= self.sample):
            return
        end = ctx.stamps.get("responded", ctx.received)
        total_ms = round((end - ctx.received) * 1000.0, 3)
        served = next((r["model"] for r in reversed(ctx.runs) if r.get("role") == ctx.role), None)
        fields = {
            "request_id": ctx.request_id,
            "endpoint": ctx.endpoint,
            "status": ctx.status,
            "total_ms": total_ms,
            "model": served,
            "tenant": ctx.tenant,
            "error": ctx.error,
            "degraded": ctx.degraded,
            "cache_hit": ctx.cache_hit,
        }
        # A 5xx is a warning, not info: it must still show when the level is raised.
        level = logging.WARNING if ctx.status >= 500 else logging.INFO
        log.log(level, "%s %d %.1fms", ctx.endpoint, ctx.status, total_ms, extra=fields)
