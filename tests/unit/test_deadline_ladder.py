"""The deadline ladder: latency percentiles over a window, and the rung a budget affords."""

from __future__ import annotations

import numpy as np
import pytest

from surge.routing.deadline_ladder import LadderChoice, LatencyTracker, Rung, choose_rung

LADDER = (Rung("embed-large"), Rung("embed-base"), Rung("embed-small"))
ESTIMATES = {"embed-large": 0.420, "embed-base": 0.150, "embed-small": 0.040}

# -- LatencyTracker ----------------------------------------------------------------------


def test_the_prior_stands_until_the_first_observation():
    tracker = LatencyTracker(prior_s=0.25)
    assert tracker.estimate() == 0.25 and tracker.count == 0
    tracker.observe(0.010)
    assert tracker.estimate() == pytest.approx(0.010)


def test_the_estimate_is_numpys_percentile_of_the_observations():
    rng = np.random.default_rng(7)
    seq = rng.lognormal(mean=-4, sigma=0.6, size=300)
    tracker = LatencyTracker(quantile=0.95, recompute_every=1)
    for s in seq:
        tracker.observe(float(s))
    assert tracker.estimate() == pytest.approx(np.quantile(seq, 0.95))
    p50 = LatencyTracker(quantile=0.5, recompute_every=1)
    for s in seq:
        p50.observe(float(s))
    assert p50.estimate() == pytest.approx(np.median(seq))


def test_the_window_forgets_old_observations():
    tracker = LatencyTracker(quantile=0.95, window=100, recompute_every=1)
    for _ in range(100):
        tracker.observe(1.0)  # a slow spell
    assert tracker.estimate() == pytest.approx(1.0)
    recent = np.linspace(0.01, 0.02, 100)
    for s in recent:
        tracker.observe(float(s))
    assert tracker.count == 100
    assert tracker.estimate() == pytest.approx(np.quantile(recent, 0.95))


def test_the_percentile_is_recomputed_at_most_every_n_observations():
    tracker = LatencyTracker(quantile=1.0, recompute_every=10)
    for _ in range(20):
        tracker.observe(0.010)
    assert tracker.estimate() == pytest.approx(0.010)
    for _ in range(9):
        tracker.observe(5.0)
        assert tracker.estimate() == pytest.approx(0.010)  # the cached value
    tracker.observe(5.0)  # the 10th since the last computation
    assert tracker.estimate() == pytest.approx(5.0)


def test_a_young_window_refreshes_as_its_samples_double():
    # with only one sample cached, waiting for 16 more would pin the estimate to it
    tracker = LatencyTracker(quantile=1.0, recompute_every=16)
    tracker.observe(0.010)
    assert tracker.estimate() == pytest.approx(0.010)
    tracker.observe(0.500)
    assert tracker.estimate() == pytest.approx(0.500)


@pytest.mark.parametrize(
    "kwargs",
    [{"quantile": 1.5}, {"window": 0}, {"prior_s": -1.0}, {"recompute_every": 0}],
)
def test_tracker_settings_are_validated(kwargs):
    with pytest.raises(ValueError):
        LatencyTracker(**kwargs)


@pytest.mark.parametrize("bad", [-0.001, float("nan"), float("inf")])
def test_a_nonsense_latency_is_refused(bad):
    tracker = LatencyTracker()
    with pytest.raises(ValueError, match="latency"):
        tracker.observe(bad)
    assert tracker.count == 0


# -- choose_rung --------------------------------------------------------------------------


def test_the_best_rung_serves_when_it_fits():
    choice = choose_rung(LADDER, ESTIMATES, remaining_s=1.0)
    assert choice == LadderChoice(
        target="embed-large",
        rung=0,
        degraded=False,
        estimate_s=0.420,
        remaining_s=1.0,
        reason="embed-large fits: needs ~420 ms, 1000 ms left",
    )


def test_a_middle_rung_serves_degraded_and_the_reason_names_both():
    choice = choose_rung(LADDER, ESTIMATES, remaining_s=0.300)
    assert (choice.target, choice.rung, choice.degraded) == ("embed-base", 1, True)
    assert choice.estimate_s == 0.150 and choice.remaining_s == 0.300
    assert choice.reason == "embed-large needs ~420 ms, 300 ms left: served by embed-base (~150 ms)"


def test_when_nothing_fits_the_cheapest_serves_degraded():
    choice = choose_rung(LADDER, ESTIMATES, remaining_s=0.030)
    assert (choice.target, choice.rung, choice.degraded) == ("embed-small", 2, True)
    assert choice.reason.startswith("nothing fits")
    assert "embed-small needs ~40 ms" in choice.reason and "30 ms left" in choice.reason


def test_a_spent_budget_still_gets_an_answer_from_the_cheapest():
    choice = choose_rung(LADDER, ESTIMATES, remaining_s=-0.005)
    assert (choice.target, choice.degraded) == ("embed-small", True)


def test_the_safety_margin_keeps_a_rung_that_fits_only_without_it_out():
    # 0.420 s fits in 0.450 s, but not in 0.450 * 0.9 = 0.405 s
    choice = choose_rung(LADDER, ESTIMATES, remaining_s=0.450)
    assert (choice.target, choice.degraded) == ("embed-base", True)
    assert "405 ms within the 90% safety margin" in choice.reason
    # without a margin it fits
    assert choose_rung(LADDER, ESTIMATES, remaining_s=0.450, safety_margin=1.0).rung == 0
    # an estimate exactly at the usable budget fits
    assert choose_rung(LADDER, ESTIMATES, remaining_s=0.420 / 0.5, safety_margin=0.5).rung == 0


def test_a_single_rung_ladder_serves_it_degraded_only_when_it_does_not_fit():
    one = (Rung("only"),)
    assert choose_rung(one, {"only": 0.1}, remaining_s=1.0).degraded is False
    late = choose_rung(one, {"only": 0.1}, remaining_s=0.05)
    assert (late.target, late.degraded) == ("only", True)
    assert (
        late.reason == "nothing fits: only needs ~100 ms, 50 ms left: served by the cheapest, only"
    )


def test_a_nan_estimate_never_fits():
    choice = choose_rung(LADDER, {**ESTIMATES, "embed-large": float("nan")}, remaining_s=1.0)
    assert (choice.target, choice.degraded) == ("embed-base", True)


def test_empty_rungs_missing_estimates_and_bad_margins_are_refused():
    with pytest.raises(ValueError, match="at least one rung"):
        choose_rung((), ESTIMATES, remaining_s=1.0)
    with pytest.raises(ValueError, match="embed-small"):
        choose_rung(LADDER, {"embed-large": 0.4, "embed-base": 0.1}, remaining_s=1.0)
    for margin in (0.0, 1.5):
        with pytest.raises(ValueError, match="safety_margin"):
            choose_rung(LADDER, ESTIMATES, remaining_s=1.0, safety_margin=margin)
    with pytest.raises(ValueError):
        Rung("")


def test_trackers_drive_the_ladder_as_load_shifts():
    trackers = {r.target: LatencyTracker(window=50, recompute_every=1) for r in LADDER}
    for _ in range(50):
        trackers["embed-large"].observe(0.100)
        trackers["embed-base"].observe(0.050)
        trackers["embed-small"].observe(0.010)

    def pick() -> LadderChoice:
        return choose_rung(LADDER, {t: tr.estimate() for t, tr in trackers.items()}, 0.200)

    assert pick().target == "embed-large"
    for _ in range(50):  # the large model's queue backs up
        trackers["embed-large"].observe(0.600)
    assert (pick().target, pick().degraded) == ("embed-base", True)
