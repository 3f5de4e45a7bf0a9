"""The Redis cache tier against a real Redis: values round-trip with their logical
expiry, stale reads work inside the stale window, a purge takes one endpoint's keys,
one process computes while another waits for its value, and a Redis that dies or
freezes costs a call at most about the timeout, never an exception, with one log line
each way.

The shared Redis at 127.0.0.1:6379 serves the tests that keep it up (a namespace per
test, deleted after); the outage tests start a private redis-server of their own.
Logical time is an injected wall clock, so expiry needs no sleeping.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
import uuid
from collections.abc import Iterator

import pytest

from surge.cache.redis_cache import PURGE_BATCH, RedisCache, Write
from surge.cluster.guarded_redis import TIMEOUTS_BEFORE_DOWN
from tests.redis_server import REDIS_SERVER, RedisServer, needs_redis, shared_redis_up

REDIS_URL = "redis://127.0.0.1:6379/0"
TIMEOUT_S = 0.5  # generous: a 2-core machine is shared
SLACK_S = 0.5  # what a loaded machine may add to it
PATIENCE_S = 8.0  # only a broken cache waits this long

pytestmark = pytest.mark.timeout(60)


needs_redis_server = pytest.mark.skipif(
    not os.path.exists(REDIS_SERVER), reason=f"{REDIS_SERVER} is absent (apt install redis)"
)


class Clock:
    def __init__(self) -> None:
        self.now = 1_750_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def namespace() -> Iterator[str]:
    name = f"test-cache-{uuid.uuid4().hex[:8]}"
    yield name

    async def drop() -> None:
        from redis.asyncio import Redis

        client = Redis.from_url(REDIS_URL)
        keys = [k async for k in client.scan_iter(match=f"{name}:*", count=1000)]
        if keys:
            await client.unlink(*keys)
        await client.aclose()

    if shared_redis_up():
        asyncio.run(drop())


async def _raw(command):
    from redis.asyncio import Redis

    client = Redis.from_url(REDIS_URL)
    try:
        return await command(client)
    finally:
        await client.aclose()


@needs_redis
def test_a_miss_then_a_hit_until_the_logical_expiry(namespace):
    clock = Clock()

    async def scenario() -> None:
        cache = RedisCache(REDIS_URL, namespace, timeout_s=TIMEOUT_S, wall=clock)
        await cache.start()
        assert await cache.get("embed:k") is None
        assert await cache.put("embed:k", b"\x00answer\xff", ttl_s=10)
        entry = await cache.get("embed:k")
        assert entry is not None and entry.value == b"\x00answer\xff" and not entry.stale
        assert entry.expires_at == clock.now + 10
        clock.now += 10
        assert await cache.get("embed:k") is None
        assert (cache.hits, cache.misses, cache.unavailable) == (1, 2, 0)
        # Nothing to store with no time to live.
        assert not await cache.put("embed:z", b"v", ttl_s=0)
        await cache.stop()

    asyncio.run(scenario())


@needs_redis
def test_a_stale_value_is_kept_for_the_stale_window_and_served_only_when_asked_for(namespace):
    clock = Clock()

    async def scenario() -> None:
        cache = RedisCache(REDIS_URL, namespace, timeout_s=TIMEOUT_S, stale_window_s=60, wall=clock)
        await cache.start()
        await cache.put("embed:k", b"v", ttl_s=10)
        pttl = await _raw(lambda c: c.pttl(cache.redis_key("embed:k")))
        assert 69_000 < pttl <= 70_000  # Redis keeps it for ttl + the stale window
        clock.now += 15
        assert await cache.get("embed:k") is None
        stale = await cache.get("embed:k", max_stale_s=30)
        assert stale is not None and stale.stale and stale.value == b"v"
        assert await cache.get("embed:k", max_stale_s=4) is None
        assert cache.stale_hits == 1
        await cache.stop()

    asyncio.run(scenario())


@needs_redis
def test_many_rows_are_read_and_written_in_one_round_trip_each(namespace):
    async def scenario() -> None:
        cache = RedisCache(REDIS_URL, namespace, timeout_s=TIMEOUT_S)
        await cache.start()
        rows = {f"embed:r{i}": f"row {i}".encode() for i in range(32) if i not in (3, 17)}
        assert await cache.put_many(rows, ttl_s=60)
        assert await cache.put_many([], ttl_s=60)
        found = await cache.get_many([f"embed:r{i}" for i in range(32)])
        assert [i for i, e in enumerate(found) if e is None] == [3, 17]
        assert found[5].value == b"row 5"
        assert await cache.get_many([]) == []
        pttl = await _raw(lambda c: c.pttl(cache.redis_key("embed:r5")))
        assert 59_000 < pttl <= 60_000
        await cache.stop()

    asyncio.run(scenario())


@needs_redis
def test_a_value_this_codec_did_not_write_is_a_miss(namespace):
    async def scenario() -> None:
        cache = RedisCache(REDIS_URL, namespace, timeout_s=TIMEOUT_S)
        await cache.start()
        await _raw(lambda c: c.set(cache.redis_key("embed:k"), b"garbage"))
        assert await cache.get("embed:k") is None
        assert (cache.corrupt, cache.misses) == (1, 1)
        await cache.stop()

    asyncio.run(scenario())


@needs_redis
def test_a_purge_takes_one_endpoints_keys_and_no_others(namespace):
    async def scenario() -> None:
        cache = RedisCache(REDIS_URL, namespace, timeout_s=TIMEOUT_S)
        other = RedisCache(REDIS_URL, namespace + "-other", timeout_s=TIMEOUT_S)
        await cache.start()
        await other.start()
        many = 2 * PURGE_BATCH + 7  # several SCAN steps
        await cache.put_many({f"embed:{i}": b"v" for i in range(many)}, ttl_s=60)
        await cache.put_many({"embed-large:1": b"v", "e*:1": b"v", "chat:1": b"v"}, ttl_s=60)
        await other.put("embed:1", b"v", ttl_s=60)  # another namespace: untouched
        result = await cache.purge("embed:")
        assert (result.deleted, result.complete) == (many, True)
        assert await cache.get("embed:1") is None
        left = await cache.get_many(["embed-large:1", "e*:1", "chat:1"])
        assert all(e is not None for e in left)
        assert (await cache.purge("e*:")).deleted == 1  # glob characters match literally
        assert await cache.get("embed-large:1") is not None
        assert await other.get("embed:1") is not None
        await other.purge("")
        await cache.stop()
        await other.stop()

    asyncio.run(scenario())


@needs_redis
def test_one_process_computes_while_another_waits_for_its_value(namespace):
    async def scenario() -> None:
        here = RedisCache(REDIS_URL, namespace, timeout_s=TIMEOUT_S)
        there = RedisCache(REDIS_URL, namespace, timeout_s=TIMEOUT_S)
        await here.start()
        await there.start()
        loop = asyncio.get_running_loop()
        assert await here.claim("embed:k", ttl_ms=10_000)
        assert not await there.claim("embed:k", ttl_ms=10_000)
        waiting = asyncio.ensure_future(there.wait_for("embed:k", loop.time() + PATIENCE_S))
        await asyncio.sleep(0.02)  # a few polls find nothing yet
        assert not waiting.done()
        await there.release("embed:k")  # not its lock: nothing happens
        assert not await there.claim("embed:k", ttl_ms=10_000)
        await here.put("embed:k", b"computed", ttl_s=60)
        await here.release("embed:k")
        entry = await waiting
        assert entry is not None and entry.value == b"computed"
        assert await there.claim("embed:k", ttl_ms=10_000)  # released: free to take
        await here.stop()
        await there.stop()

    asyncio.run(scenario())


@needs_redis
def test_a_miss_claims_its_computation_in_the_lookups_round_trip_and_hands_it_over(namespace):
    """The miss path's two round trips: MGET with the claim, then (in the background)
    the rows, the flight's answer and the lock's release. A second process's lookup
    finds the lock taken and waits; the hand-over wakes it with the answer."""

    async def scenario() -> None:
        here = RedisCache(REDIS_URL, namespace, timeout_s=TIMEOUT_S)
        there = RedisCache(REDIS_URL, namespace, timeout_s=TIMEOUT_S)
        await here.start()
        await there.start()
        loop = asyncio.get_running_loop()
        rows = ["embed:a", "embed:b"]
        found, taken = await here.get_many_and_claim(rows, "embed:f", 10_000)
        assert found == [None, None] and taken
        found, taken = await there.get_many_and_claim(rows, "embed:f", 10_000)
        assert found == [None, None] and not taken
        waiting = asyncio.ensure_future(there.wait_for("embed:f", loop.time() + PATIENCE_S))
        await asyncio.sleep(0.02)
        assert not waiting.done()
        pairs = [("embed:a", b"row a"), ("embed:b", b"row b")]
        stored = await here.write_batch([Write(pairs, 60, "embed:f", b"both rows", 10.0)])
        entry = await waiting
        assert stored and entry is not None and entry.value == b"both rows"
        found, taken = await there.get_many_and_claim(rows, "embed:f", 10_000)
        assert [e.value for e in found if e is not None] == [b"row a", b"row b"]
        assert taken  # the lock was released with the hand-over: free again
        await there.release("embed:f")
        await here.stop()
        await there.stop()

    asyncio.run(scenario())


@needs_redis
def test_a_waiter_stops_at_its_deadline_or_when_the_leader_is_gone(namespace):
    async def scenario() -> dict[str, float]:
        here = RedisCache(REDIS_URL, namespace, timeout_s=TIMEOUT_S)
        there = RedisCache(REDIS_URL, namespace, timeout_s=TIMEOUT_S)
        await here.start()
        await there.start()
        loop = asyncio.get_running_loop()
        waited = {}
        await here.claim("embed:slow", ttl_ms=30_000)
        started = loop.time()
        assert await there.wait_for("embed:slow", started + 0.1) is None
        waited["deadline"] = loop.time() - started
        # A leader that died: its lock expires, and the waiter computes on its own long
        # before its deadline.
        await here.claim("embed:dead", ttl_ms=100)
        started = loop.time()
        assert await there.wait_for("embed:dead", started + PATIENCE_S) is None
        waited["lock_expiry"] = loop.time() - started
        # No lock, no value: nobody is computing it.
        started = loop.time()
        assert await there.wait_for("embed:nobody", started + PATIENCE_S) is None
        waited["nobody"] = loop.time() - started
        await here.stop()
        await there.stop()
        return waited

    waited = asyncio.run(scenario())
    assert 0.1 <= waited["deadline"] < 0.1 + SLACK_S
    assert 0.05 <= waited["lock_expiry"] < 0.1 + SLACK_S
    assert waited["nobody"] < SLACK_S


@pytest.fixture
def server() -> Iterator[RedisServer]:
    redis = RedisServer()
    redis.start()
    yield redis
    redis.kill()


async def _until(condition, what: str) -> None:
    deadline = time.monotonic() + PATIENCE_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        await asyncio.sleep(0.01)


async def _every_call(cache: RedisCache) -> list:
    """Each kind of call, as serving would make it during an outage."""
    loop = asyncio.get_running_loop()
    return [
        await cache.get("embed:k"),
        await cache.get("embed:k", max_stale_s=60),
        await cache.get_many(["embed:k", "embed:j"]),
        await cache.put("embed:k", b"new", ttl_s=60),
        await cache.put_many({"embed:j": b"new"}, ttl_s=60),
        await cache.claim("embed:k", ttl_ms=1_000),
        await cache.wait_for("embed:k", loop.time() + 5),
        (await cache.purge("embed:")).complete,
    ]


OUTAGE_ANSWERS = [None, None, [None, None], False, False, True, None, False]


@needs_redis_server
def test_redis_stopped_every_call_answers_uncached_at_once_and_it_heals_by_itself(server, caplog):
    async def scenario() -> dict:
        cache = RedisCache(server.url(), _namespace(), timeout_s=TIMEOUT_S)
        await cache.start()
        await cache.put("embed:k", b"v", ttl_s=60)
        seen: dict = {"before": await cache.get("embed:k")}
        server.kill()
        started = time.monotonic()
        seen["first"] = await cache.get("embed:k")  # finds out: connection refused
        seen["healthy_during"] = cache.healthy
        seen["calls"] = [await _every_call(cache) for _ in range(10)]
        seen["outage_s"] = time.monotonic() - started
        seen["unavailable"] = cache.unavailable
        server.start()  # the same port, empty
        await _until(lambda: cache.healthy, "the cache to find redis again")
        seen["put_after"] = await cache.put("embed:k", b"again", ttl_s=60)
        seen["after"] = await cache.get("embed:k")
        await cache.stop()
        return seen

    with caplog.at_level(logging.INFO, logger="surge.security"):
        seen = asyncio.run(scenario())
    assert seen["before"].value == b"v"
    assert seen["first"] is None and not seen["healthy_during"]
    assert all(calls == OUTAGE_ANSWERS for calls in seen["calls"])
    assert seen["outage_s"] < TIMEOUT_S + SLACK_S  # 81 calls: failing fast, not waiting
    assert seen["unavailable"] >= 81
    assert seen["put_after"] and seen["after"].value == b"again"
    messages = [r.getMessage() for r in caplog.records if "response cache" in r.getMessage()]
    assert sum("unreachable" in m for m in messages) == 1, messages
    assert sum("reachable again" in m for m in messages) == 1, messages


@needs_redis_server
def test_a_frozen_redis_is_down_after_repeated_late_answers_and_costs_each_call_the_timeout(
    server, caplog
):
    timeout_s = 0.2

    async def scenario() -> dict:
        cache = RedisCache(server.url(), _namespace(), timeout_s=timeout_s)
        await cache.start()
        await cache.put("embed:k", b"v", ttl_s=60)
        server.signal(signal.SIGSTOP)
        seen: dict = {"late": []}
        try:
            for _ in range(TIMEOUTS_BEFORE_DOWN):
                started = time.monotonic()
                seen["late"].append((await cache.get("embed:k"), time.monotonic() - started))
            seen["healthy_after_late"] = cache.healthy
            started = time.monotonic()
            seen["fast"] = await cache.get("embed:k")
            seen["fast_s"] = time.monotonic() - started
        finally:
            server.signal(signal.SIGCONT)
        await _until(lambda: cache.healthy, "the cache to find redis again")
        seen["after"] = await cache.get("embed:k")
        await cache.stop()
        return seen

    with caplog.at_level(logging.INFO, logger="surge.security"):
        seen = asyncio.run(scenario())
    assert all(found is None and s < timeout_s + SLACK_S for found, s in seen["late"])
    assert not seen["healthy_after_late"]
    assert seen["fast"] is None and seen["fast_s"] < 0.05
    assert seen["after"].value == b"v"  # the same server, thawed: its data is there
    messages = [r.getMessage() for r in caplog.records if "response cache" in r.getMessage()]
    assert sum("unreachable" in m for m in messages) == 1, messages


def _namespace() -> str:
    return f"test-cache-{uuid.uuid4().hex[:8]}"


@needs_redis_server
def test_calls_late_together_in_one_stall_count_once_toward_an_outage(server):
    """A busy machine pauses Redis (or this process) for a moment: every call in flight
    then times out at once. That is one late answer, not twenty: Redis is called down
    only when calls sent after a late one are late too, TIMEOUTS_BEFORE_DOWN in a row."""
    timeout_s = 0.2

    async def scenario() -> dict:
        cache = RedisCache(server.url(), _namespace(), timeout_s=timeout_s)
        await cache.start()
        await cache.put("embed:k", b"v", ttl_s=60)
        server.signal(signal.SIGSTOP)
        seen: dict = {}
        try:
            stalled = await asyncio.gather(*(cache.get("embed:k") for _ in range(20)))
            seen["stall"] = (stalled, cache.healthy)
            for _ in range(TIMEOUTS_BEFORE_DOWN - 2):  # still late, one after another
                await cache.get("embed:k")
            seen["one_short"] = cache.healthy
            await cache.get("embed:k")
            seen["down"] = not cache.healthy
        finally:
            server.signal(signal.SIGCONT)
        await _until(lambda: cache.healthy, "the cache to find redis again")
        seen["after"] = await cache.get("embed:k")
        await cache.stop()
        return seen

    seen = asyncio.run(scenario())
    assert seen["stall"] == ([None] * 20, True)  # 20 late answers, one stall: still up
    assert seen["one_short"] and seen["down"]
    assert seen["after"].value == b"v"
