"""The periodic-task helper: a failing tick is logged and the loop goes on; stop cancels
and waits. Ticks are awaited through events, never by sleeping a guessed while."""

from __future__ import annotations

import asyncio
import logging

import pytest

from surge.core.periodic import Periodic

QUICK_S = 0.001
PATIENCE_S = 5.0  # only a broken loop waits this long


def test_a_tick_that_raises_is_logged_and_the_loop_goes_on(caplog):
    async def scenario() -> tuple[int, int]:
        calls = 0
        third = asyncio.Event()

        async def tick() -> None:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise RuntimeError("the store hiccupped")
            if calls == 3:
                third.set()

        ticker = Periodic("flaky", QUICK_S, tick)
        ticker.start()
        await asyncio.wait_for(third.wait(), PATIENCE_S)
        await ticker.stop()
        return calls, ticker.failures

    with caplog.at_level(logging.ERROR, logger="surge.periodic"):
        calls, failures = asyncio.run(scenario())
    assert calls >= 3 and failures == 1
    [record] = caplog.records
    assert "flaky failed" in record.getMessage() and record.exc_info is not None


def test_stop_cancels_a_tick_under_way_and_no_tick_follows():
    async def scenario() -> tuple[bool, int, int, bool]:
        calls = 0
        started = asyncio.Event()
        cancelled = False

        async def tick() -> None:
            nonlocal calls, cancelled
            calls += 1
            started.set()
            try:
                await asyncio.Event().wait()  # a tick that never finishes on its own
            except asyncio.CancelledError:
                cancelled = True
                raise

        ticker = Periodic("stuck", QUICK_S, tick, first_tick_now=True)
        ticker.start()
        await asyncio.wait_for(started.wait(), PATIENCE_S)
        await asyncio.wait_for(ticker.stop(), PATIENCE_S)
        stopped_at = calls
        for _ in range(10):  # let the loop run: a live ticker would tick again
            await asyncio.sleep(0)
        return cancelled, stopped_at, calls, ticker.running

    cancelled, stopped_at, calls, running = asyncio.run(scenario())
    assert cancelled and stopped_at == calls == 1 and not running


def test_the_first_tick_waits_an_interval_unless_asked_now():
    async def scenario(first_tick_now: bool) -> int:
        calls = 0

        async def tick() -> None:
            nonlocal calls
            calls += 1

        ticker = Periodic("hourly", 3600.0, tick, first_tick_now=first_tick_now)
        ticker.start()
        for _ in range(10):
            await asyncio.sleep(0)
        await ticker.stop()
        return calls

    assert asyncio.run(scenario(first_tick_now=True)) == 1
    assert asyncio.run(scenario(first_tick_now=False)) == 0


def test_start_stop_and_restart():
    async def scenario() -> None:
        async def tick() -> None:
            pass

        ticker = Periodic("twice", 3600.0, tick)
        await ticker.stop()  # never started: nothing to do
        ticker.start()
        with pytest.raises(RuntimeError, match="already running"):
            ticker.start()
        assert ticker.running
        await ticker.stop()
        assert not ticker.running
        ticker.start()  # a stopped ticker may start again
        assert ticker.running
        await ticker.stop()

    asyncio.run(scenario())


@pytest.mark.parametrize("interval_s", [0.0, -1.0, float("nan")])
def test_the_interval_must_be_positive(interval_s):
    async def tick() -> None:
        pass

    with pytest.raises(ValueError, match="interval_s must be positive"):
        Periodic("bad", interval_s, tick)
