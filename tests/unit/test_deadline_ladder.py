"""The deadline ladder: the rung a budget affords."""

from __future__ import annotations

import pytest

from surge.routing.deadline_ladder import LadderChoice, Rung, choose_rung

LADDER = (Rung("embed-large"), Rung("embed-base"), Rung("embed-small"))
ESTIMATES = {"embed-large": 0.420, "embed-base": 0.150, "embed-small": 0.040}

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
