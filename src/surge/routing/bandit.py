"""Bandit routing: learn, per segment, which arm (deployment) earns the most reward.

A segment is any key the caller picks to learn separately (a tenant, an input-size
bucket); each starts from nothing on first use, so keep segment keys bounded. The
caller calls `choose(segment)` per request and later `reward(arm, r, segment)` with
r in [0, 1] (1 = a good answer). Randomness comes only from the injected rng, so a
seeded run repeats exactly. Strategies are chosen by name through `make_bandit`.

The state is sufficient statistics per (segment, arm) in plain JSON (`to_dict`), so
the server can persist it and share it between processes.
"""

from __future__ import annotations

import math
import numbers
import random
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Self

STATE_FORMAT = 1


@dataclass(slots=True)
class ArmCounts:
    chosen: int = 0  # times `choose` picked the arm; may run ahead of pulls while in flight
    pulls: int = 0  # rewards received
    reward_sum: float = 0.0

    @property
    def mean_reward(self) -> float:
        return self.reward_sum / self.pulls if self.pulls else 0.0


class Bandit(ABC):
    """What every strategy shares: arms, per-segment counts, validation, persistence.
    A strategy supplies `_pick` and, if it has settings, `_settings`."""

    kind: ClassVar[str]

    def __init__(self, arms: Sequence[str], rng: random.Random) -> None:
        arms = tuple(arms)
        if not arms:
            raise ValueError("a bandit needs at least one arm")
        if len(set(arms)) != len(arms):
            raise ValueError(f"arms must be unique, got {list(arms)}")
        self.arms = arms
        self._rng = rng
        self._segments: dict[str, dict[str, ArmCounts]] = {}

    @property
    def segments(self) -> list[str]:
        return list(self._segments)

    def _counts(self, segment: str) -> dict[str, ArmCounts]:
        counts = self._segments.get(segment)
        if counts is None:
            counts = self._segments[segment] = {arm: ArmCounts() for arm in self.arms}
        return counts

    def choose(self, segment: str = "") -> str:
        counts = self._counts(segment)
        arm = self._pick(counts)
        counts[arm].chosen += 1
        return arm

    @abstractmethod
    def _pick(self, counts: dict[str, ArmCounts]) -> str:
        """The strategy: which arm to try next, given the segment's counts."""

    def reward(self, arm: str, reward: float, segment: str = "") -> None:
        if arm not in self.arms:
            raise ValueError(f"unknown arm {arm!r}; arms are {list(self.arms)}")
        # numbers.Real admits numpy scalars; the range check also refuses NaN.
        if not isinstance(reward, numbers.Real) or not 0.0 <= reward <= 1.0:
            raise ValueError(f"reward must be a number in [0, 1], got {reward!r}")
        counts = self._counts(segment)[arm]
        counts.pulls += 1
        counts.reward_sum += float(reward)

    def stats(self, segment: str = "") -> dict[str, dict[str, float]]:
        # An unseen segment reports zeros without being created: looking is not using.
        counts = self._segments.get(segment) or {arm: ArmCounts() for arm in self.arms}
        return {arm: self._arm_stats(c) for arm, c in counts.items()}

    def _arm_stats(self, c: ArmCounts) -> dict[str, float]:
        return {"pulls": c.pulls, "chosen": c.chosen, "mean_reward": c.mean_reward}

    # -- persistence -----------------------------------------------------------------------

    def _settings(self) -> dict[str, Any]:
        return {}

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "kind": self.kind,
            "arms": list(self.arms),
            "settings": self._settings(),
            "segments": {
                segment: {
                    arm: {"chosen": c.chosen, "pulls": c.pulls, "reward_sum": c.reward_sum}
                    for arm, c in counts.items()
                }
                for segment, counts in self._segments.items()
            },
        }

    @classmethod
    def from_dict(
        cls, data: dict[str, Any], rng: random.Random, arms: Sequence[str] | None = None
    ) -> Self:
        """Restore a saved bandit. `arms` replaces the saved arms (the config changed):
        arms kept keep their counts, new arms start from nothing, dropped arms are
        forgotten."""
        if data.get("format") != STATE_FORMAT:
            raise ValueError(f"unsupported bandit state format {data.get('format')!r}")
        if data.get("kind") != cls.kind:
            raise ValueError(f"state of a {data.get('kind')!r} bandit, not {cls.kind!r}")
        bandit = cls(data["arms"] if arms is None else arms, rng, **data["settings"])
        for segment, saved in data["segments"].items():
            counts = bandit._counts(segment)
            for arm, c in saved.items():
                if arm in counts:
                    counts[arm] = ArmCounts(
                        int(c["chosen"]), int(c["pulls"]), float(c["reward_sum"])
                    )
        return bandit


class ThompsonBandit(Bandit):
    """Beta-Bernoulli Thompson sampling over arms, per segment. A reward r adds r to
    alpha and 1 - r to beta, so rewards in [0, 1] update Beta(alpha, beta) fractionally.
    Exploration fades by itself as the posteriors narrow; no knob to tune."""

    kind = "thompson"

    def __init__(
        self,
        arms: Sequence[str],
        rng: random.Random,
        prior: tuple[float, float] = (1.0, 1.0),
    ) -> None:
        super().__init__(arms, rng)
        alpha, beta = (float(x) for x in prior)
        if not (alpha > 0 and beta > 0 and math.isfinite(alpha + beta)):
            raise ValueError(f"prior must be two positive finite numbers, got {prior!r}")
        self.prior = (alpha, beta)

    def _posterior(self, c: ArmCounts) -> tuple[float, float]:
        alpha, beta = self.prior
        # max(): float sums of rewards <= 1 may overshoot pulls by an ulp.
        return alpha + c.reward_sum, beta + max(0.0, c.pulls - c.reward_sum)

    def _pick(self, counts: dict[str, ArmCounts]) -> str:
        draw = self._rng.betavariate
        # Continuous draws tie with probability zero; max keeps the first arm if they do.
        samples = {arm: draw(*self._posterior(c)) for arm, c in counts.items()}
        return max(samples, key=samples.__getitem__)

    def _arm_stats(self, c: ArmCounts) -> dict[str, float]:
        alpha, beta = self._posterior(c)
        return {**super()._arm_stats(c), "alpha": alpha, "beta": beta}

    def _settings(self) -> dict[str, Any]:
        return {"prior": list(self.prior)}


class EpsilonGreedy(Bandit):
    """Untried arms first; then with probability epsilon a uniformly random arm, else the
    arm of best mean reward. Ties are broken by the rng so no arm is favoured by its
    place in the config."""

    kind = "epsilon_greedy"

    def __init__(self, arms: Sequence[str], rng: random.Random, epsilon: float = 0.1) -> None:
        super().__init__(arms, rng)
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError(f"epsilon must lie in [0, 1], got {epsilon!r}")
        self.epsilon = float(epsilon)

    def _pick(self, counts: dict[str, ArmCounts]) -> str:
        untried = [arm for arm, c in counts.items() if c.pulls == 0]
        if untried:
            # Fewest chosen first: requests in flight before any reward comes back
            # spread over the untried arms instead of piling onto one.
            fewest = min(counts[arm].chosen for arm in untried)
            return self._rng.choice([arm for arm in untried if counts[arm].chosen == fewest])
        if self._rng.random() < self.epsilon:
            return self._rng.choice(self.arms)
        best = max(c.mean_reward for c in counts.values())
        return self._rng.choice([arm for arm, c in counts.items() if c.mean_reward == best])

    def _settings(self) -> dict[str, Any]:
        return {"epsilon": self.epsilon}


class UniformRandom(Bandit):
    """No learning: every arm equally often. The baseline a bandit has to beat, and the
    strategy to name for a plain random split that still records rewards."""

    kind = "uniform"

    def _pick(self, counts: dict[str, ArmCounts]) -> str:
        return self._rng.choice(self.arms)


BANDITS: dict[str, type[Bandit]] = {
    cls.kind: cls for cls in (ThompsonBandit, EpsilonGreedy, UniformRandom)
}


def make_bandit(kind: str, arms: Sequence[str], rng: random.Random, **options: Any) -> Bandit:
    """The strategy named `kind` ("thompson", "epsilon_greedy", "uniform")."""
    try:
        cls = BANDITS[kind]
    except KeyError:
        raise ValueError(f"unknown bandit {kind!r}; choose one of {sorted(BANDITS)}") from None
    return cls(arms, rng, **options)


def bandit_from_dict(data: dict[str, Any], rng: random.Random) -> Bandit:
    """Restore a saved bandit of whichever strategy saved it."""
    kind = data.get("kind")
    if kind not in BANDITS:
        raise ValueError(f"unknown bandit {kind!r}; choose one of {sorted(BANDITS)}")
    return BANDITS[kind].from_dict(data, rng)
