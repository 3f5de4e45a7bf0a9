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


def test_the_past_fades_while_the_deployment_stands_idle_not_while_it_works():
    warm = [(rows, 0.005) for rows in (1, 4, 16)]
    slow = [(rows, 0.400) for rows in (16, 8, 4) * 20]
    busy, idle = fitted([]), fitted([])
    for model in (busy, idle):
        for rows, seconds in warm:
            model.observe_warmup(rows, seconds)
    now = 100.0
    for rows, seconds in slow:  # back to back: no idle time between batches
        now += seconds
        busy.observe(rows, seconds, finished_at=now)
        idle.observe(rows, seconds, finished_at=now)
    assert busy.estimate_s(4) == pytest.approx(0.400, rel=0.01)
    # Back-to-back batches fade by count only, exactly as without timestamps.
    counted = fitted(warm + slow)
    assert busy.estimate_s(4) == pytest.approx(counted.estimate_s(4))
    # After 5 s idle one fast batch outweighs the burst; busy, the same batch barely counts.
    busy.observe(4, 0.005, finished_at=now + 0.005)
    idle.observe(4, 0.005, finished_at=now + 5.0)
    assert busy.estimate_s(4) > 0.350
    assert idle.estimate_s(4) < 0.050


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
