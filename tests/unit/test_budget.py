"""Tenant budgets: UTC windows and their resets, the warning and the refusal, tenants
counted apart, and spend shared through Redis so that a tenant over its budget in one
process is refused in another within a fraction of a second."""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from datetime import UTC, datetime

import pytest

from surge.config_security import BudgetConfig
from surge.core.errors import SurgeError
from surge.security.budget import (
    LocalBudgets,
    RedisBudgets,
    assess_budget,
    budget_error,
    reset_at,
    window_id,
)
from tests.redis_server import needs_redis

REDIS_URL = "redis://127.0.0.1:6379/0"
PATIENCE_S = 5.0

pytestmark = pytest.mark.timeout(60)


def unix(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


HALF_PAST = unix("2025-06-15T13:30:00")
BUDGETS = {"acme": BudgetConfig(per_hour=5.0, per_day=50.0), "zenith": BudgetConfig(per_hour=1.0)}


def test_windows_are_utc_clock_hours_and_days_that_reset_on_the_hour_and_at_midnight():
    assert reset_at("hour", unix("2025-06-15T13:59:59.999")) == unix("2025-06-15T14:00:00")
    assert reset_at("day", HALF_PAST) == unix("2025-06-16T00:00:00")
    assert window_id("hour", unix("2025-06-15T14:00:00")) == window_id("hour", HALF_PAST) + 1
    assert window_id("day", unix("2025-06-15T23:59:59")) == window_id("day", HALF_PAST)
    assert window_id("day", unix("2025-06-16T00:00:00")) == window_id("day", HALF_PAST) + 1


def test_the_check_names_the_exhausted_window_that_resets_last_or_the_nearest_to_its_budget():
    cfg = BudgetConfig(per_hour=5.0, per_day=20.0, warn_at=0.8)
    fine = assess_budget(cfg, {"hour": 1.0, "day": 12.0}, HALF_PAST)
    assert (fine.allowed, fine.window, fine.warn) == (True, "day", False)
    warned = assess_budget(cfg, {"hour": 4.0, "day": 12.0}, HALF_PAST)
    assert (warned.allowed, warned.window, warned.warn) == (True, "hour", True)
    refused = assess_budget(cfg, {"hour": 5.0, "day": 20.5}, HALF_PAST)
    assert (refused.allowed, refused.window, refused.spent) == (False, "day", 20.5)
    assert refused.reset_at == unix("2025-06-16T00:00:00")
    assert assess_budget(None, {"hour": 1e9}, HALF_PAST).allowed


def test_a_tenant_past_its_hourly_budget_is_refused_until_the_hour_turns(caplog):
    budgets = LocalBudgets(BUDGETS)

    async def scenario() -> None:
        with caplog.at_level(logging.WARNING, logger="surge.security"):
            for _ in range(4):
                await budgets.record("acme", 1.0, HALF_PAST)
            await budgets.record("acme", 0.5, HALF_PAST + 1)  # 4.5: still warned only once
            assert budgets.allowed("acme", HALF_PAST + 2).warn
            await budgets.record("acme", 0.52, HALF_PAST + 3)  # 5.02: over

    asyncio.run(scenario())
    with pytest.raises(SurgeError) as caught:
        budgets.check("acme", HALF_PAST + 4)
    error = caught.value
    assert (error.code, error.status) == ("budget_exhausted", 429)
    assert error.message == (
        "budget_exhausted: tenant acme spent 5.02 of its 5.00 hourly budget; "
        "resets at 2025-06-15T14:00:00Z"
    )
    assert error.retry_after_s == pytest.approx(1800 - 4)
    warnings = [r.getMessage() for r in caplog.records]
    assert sum("has spent" in m for m in warnings) == 1
    assert sum("refused until 2025-06-15T14:00:00Z" in m for m in warnings) == 1
    # The other tenant is untouched; the next hour starts from nothing (the day does not).
    assert budgets.allowed("zenith", HALF_PAST + 4).allowed
    budgets.check("acme", unix("2025-06-15T14:00:00"))
    assert budgets.spend_ratios(unix("2025-06-15T14:00:00")) == pytest.approx(
        {("acme", "hour"): 0.0, ("acme", "day"): 5.02 / 50, ("zenith", "hour"): 0.0}
    )


def test_tenants_without_a_budget_are_never_refused_but_their_spend_is_reported():
    budgets = LocalBudgets(BUDGETS)

    async def scenario() -> dict:
        await budgets.record("free", 1e6, HALF_PAST)
        await budgets.record("zenith", 0.25, HALF_PAST)
        return await budgets.spend(["free", "zenith"], HALF_PAST)

    spend = asyncio.run(scenario())
    assert budgets.allowed("free", HALF_PAST).allowed
    assert spend["free"].hour == 1e6 and spend["free"].per_hour is None
    assert (spend["zenith"].hour, spend["zenith"].per_hour) == (0.25, 1.0)
    assert spend["zenith"].hour_resets_at == "2025-06-15T14:00:00Z"


def test_budget_error_rounds_the_wait_up_to_a_second_at_least():
    check = assess_budget(BudgetConfig(per_hour=1.0), {"hour": 2.0}, unix("2025-06-15T13:59:59.9"))
    assert budget_error("acme", check, unix("2025-06-15T13:59:59.9")).retry_after_s == 1.0


async def _drop(namespace: str) -> None:
    from redis.asyncio import Redis

    client = Redis.from_url(REDIS_URL)
    keys = [k async for k in client.scan_iter(match=f"{namespace}:*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


@needs_redis
def test_spend_recorded_in_one_process_refuses_the_tenant_in_another_within_a_moment():
    namespace = f"test-budget-{uuid.uuid4().hex[:8]}"
    now = (time.time() // 3600) * 3600 + 1800  # this hour, so the keys' expiry is ahead

    async def scenario() -> tuple[float, dict, list, int]:
        here = RedisBudgets(REDIS_URL, namespace, BUDGETS, timeout_s=0.5)
        there = RedisBudgets(REDIS_URL, namespace, BUDGETS, timeout_s=0.5)
        await here.start()
        await there.start()
        try:
            assert there.allowed("acme", now).allowed
            await here.record("acme", 3.0, now)
            await here.record("acme", 2.5, now)
            assert not here.allowed("acme", now).allowed  # this process knows at once
            started = time.monotonic()
            while there.allowed("acme", now).allowed:
                assert time.monotonic() - started < PATIENCE_S, "never refused over there"
                await asyncio.sleep(0.01)
            took = time.monotonic() - started
            spend = await there.spend(["acme", "zenith"], now)
            keys = [k async for k in here.redis._client.scan_iter(match=f"{namespace}:*")]
            ttl = await here.redis._client.ttl(here.key("acme", "hour", window_id("hour", now)))
            return took, spend, keys, ttl
        finally:
            await here.stop()
            await there.stop()
            await _drop(namespace)

    took, spend, keys, ttl = asyncio.run(scenario())
    assert took < 0.5
    assert spend["acme"].hour == pytest.approx(5.5) and spend["acme"].day == pytest.approx(5.5)
    assert spend["zenith"].hour == 0.0  # counted apart
    assert len(keys) == 2  # one hour and one day key for the one tenant that spent
    assert 3600 < ttl <= 3 * 3600  # past its window's end, then gone


def test_spend_recorded_while_redis_is_away_is_counted_here_and_sent_when_it_is_back(caplog):
    from tests.unit.test_redis_limits import REDIS_SERVER, RedisServer

    if not os.path.exists(REDIS_SERVER):
        pytest.skip(f"{REDIS_SERVER} is absent (apt install redis)")
    server = RedisServer()
    server.start()
    now = (time.time() // 3600) * 3600 + 1800

    async def scenario() -> tuple[bool, bool, float]:
        here = RedisBudgets(server.url(), "budgets", BUDGETS, timeout_s=0.5)
        there = RedisBudgets(server.url(), "budgets", BUDGETS, timeout_s=0.5)
        await here.start()
        await there.start()
        server.kill()
        for _ in range(3):
            await here.record("zenith", 0.5, now)
            await asyncio.sleep(0.15)  # several failed sends: still one log line
        refused_meanwhile = not here.allowed("zenith", now).allowed  # counted here
        healthy_meanwhile = here.healthy
        server.start()  # the same port, empty
        started = time.monotonic()
        while (await there.spend(["zenith"], now))["zenith"].hour < 1.5:
            assert time.monotonic() - started < PATIENCE_S, "the spend never reached redis"
            await asyncio.sleep(0.05)
        seen_there = (await there.spend(["zenith"], now))["zenith"].hour
        await here.stop()
        await there.stop()
        return refused_meanwhile, healthy_meanwhile, seen_there

    try:
        with caplog.at_level(logging.INFO, logger="surge.security"):
            refused, healthy, seen_there = asyncio.run(scenario())
    finally:
        server.kill()
    assert refused and not healthy
    assert seen_there == pytest.approx(1.5)
    messages = [r.getMessage() for r in caplog.records if "budgets: redis" in r.getMessage()]
    assert sum("unreachable" in m for m in messages) == 2  # one per instance
    assert sum("reachable again" in m for m in messages) == 2
