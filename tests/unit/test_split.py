"""Traffic splits: sticky A/B by user key, and the per-request canary split."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest

from surge.routing.split import WeightedSplit, sticky_arm

KEYS = [f"user-{i}" for i in range(10_000)]


def shares(weights: dict[str, float]) -> dict[str, float]:
    counts = Counter(sticky_arm(k, weights) for k in KEYS)
    return {arm: counts[arm] / len(KEYS) for arm in weights}


@pytest.mark.parametrize(
    "weights",
    [{"1": 50, "2": 50}, {"1": 90, "2": 10}, {"a": 60, "b": 30, "c": 10}, {"1": 99, "2": 1}],
)
def test_over_10000_keys_each_arm_is_within_2_points_of_its_weight(weights):
    total = sum(weights.values())
    for arm, share in shares(weights).items():
        assert abs(share - weights[arm] / total) <= 0.02, (arm, share)


def test_a_key_lands_on_the_same_arm_in_every_process_and_release():
    # Pinned values: a salted hash (Python's hash()) or a changed hash recipe would move
    # users to other arms after a restart, or between the server's worker processes.
    names = ("alice", "bob", "carol", "dave", "erin", "frank")
    assert [sticky_arm(k, {"1": 50, "2": 50}) for k in names] == ["1", "2", "1", "2", "2", "2"]
    # The order the arms are listed in does not matter.
    assert [sticky_arm(k, {"2": 50, "1": 50}) for k in names] == ["1", "2", "1", "2", "2", "2"]


def test_changing_one_arms_weight_moves_users_only_to_or_from_that_arm():
    before = {k: sticky_arm(k, {"a": 40, "b": 40, "c": 20}) for k in KEYS}
    raised = {k: sticky_arm(k, {"a": 40, "b": 70, "c": 20}) for k in KEYS}
    assert {(before[k], raised[k]) for k in KEYS if before[k] != raised[k]} == {
        ("a", "b"),
        ("c", "b"),
    }
    lowered = {k: sticky_arm(k, {"a": 40, "b": 10, "c": 20}) for k in KEYS}
    assert {(before[k], lowered[k]) for k in KEYS if before[k] != lowered[k]} == {
        ("b", "a"),
        ("b", "c"),
    }
    # Nobody moved between a and c, whose weights did not change.


def test_raising_the_candidate_only_moves_users_from_stable_to_candidate():
    at_5 = {k: sticky_arm(k, {"stable": 95, "candidate": 5}) for k in KEYS}
    at_25 = {k: sticky_arm(k, {"stable": 75, "candidate": 25}) for k in KEYS}
    assert all(at_25[k] == "candidate" for k, arm in at_5.items() if arm == "candidate")
    assert sum(a == "candidate" for a in at_25.values()) > sum(
        a == "candidate" for a in at_5.values()
    )


def test_zero_weight_arms_get_nobody_and_no_weight_at_all_is_an_error():
    assert {sticky_arm(k, {"1": 100, "2": 0}) for k in KEYS[:500]} == {"1"}
    with pytest.raises(ValueError):
        sticky_arm("x", {"1": 0})
    with pytest.raises(ValueError):
        WeightedSplit({"1": 0, "2": 0})


def test_weighted_split_gives_exact_shares_spread_out():
    split = WeightedSplit({"1": 95, "2": 5})
    picks = [split.pick() for _ in range(100)]
    assert Counter(picks) == {"1": 95, "2": 5}
    positions = [i for i, p in enumerate(picks) if p == "2"]
    assert min(b - a for a, b in itertools.pairwise(positions)) >= 10


def test_weighted_split_handles_fractional_percentages():
    split = WeightedSplit({"1": 99.5, "2": 0.5})
    assert Counter(split.pick() for _ in range(1000)) == {"1": 995, "2": 5}
    assert "2" not in {WeightedSplit({"1": 100, "2": 0}).pick() for _ in range(50)}
