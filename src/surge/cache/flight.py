"""The vocabulary of one computation shared by identical requests (single-flight):
its name, how long its waiters may wait, and the error that sends them to compute for
themselves. The request path that uses them is serving/response_cache.py."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from surge.cache.keys import endpoint_key
from surge.core.errors import SurgeError

if TYPE_CHECKING:
    from surge.core.context import RequestContext

FLIGHT_RESULT_TTL_S = 10.0  # a cross-process leader's answer, kept for its waiters


class LeaderDeadline(SurgeError):
    """The computing request's own deadline ran out: its waiters, whose deadlines may be
    later, compute for themselves rather than share a failure that was not theirs."""


def flight_key(endpoint: str, keys: list[str]) -> str:
    """The name of a computation of these rows (stored keys); one row's is its key,
    marked: a flight's Redis lock and hand-over value must not land on the row's entry."""
    if len(keys) == 1:
        return keys[0] + "~"
    digest = hashlib.blake2b("|".join(keys).encode(), digest_size=16).hexdigest()
    return endpoint_key(endpoint, digest)


def time_left(ctx: RequestContext, now: float) -> float:
    """What a waiter may wait (never zero: a timer of 0 would not wait at all)."""
    return max(0.001, ctx.remaining_s(now))


def lock_ttl_ms(ctx: RequestContext, now: float) -> int:
    """How long a claim holds its lock: about the longest its computation may take."""
    return max(1, int(time_left(ctx, now) * 1000))
