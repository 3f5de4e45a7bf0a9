"""Bandit counts add up across processes: what one learned is merged, never lost or doubled."""

from __future__ import annotations

import random

from surge.routing.bandit import bandit_from_dict, make_bandit
from surge.serving.bandit_route import add_counts


def learn(seed: int, pulls: int) -> dict:
    bandit = make_bandit("thompson", ["a", "b"], random.Random(seed))
    for _ in range(pulls):
        arm = bandit.choose("t1")
        bandit.reward(arm, 1.0 if arm == "b" else 0.0, "t1")
    return bandit.to_dict()


def test_two_processes_deltas_sum_into_the_shared_counts():
    first, second = learn(0, 30), learn(1, 50)
    shared = add_counts(add_counts(None, first), second)
    totals = shared["segments"]["t1"]
    assert sum(c["pulls"] for c in totals.values()) == 80
    assert totals["b"]["reward_sum"] == (
        first["segments"]["t1"]["b"]["reward_sum"] + second["segments"]["t1"]["b"]["reward_sum"]
    )
    assert (
        bandit_from_dict(shared, random.Random(0)).stats("t1")["b"]["pulls"] == totals["b"]["pulls"]
    )


def test_only_what_was_learned_since_the_last_sync_is_added_again():
    synced = learn(0, 30)
    bandit = bandit_from_dict(synced, random.Random(2))
    for _ in range(5):
        bandit.reward(bandit.choose("t2"), 1.0, "t2")
    delta = bandit.take_learned()
    assert "t1" not in delta["segments"]
    assert sum(c["pulls"] for c in delta["segments"]["t2"].values()) == 5
    merged = add_counts(synced, delta)
    assert sum(c["pulls"] for c in merged["segments"]["t1"].values()) == 30
    assert bandit.take_learned()["segments"] == {}  # handed over once
