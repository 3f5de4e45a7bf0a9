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
