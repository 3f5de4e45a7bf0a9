"""Which refusals burst modes count as overload: a lack of capacity, not a deadline no
idle deployment could meet, nor one the mode itself shortened."""

from __future__ import annotations

import asyncio
import threading

import pytest

from surge.config import ModesConfig
from surge.observe.metrics import Metrics
from surge.serving.admission import CLIENT_BELOW_FLOOR, client_deadline_source, signals_overload
from surge.serving.mode_driver import ModeDriver

UNLOADED_S = 0.010  # a batch on an idle deployment


@pytest.mark.parametrize(
    ("code", "deadline_from", "budget_s", "overload"),
    [
        ("queue_full", "client", 0.000001, True),
        ("deadline_infeasible", "endpoint", 2.0, True),
        ("deadline_expired_in_queue", "endpoint", 2.0, True),
        ("deadline_exceeded", "client", 0.5, True),  # feasible when idle: load missed it
        ("deadline_infeasible", "client", 0.000001, False),  # X-Request-Timeout-Ms: 0.001
        ("deadline_infeasible", "mode", 0.25, False),  # the mode's own cap
        ("deadline_exceeded", "mode", 0.25, False),
        ("shed", "endpoint", 2.0, False),  # a mode's shedding
        ("not_ready", "endpoint", 2.0, False),
    ],
)
def test_which_refusals_signal_overload(code, deadline_from, budget_s, overload):
    assert signals_overload(code, deadline_from, budget_s, UNLOADED_S) is overload


def test_the_modes_rejection_signal_counts_overload_refusals_only():
    metrics = Metrics()
    embed = metrics.for_endpoint("embed")
    driver = ModeDriver(ModesConfig(), {}, {}, metrics, store=None)
    driver.sample()
    for _ in range(90):  # refused, but not for lack of capacity
        embed.count_rejection("deadline_infeasible", overload=False)
        embed.count_response(504)
    for _ in range(10):
        embed.count_response(200)
    assert driver.sample().rejection_rate == 0.0
    for _ in range(5):
        embed.count_rejection("queue_full", overload=True)
        embed.count_response(429)
    for _ in range(15):
        embed.count_response(200)
    assert driver.sample().rejection_rate == pytest.approx(5 / 20)


FLOOR_S = 0.050  # modes.min_client_deadline_ms by default


@pytest.mark.parametrize(
    ("timeout_s", "source"),
    [
        (0.000001, CLIENT_BELOW_FLOOR),
        (0.049, CLIENT_BELOW_FLOOR),
        (0.050, "client"),
        (2.0, "client"),
    ],
)
def test_a_client_deadline_below_the_floor_is_only_the_clients_business(timeout_s, source):
    assert client_deadline_source(timeout_s, FLOOR_S) == source


@pytest.mark.parametrize(
    ("code", "unloaded_s", "overload"),
    [
        # No warm-up and no batch yet: the unloaded cost is 0, which 0.001 ms "beats".
        ("deadline_infeasible", 0.0, False),
        # A fast model: 1 ms beats its unloaded cost but not its batching delay.
        ("deadline_infeasible", 0.0002, False),
        ("deadline_exceeded", 0.0, False),
        ("deadline_expired_in_queue", 0.0, False),
        ("queue_full", 0.0, True),  # a full queue is the server's, whoever set the deadline
    ],
)
def test_refusals_of_deadlines_below_the_floor_are_not_overload(code, unloaded_s, overload):
    assert signals_overload(code, CLIENT_BELOW_FLOOR, 0.001, unloaded_s) is overload


def _refusals(embed, refused: int, answered: int) -> None:
    for _ in range(refused):
        embed.count_rejection("queue_full", overload=True)
        embed.count_response(429)
    for _ in range(answered):
        embed.count_response(200)


def test_a_refusal_share_over_three_requests_does_not_flip_the_mode():
    metrics = Metrics()
    embed = metrics.for_endpoint("embed")
    driver = ModeDriver(ModesConfig(), {}, {}, metrics, store=None)
    asyncio.run(driver.tick())
    _refusals(embed, refused=2, answered=1)
    assert asyncio.run(driver.tick()) is None
    assert driver.mode == "normal" and driver.signals.offered == 3
    _refusals(embed, refused=2, answered=18)  # 10 % of 20: overload, enough to say so
    change = asyncio.run(driver.tick())
    assert change is not None and change.to_mode == "emergency"


class StuckRegistry:
    """A registry whose database stopped answering: each call waits for `release`."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.audited: list[str] = []

    def append_audit(self, **entry) -> None:
        self.release.wait(5.0)
        self.audited.append(entry["reason"])


def test_a_mode_change_is_applied_without_waiting_for_its_audit():
    async def scenario() -> tuple[ModeDriver, float, StuckRegistry]:
        metrics = Metrics()
        store = StuckRegistry()
        driver = ModeDriver(ModesConfig(evaluate_interval_s=3600), {}, {}, metrics, store=store)
        driver.start()
        await driver.tick()
        _refusals(metrics.for_endpoint("embed"), refused=50, answered=50)
        loop = asyncio.get_running_loop()
        started = loop.time()
        change = await driver.tick()
        took = loop.time() - started
        assert change is not None and driver.mode == "emergency"
        assert driver.shed_below == 1  # the switches apply at once, audit or not
        store.release.set()
        await driver.stop()  # drains the audit
        return driver, took, store

    _, took, store = asyncio.run(scenario())
    assert took < 0.5
    assert len(store.audited) == 1 and store.audited[0].startswith("normal -> emergency")
