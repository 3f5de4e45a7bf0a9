"""Which refusals burst modes count as overload: a lack of capacity, not a deadline no
idle deployment could meet, nor one the mode itself shortened."""

from __future__ import annotations

import pytest

from surge.config import ModesConfig
from surge.observe.metrics import Metrics
from surge.serving.admission import signals_overload
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
