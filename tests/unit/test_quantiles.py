"""Quantiles from histogram buckets: Prometheus' rule, and one answer for every reader."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from surge.config import Config, ModesConfig
from surge.observe.metrics import LATENCY_BUCKETS_S, Metrics
from surge.observe.observer import Observer
from surge.observe.quantiles import histogram_quantile
from surge.observe.snapshot import build_snapshot
from surge.serving.mode_driver import ModeDriver

BOUNDS = (0.1, 0.2, 0.4)


@pytest.mark.parametrize(
    ("counts", "q", "expected"),
    [
        # Linear inside the bucket holding the q-th observation: rank 0.5 * 4 = 2 is half
        # way through the 4 observations in (0.1, 0.2].
        ((0, 4, 0, 0), 0.5, 0.15),
        ((0, 4, 0, 0), 1.0, 0.2),
        # The first bucket starts at 0.
        ((4, 0, 0, 0), 0.25, 0.025),
        # Across buckets: rank 0.9 * 10 = 9 is the 3rd of the 4 in (0.2, 0.4].
        ((2, 4, 4, 0), 0.9, 0.2 + 0.2 * 3 / 4),
        # Past the largest finite bound nothing is known: that bound.
        ((0, 0, 1, 9), 0.99, 0.4),
        ((0, 0, 0, 3), 0.5, 0.4),
        # Empty buckets hold no rank: q=0 is where the first observation's bucket starts.
        ((0, 0, 2, 0), 0.0, 0.2),
    ],
)
def test_the_rule_is_prometheus_histogram_quantile(counts, q, expected):
    assert histogram_quantile(counts, BOUNDS, q) == pytest.approx(expected)


def test_no_observations_have_no_quantile():
    assert histogram_quantile((0, 0, 0, 0), BOUNDS, 0.99) is None


@pytest.mark.parametrize(
    ("counts", "q", "words"),
    [((1, 0, 0, 0), 1.5, "in \\[0, 1\\]"),
     ((1, 0, 0, 0), float("nan"), "in \\[0, 1\\]"),
     ((1, 0, 0), 0.5, "3 bounds need 4 counts")],
)  # fmt: skip
def test_a_bad_quantile_or_bucket_count_is_refused(counts, q, words):
    with pytest.raises(ValueError, match=words):
        histogram_quantile(counts, BOUNDS, q)


def test_the_dashboard_and_the_burst_modes_see_the_same_p99():
    metrics = Metrics()
    digits = metrics.for_endpoint("digits")
    target_p99_s = 0.1
    driver = ModeDriver(ModesConfig(target_p99_ms=target_p99_s * 1000), {}, {}, metrics, store=None)
    driver.sample()  # the driver reads what changed since its last sample: start from here
    for i in range(200):  # 0-98 ms over several buckets, and one past the largest bound
        digits.total.observe(20.0 if i == 0 else 0.002 * (i % 50))

    modes_p99_s = driver.sample().p99_ratio * target_p99_s
    config = Config(observability={"receipts": {"enabled": False}})
    state = SimpleNamespace(
        observer=Observer(config, metrics, machine_cores=4),
        metrics=metrics,
        endpoints={},
        routes={},
    )
    [row] = build_snapshot(state, now=100.0)["endpoints"]
    dashboard_p99_ms = row["latency"]["total"]["p99_ms"]

    expected_s = histogram_quantile(digits.total.counts, LATENCY_BUCKETS_S, 0.99)
    assert expected_s is not None
    assert modes_p99_s == pytest.approx(expected_s)
    assert dashboard_p99_ms == pytest.approx(expected_s * 1000, abs=0.001)  # rounded to µs
