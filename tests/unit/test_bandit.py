"""Bandit routing with seeded rngs: learning the best arm, segments, persistence, validation."""

from __future__ import annotations

import json
import math
import random

import pytest

from benchmarks.bandit_sim import simulate
from surge.routing.bandit import (
    BANDITS,
    EpsilonGreedy,
    ThompsonBandit,
    UniformRandom,
    bandit_from_dict,
    make_bandit,
)

ARMS = ("small", "medium", "large")


@pytest.mark.parametrize("seed", range(5))
def test_thompson_sends_nearly_all_late_traffic_to_the_best_arm(seed):
    run = simulate("thompson", (0.55, 0.70, 0.85), requests=2000, seed=seed)
    assert run["best_arm"] == "p0.85" and run["tail"] == 1000
    assert run["best_share_tail"] >= 0.90
    uniform = simulate("uniform", (0.55, 0.70, 0.85), requests=2000, seed=seed)
    assert run["regret"] < uniform["regret"] / 5


def test_epsilon_greedy_learns_the_best_arm_too():
    run = simulate("epsilon_greedy", (0.55, 0.70, 0.85), requests=2000, seed=0)
    # epsilon = 0.1 spends about 2/3 of 10 % on the other arms, so about 93 % at best
    assert run["best_share_tail"] >= 0.85


def test_segments_learn_independently():
    b = ThompsonBandit(ARMS, random.Random(1))
    for _ in range(50):
        for arm in ARMS:
            b.reward(arm, 1.0 if arm == "small" else 0.0, segment="short-inputs")
            b.reward(arm, 1.0 if arm == "large" else 0.0, segment="long-inputs")
    short = [b.choose("short-inputs") for _ in range(200)]
    long = [b.choose("long-inputs") for _ in range(200)]
    assert short.count("small") >= 190 and long.count("large") >= 190
    assert b.stats("short-inputs")["small"]["mean_reward"] == 1.0
    assert b.stats("long-inputs")["small"]["mean_reward"] == 0.0
    # the default segment learned from both (it serves segments without counts of their
    # own), and looking at a segment does not create it
    assert all(s["pulls"] == 100 for s in b.stats().values())
    assert b.stats("never-used")["large"] == {
        "pulls": 0, "chosen": 0, "mean_reward": 0.0, "alpha": 1.0, "beta": 1.0,
    }  # fmt: skip
    assert b.segments == ["", "short-inputs", "long-inputs"]


def test_thompson_updates_beta_fractionally():
    b = ThompsonBandit(ARMS, random.Random(0), prior=(2.0, 3.0))
    b.reward("medium", 0.25)
    b.reward("medium", 1.0)
    assert b.stats()["medium"] == {
        "pulls": 2, "chosen": 0, "mean_reward": 0.625, "alpha": 3.25, "beta": 3.75,
    }  # fmt: skip


def test_a_seeded_bandit_repeats_its_choices():
    def run(seed: int) -> list[str]:
        b = ThompsonBandit(ARMS, random.Random(seed))
        picks = []
        for i in range(100):
            arm = b.choose()
            b.reward(arm, (i % 3) / 2)
            picks.append(arm)
        return picks

    assert run(7) == run(7)
    assert run(7) != run(8)


def train(b, rounds: int = 300) -> None:
    quality = {"small": 0.2, "medium": 0.5, "large": 0.8}
    env = random.Random(99)
    for i in range(rounds):
        segment = "tenant-a" if i % 2 else ""
        arm = b.choose(segment)
        b.reward(arm, 1.0 if env.random() < quality[arm] else 0.0, segment)


@pytest.mark.parametrize("kind", sorted(BANDITS))
def test_a_restored_bandit_continues_identically_with_the_same_rng_seed(kind):
    rng = random.Random(5)
    original = make_bandit(kind, ARMS, rng)
    train(original)
    saved = json.loads(json.dumps(original.to_dict()))  # through JSON, as a store keeps it
    restored = bandit_from_dict(saved, random.Random(42))
    rng.seed(42)  # the original's rng, reseeded to where the restored one starts
    assert type(restored) is type(original)
    for segment in ("", "tenant-a", "new"):
        assert restored.stats(segment) == original.stats(segment)
    train(original, rounds=200)
    train(restored, rounds=200)
    assert restored.to_dict() == original.to_dict()
    assert restored.stats("tenant-a")["large"]["pulls"] > 0


def test_saved_state_carries_the_settings():
    b = EpsilonGreedy(ARMS, random.Random(0), epsilon=0.25)
    b.reward("large", 0.5, "t")
    saved = b.to_dict()
    assert saved["kind"] == "epsilon_greedy" and saved["settings"] == {"epsilon": 0.25}
    assert saved["segments"]["t"]["large"] == {"chosen": 0, "pulls": 1, "reward_sum": 0.5}
    assert EpsilonGreedy.from_dict(saved, random.Random(0)).epsilon == 0.25
    t = ThompsonBandit(ARMS, random.Random(0), prior=(1.0, 4.0))
    assert ThompsonBandit.from_dict(t.to_dict(), random.Random(0)).prior == (1.0, 4.0)
    with pytest.raises(ValueError, match="state of a 'epsilon_greedy' bandit, not 'thompson'"):
        ThompsonBandit.from_dict(saved, random.Random(0))


def test_restoring_with_changed_arms_keeps_the_counts_of_arms_kept():
    b = ThompsonBandit(ARMS, random.Random(0))
    b.reward("small", 1.0)
    b.reward("large", 0.0)
    restored = ThompsonBandit.from_dict(b.to_dict(), random.Random(0), arms=("large", "xl"))
    assert restored.arms == ("large", "xl")
    stats = restored.stats()
    assert set(stats) == {"large", "xl"}
    assert (stats["large"]["pulls"], stats["xl"]["pulls"]) == (1, 0)


@pytest.mark.parametrize("kind", sorted(BANDITS))
@pytest.mark.parametrize(
    ("arm", "reward", "words"),
    [("huge", 1.0, "unknown arm 'huge'"),
     ("small", -0.1, "reward must be a number in"),
     ("small", 1.5, "reward must be a number in"),
     ("small", math.nan, "reward must be a number in"),
     ("small", "1", "reward must be a number in")],
)  # fmt: skip
def test_reward_validation_refuses_and_changes_nothing(kind, arm, reward, words):
    b = make_bandit(kind, ARMS, random.Random(0))
    b.reward("medium", 1.0)
    before = b.to_dict()
    with pytest.raises(ValueError, match=words):
        b.reward(arm, reward)
    assert b.to_dict() == before


def test_epsilon_greedy_tries_every_arm_before_exploiting():
    b = EpsilonGreedy(ARMS, random.Random(3), epsilon=0.0)
    first = []
    for _ in ARMS:
        arm = b.choose()
        b.reward(arm, 1.0 if arm == "medium" else 0.0)
        first.append(arm)
    assert sorted(first) == sorted(ARMS)
    assert {b.choose() for _ in range(50)} == {"medium"}


def test_epsilon_greedy_spreads_requests_in_flight_over_untried_arms():
    b = EpsilonGreedy(ARMS, random.Random(3))
    # No reward has come back yet: the first requests still go one to each arm.
    assert sorted(b.choose() for _ in ARMS) == sorted(ARMS)
    b.reward("small", 1.0)
    assert {b.choose() for _ in range(6)} == {"medium", "large"}  # still untried


def test_epsilon_greedy_breaks_ties_with_the_rng_not_the_config_order():
    winners = set()
    for seed in range(30):
        b = EpsilonGreedy(ARMS, random.Random(seed), epsilon=0.0)
        for arm in ARMS:
            b.reward(arm, 0.0 if arm == "small" else 1.0)
        winners.add(b.choose())
    assert winners == {"medium", "large"}


def test_epsilon_greedy_explores_about_epsilon_of_the_time():
    b = EpsilonGreedy(ARMS, random.Random(11), epsilon=0.3)
    for arm in ARMS:
        b.reward(arm, 1.0 if arm == "large" else 0.0)
    picks = [b.choose() for _ in range(3000)]
    other = 1 - picks.count("large") / len(picks)
    assert other == pytest.approx(0.3 * 2 / 3, abs=0.03)


def test_uniform_is_a_strategy_like_the_others():
    b = make_bandit("uniform", ARMS, random.Random(0))
    assert isinstance(b, UniformRandom)
    picks = [b.choose() for _ in range(3000)]
    assert all(picks.count(arm) == pytest.approx(1000, abs=100) for arm in ARMS)


@pytest.mark.parametrize(
    ("call", "words"),
    [(lambda: make_bandit("greedy", ARMS, random.Random(0)), "unknown bandit 'greedy'"),
     (lambda: ThompsonBandit([], random.Random(0)), "at least one arm"),
     (lambda: ThompsonBandit(["a", "a"], random.Random(0)), "unique"),
     (lambda: ThompsonBandit(ARMS, random.Random(0), prior=(0.0, 1.0)), "prior"),
     (lambda: EpsilonGreedy(ARMS, random.Random(0), epsilon=1.5), "epsilon"),
     (lambda: bandit_from_dict({"format": 1, "kind": "x"}, random.Random(0)), "unknown bandit"),
     (lambda: ThompsonBandit.from_dict({"format": 9}, random.Random(0)), "format 9")],
)  # fmt: skip
def test_validation(call, words):
    with pytest.raises(ValueError, match=words):
        call()
