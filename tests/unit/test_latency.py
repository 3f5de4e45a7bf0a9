"""The batch latency model: what admission and the deadline ladder believe a batch costs."""

from __future__ import annotations

import pytest

from surge.serving.latency import BatchLatencyModel


def fitted(samples: list[tuple[int, float]]) -> BatchLatencyModel:
    model = BatchLatencyModel()
    for rows, seconds in samples:
        model.observe(rows, seconds)
    return model


def test_fixed_plus_per_row_cost_is_recovered():
    model = fitted([(r, 0.010 + 0.002 * r) for r in (1, 4, 16, 1, 4, 16)])
    assert model.estimate_s(8) == pytest.approx(0.026)


def test_a_fixed_cost_per_batch_with_noise_never_shrinks_small_batches():
    # 150 ms whatever the size; jitter tilts the fit slightly downwards.
    model = fitted([(1, 0.151), (4, 0.150), (16, 0.149)])
    assert model.estimate_s(1) == pytest.approx(0.150, abs=0.002)
    assert model.estimate_s(16) == pytest.approx(0.150, abs=0.002)


def test_a_cost_proportional_to_rows_goes_through_the_origin():
    model = fitted([(1, 0.0009), (4, 0.0041), (16, 0.0160)])
    assert model.estimate_s(8) == pytest.approx(0.008, rel=0.05)
    assert model.estimate_s(0) == 0.0


def test_one_batch_size_only_is_flat_below_it_and_proportional_above():
    model = fitted([(8, 0.080)] * 3)
    assert model.estimate_s(1) == pytest.approx(0.080)
    assert model.estimate_s(16) == pytest.approx(0.160)
    model.observe(16, 0.120)  # a second size: back to a fitted line
    assert model.estimate_s(16) < 0.160


def test_small_batches_with_idle_gaps_between_them_keep_warm_ups_shape():
    # Warm-up measured 5 ms + 1 ms a row. Then only 1-row batches run, with 100 ms of
    # nothing between them: the 32-row estimate must stay near what a 32-row batch
    # costs, not extrapolate 32 times the 1-row cost.
    model = fitted([])
    for rows in (1, 8, 32):
        model.observe_warmup(rows, 0.005 + 0.001 * rows)
    now = 100.0
    for _ in range(60):
        now += 0.1
        model.observe(1, 0.006, finished_at=now)
    assert model.estimate_s(32) < 0.060


def test_an_idle_deployment_is_estimated_between_its_warm_cost_and_what_load_measured():
    model = fitted([])
    for rows in (1, 4, 16):
        model.observe_warmup(rows, 0.005)
    assert model.idle_estimate_s(4, now=0.0) == pytest.approx(0.005)  # no batch ran yet
    for i in range(40):
        model.observe(4, 0.400, finished_at=10.0 + 0.4 * i)
    last = 10.0 + 0.4 * 39
    assert model.idle_estimate_s(4, now=last) == pytest.approx(model.estimate_s(4))
    half = model.idle_estimate_s(4, now=last + model.idle_half_life_s)
    assert half == pytest.approx((0.005 + model.estimate_s(4)) / 2, rel=0.01)
    assert model.idle_estimate_s(4, now=last + 60) == pytest.approx(0.005, rel=0.01)
    assert model.estimate_s(4) > 0.390  # the estimate under load is unchanged by the wait
