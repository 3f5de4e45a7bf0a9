"""Rate limits counted in Redis, against a private redis-server the tests start, kill,
freeze and restart: two limiters sharing it admit the limit once between them (not
twice), all-or-nothing holds across processes, and an outage either falls back to this
process's own count ("open") or refuses with 503 ("closed"), costing a request at most
the timeout, logged once each way.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator

import pytest

from surge.cluster.guarded_redis import TIMEOUTS_BEFORE_DOWN
from surge.core.errors import SurgeError
from surge.security import redis_limits
from surge.security.rate_limit import Limit, LocalLimiter, assess
from surge.security.redis_limits import GCRA_SHA, RedisLimiter
from tests.redis_server import REDIS_SERVER, RedisServer

TIMEOUT_S = 0.5  # the limiters' timeout: generous, a 2-core machine is shared
SLACK_S = 0.5  # what a loaded machine may add to it
PATIENCE_S = 8.0  # only a broken limiter waits this long

pytestmark = [
    pytest.mark.skipif(
        not os.path.exists(REDIS_SERVER), reason=f"{REDIS_SERVER} is absent (apt install redis)"
    ),
    pytest.mark.timeout(60),
]


@pytest.fixture
def server() -> Iterator[RedisServer]:
    redis = RedisServer()
    redis.start()
    yield redis
    redis.kill()


def _namespace() -> str:
    return f"test-{uuid.uuid4().hex[:8]}"


async def _until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + PATIENCE_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        await asyncio.sleep(0.01)


async def _server_time(url: str) -> float:
    from redis.asyncio import Redis

    client = Redis.from_url(url)
    seconds, micros = await client.time()
    await client.aclose()
    return seconds + micros / 1e6


def test_two_limiters_sharing_redis_admit_the_limit_once_between_them(server, monkeypatch):
    rate, burst, seconds = 200.0, 40, 3.0
    limit = Limit("tenant:acme", rate, burst)
    # Each check's instant on the Redis clock, read off the script's answer, so that one
    # sans-IO limiter can be fed the very same arrivals.
    arrivals: list[float] = []

    def recording_assess(entries, now, per_s=1.0):
        arrivals.append(now / per_s)
        return assess(entries, now, per_s)

    monkeypatch.setattr(redis_limits, "assess", recording_assess)

    async def offer(limiter: RedisLimiter, per_s: float, offset: float, start: float) -> list:
        checks = []
        for i in range(int(per_s * seconds)):
            delay = start + (i + offset) / per_s - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            checks.append(asyncio.ensure_future(limiter.check([(limit, 1)])))
        return await asyncio.gather(*checks)

    async def scenario() -> tuple[list, float]:
        namespace = _namespace()
        # A timeout here would mean a check decided locally, which is not under test;
        # a machine shared with others can pause redis-server for half a second.
        one = RedisLimiter(server.url(), namespace, timeout_s=3.0)
        two = RedisLimiter(server.url(), namespace, timeout_s=3.0)
        await one.start()
        await two.start()
        began = await _server_time(server.url())
        start = time.monotonic()
        # 3 x the rate in all, half from each limiter, interleaved.
        decisions = await asyncio.gather(
            offer(one, 1.5 * rate, 0.0, start), offer(two, 1.5 * rate, 0.5, start)
        )
        ended = await _server_time(server.url())
        await one.stop()
        await two.stop()
        return decisions[0] + decisions[1], ended - began

    decisions, span = asyncio.run(scenario())
    assert not any(d.degraded for d in decisions)
    admitted = sum(d.allowed for d in decisions)
    ceiling = rate * span + burst  # the most GCRA may admit in the span
    # On a loaded machine redis-server or this loop can be paused, leaving gaps in the
    # load in which a full bucket earns nothing, so fewer than the ceiling may go; one
    # limiter fed the same arrivals sees the same gaps: its count is the one to match.
    replay = LocalLimiter()
    reference = sum(replay.check([(limit, 1)], now).allowed for now in sorted(arrivals))
    print(
        f"admitted {admitted} of {len(decisions)} over {span:.3f} s; rate x time + burst "
        f"= {ceiling:.1f}; one limiter on the same arrivals: {reference}"
    )
    assert admitted <= ceiling + 1
    assert abs(admitted - reference) <= 0.01 * reference
    assert admitted < 0.5 * len(decisions)  # far from each process admitting the limit


def test_a_request_is_charged_to_every_limit_in_redis_only_when_all_allow_it(server):
    # Rates so slow that nothing refills while the test runs: the counts are exact.
    tenant = Limit("tenant:acme", 0.01, 3)
    key_a, key_b = Limit("key:aaaa", 0.01, 2), Limit("key:bbbb", 0.01, 5)

    async def scenario() -> tuple[list, list, int]:
        namespace = _namespace()
        one = RedisLimiter(server.url(), namespace, timeout_s=TIMEOUT_S)
        two = RedisLimiter(server.url(), namespace, timeout_s=TIMEOUT_S)
        first = [await one.check([(key_a, 1), (tenant, 1)]) for _ in range(4)]
        second = [await two.check([(key_b, 1), (tenant, 1)]) for _ in range(2)]
        remaining = (await two.check([(key_b, 1)])).remaining
        await one.stop()
        await two.stop()
        return first, second, remaining

    first, second, remaining = asyncio.run(scenario())
    assert [d.allowed for d in first] == [True, True, False, False]
    assert first[2].limit == key_a and first[2].retry_after_s == pytest.approx(100, abs=1)
    assert [d.allowed for d in second] == [True, False]  # the tenant's third unit, no more
    assert second[1].limit == tenant
    assert remaining == 3  # key_b paid for its one admitted request only


def test_a_bucket_key_expires_when_the_bucket_would_be_full_and_a_flushed_script_reloads(
    server,
):
    from redis.asyncio import Redis

    limit = Limit("key:k", 10.0, 5)

    async def scenario() -> tuple[int, int, bool]:
        namespace = _namespace()
        limiter = RedisLimiter(server.url(), namespace, timeout_s=TIMEOUT_S)
        raw = Redis.from_url(server.url())
        await limiter.check([(limit, 2)])
        ttl_ms = await raw.pttl(f"{namespace}:rl:key:k:requests")
        await raw.script_flush()
        assert await raw.script_exists(GCRA_SHA) == [False]
        after_flush = await limiter.check([(limit, 1)])
        await limiter.stop()
        await raw.aclose()
        return ttl_ms, after_flush.remaining, after_flush.degraded

    ttl_ms, remaining, degraded = asyncio.run(scenario())
    assert 0 < ttl_ms <= 200  # two units at 10/s take 0.2 s to earn back
    assert (remaining, degraded) == (2, False)


def test_fail_open_counts_in_this_process_alone_and_recovers_by_itself(server, caplog):
    limit, other = Limit("key:k", 0.01, 3), Limit("key:other", 1000.0, 1000)

    async def scenario() -> dict:
        limiter = RedisLimiter(
            server.url(), _namespace(), timeout_s=TIMEOUT_S, on_down="open", local=LocalLimiter()
        )
        await limiter.start()
        seen: dict = {"before": await limiter.check([(limit, 1)])}
        # Connections enough for a busy moment: all of them die with the server.
        await asyncio.gather(*(limiter.check([(other, 1)]) for _ in range(30)))
        server.kill()
        started = time.monotonic()
        seen["outage"] = [await limiter.check([(limit, 1)]) for _ in range(5)]
        seen["outage_s"] = time.monotonic() - started
        seen["healthy_during"] = limiter.healthy
        server.start()  # the same port
        await _until(lambda: limiter.healthy, "the limiter to find redis again")
        seen["after"] = await limiter.check([(limit, 1)])
        seen["busy_after"] = await asyncio.gather(*(limiter.check([(other, 1)]) for _ in range(30)))
        await limiter.stop()
        return seen

    with caplog.at_level(logging.INFO, logger="surge.security"):
        seen = asyncio.run(scenario())
    assert seen["before"].allowed and not seen["before"].degraded
    outage = seen["outage"]
    assert all(d.degraded for d in outage) and not seen["healthy_during"]
    # This process alone, from a full local bucket: its burst of 3, then refusals.
    assert [d.allowed for d in outage] == [True, True, True, False, False]
    assert seen["outage_s"] < TIMEOUT_S + SLACK_S
    # The restarted Redis lost its keys: a full bucket again, counted in Redis.
    assert seen["after"].allowed and not seen["after"].degraded
    assert seen["after"].remaining == 2
    assert not any(d.degraded for d in seen["busy_after"])  # no connection left stale
    messages = [r.getMessage() for r in caplog.records]
    assert sum("unreachable" in m for m in messages) == 1
    assert sum("reachable again" in m for m in messages) == 1


def test_fail_closed_refuses_with_503_while_redis_is_down(server):
    limit = Limit("key:k", 100.0)

    async def scenario() -> tuple[list, float, bool]:
        limiter = RedisLimiter(server.url(), _namespace(), timeout_s=TIMEOUT_S, on_down="closed")
        assert (await limiter.check([(limit, 1)])).allowed
        server.kill()
        errors = []
        started = time.monotonic()
        for _ in range(3):
            with pytest.raises(SurgeError) as caught:
                await limiter.check([(limit, 1)])
            errors.append(caught.value)
        took = time.monotonic() - started
        healthy = limiter.healthy
        await limiter.stop()
        return errors, took, healthy

    errors, took, healthy = asyncio.run(scenario())
    assert not healthy and took < TIMEOUT_S + SLACK_S
    for error in errors:
        assert (error.code, error.status, error.retry_after_s) == (
            "rate_limiter_unavailable",
            503,
            1.0,
        )


def test_a_frozen_redis_costs_a_few_checks_the_timeout_and_the_next_ones_nothing(server):
    # A late answer alone falls back for that check (a busy machine's event loop runs
    # late too); TIMEOUTS_BEFORE_DOWN in a row are an outage, and later checks wait on
    # nothing until a ping finds Redis again.
    limit = Limit("key:k", 100.0)

    async def scenario() -> list[float]:
        limiter = RedisLimiter(server.url(), _namespace(), timeout_s=0.2, on_down="open")
        await limiter.check([(limit, 1)])
        server.signal(signal.SIGSTOP)  # connections stay open and nothing answers
        took = []
        for _ in range(TIMEOUTS_BEFORE_DOWN + 2):
            started = time.monotonic()
            decision = await limiter.check([(limit, 1)])
            took.append(time.monotonic() - started)
            assert decision.degraded and decision.allowed
        server.signal(signal.SIGCONT)
        await _until(lambda: limiter.healthy, "the limiter to find redis again")
        assert not (await limiter.check([(limit, 1)])).degraded
        await limiter.stop()
        return took

    took = asyncio.run(scenario())
    late, rest = took[:TIMEOUTS_BEFORE_DOWN], took[TIMEOUTS_BEFORE_DOWN:]
    assert all(0.15 < t < 0.2 + 0.05 for t in late), took
    assert all(t < 0.05 for t in rest), took


def test_a_burst_of_concurrent_checks_queues_for_a_connection_and_is_no_outage(server):
    limit = Limit("key:k", 1000.0, 1000)

    async def scenario() -> tuple[list, bool]:
        limiter = RedisLimiter(server.url(), _namespace(), timeout_s=TIMEOUT_S, max_connections=2)
        decisions = await asyncio.gather(*(limiter.check([(limit, 1)]) for _ in range(300)))
        healthy = limiter.healthy
        await limiter.stop()
        return decisions, healthy

    decisions, healthy = asyncio.run(scenario())
    assert healthy and not any(d.degraded for d in decisions)
    assert sum(d.allowed for d in decisions) == 300
