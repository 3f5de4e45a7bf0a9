"""Bandit routing: learn, per segment, which arm (deployment) earns the most reward.

A segment is any key the caller picks to learn separately (a tenant, an input-size
bucket). The caller calls `choose(segment)` per request and later `reward(arm, r,
segment)` with r in [0, 1] (1 = a good answer). Randomness comes only from the injected
rng, so a seeded run repeats exactly. Strategies are chosen by name through `make_bandit`.

Segment keys come from outside (a header), so the table of them is bounded: a segment
earns its own counts with its first reward, and at most `max_segments` have counts,
least recently used evicted first. The default segment "" learns from every request and
every reward, of every segment: a segment without counts of its own (new, never
rewarded, evicted, or longer than `MAX_SEGMENT_CHARS`) is served from it, so a flood of
made-up segment values costs no memory and still gets the arm that is best overall.

The state is sufficient statistics per (segment, arm) in plain JSON (`to_dict`), so the
server can persist it and share it between processes: `take_learned` hands over what was
learned since the last call (the delta other processes add) and `absorb` adds another
bandit's unshared learning to this one.
"""

from __future__ import annotations

import math
import numbers
import random
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Self

STATE_FORMAT = 1
DEFAULT_SEGMENT = ""
MAX_SEGMENTS = 1000
MAX_SEGMENT_CHARS = 128  # a longer key is no segment of its own (it would be a memory lever)
_FIELDS = ("chosen", "pulls", "reward_sum")


@dataclass(slots=True)
class ArmCounts:
    chosen: int = 0  # times `choose` picked the arm; may run ahead of pulls while in flight
    pulls: int = 0  # rewards received
    reward_sum: float = 0.0

    @property
    def mean_reward(self) -> float:
        return self.reward_sum / self.pulls if self.pulls else 0.0

    def add(self, chosen: int, pulls: int, reward_sum: float) -> None:
        self.chosen += chosen
        self.pulls += pulls
        self.reward_sum += reward_sum


Counts = dict[str, ArmCounts]


class Bandit(ABC):
    """What every strategy shares: arms, per-segment counts, validation, persistence.
    A strategy supplies `_pick` and, if it has settings, `_settings`."""

    kind: ClassVar[str]

    def __init__(
        self, arms: Sequence[str], rng: random.Random, *, max_segments: int = MAX_SEGMENTS
    ) -> None:
        arms = tuple(arms)
        if not arms:
            raise ValueError("a bandit needs at least one arm")
        if len(set(arms)) != len(arms):
            raise ValueError(f"arms must be unique, got {list(arms)}")
        if max_segments < 0:
            raise ValueError(f"max_segments must be >= 0, got {max_segments}")
        self.arms = arms
        self._rng = rng
        self.max_segments = max_segments
        self._default: Counts = self._fresh()
        # Named segments with counts of their own, least recently used first.
        self._segments: OrderedDict[str, Counts] = OrderedDict()
        # What was learned since `take_learned` ("" included), for other processes to add.
        self._learned: dict[str, Counts] = {}
        self.evicted = 0  # segments dropped to stay within max_segments

    def _fresh(self) -> Counts:
        return {arm: ArmCounts() for arm in self.arms}

    @property
    def segments(self) -> list[str]:
        """The default segment, then those with counts of their own, least recent first."""
        return [DEFAULT_SEGMENT, *self._segments]

    def choose(self, segment: str = DEFAULT_SEGMENT) -> str:
        own = self._segments.get(segment) if segment else None
        if own is not None:
            self._segments.move_to_end(segment)
        arm = self._pick(self._default if own is None else own)
        self._count(segment if own is not None else DEFAULT_SEGMENT, arm, 1, 0, 0.0)
        return arm

    @abstractmethod
    def _pick(self, counts: Counts) -> str:
        """The strategy: which arm to try next, given the segment's counts."""

    def reward(self, arm: str, reward: float, segment: str = DEFAULT_SEGMENT) -> None:
        if arm not in self.arms:
            raise ValueError(f"unknown arm {arm!r}; arms are {list(self.arms)}")
        # numbers.Real admits numpy scalars; the range check also refuses NaN.
        if not isinstance(reward, numbers.Real) or not 0.0 <= reward <= 1.0:
            raise ValueError(f"reward must be a number in [0, 1], got {reward!r}")
        own = self._admit(segment) is not None
        self._count(segment if own else DEFAULT_SEGMENT, arm, 0, 1, float(reward))

    def _admit(self, segment: str) -> Counts | None:
        """The segment's own counts, made (evicting the least recently used) if need be;
        None when it is to be served by the default segment."""
        if not segment or len(segment) > MAX_SEGMENT_CHARS:
            return None
        found = self._segments.get(segment)
        if found is not None:
            self._segments.move_to_end(segment)
            return found
        if self.max_segments == 0:
            return None
        if len(self._segments) >= self.max_segments:
            # Its unshared learning goes too; the default segment keeps its share.
            old, _ = self._segments.popitem(last=False)
            self._learned.pop(old, None)
            self.evicted += 1
        found = self._segments[segment] = self._fresh()
        return found

    def _count(self, segment: str, arm: str, chosen: int, pulls: int, reward: float) -> None:
        """Add to a segment's counts and to the default's (which learns from all), and to
        what is still to be shared of each."""
        for name in (segment, DEFAULT_SEGMENT) if segment else (DEFAULT_SEGMENT,):
            totals = self._segments[name] if name else self._default
            totals[arm].add(chosen, pulls, reward)
            learned = self._learned.get(name)
            if learned is None:
                learned = self._learned[name] = self._fresh()
            learned[arm].add(chosen, pulls, reward)

    def stats(self, segment: str = DEFAULT_SEGMENT) -> dict[str, dict[str, float]]:
        # An unseen segment reports zeros without being created: looking is not using.
        counts = self._default if not segment else self._segments.get(segment)
        return {arm: self._arm_stats(c) for arm, c in (counts or self._fresh()).items()}

    def _arm_stats(self, c: ArmCounts) -> dict[str, float]:
        return {"pulls": c.pulls, "chosen": c.chosen, "mean_reward": c.mean_reward}

    # -- persistence and sharing -------------------------------------------------------------

    def _settings(self) -> dict[str, Any]:
        return {}

    def _doc(self, segments: Iterable[tuple[str, Counts]]) -> dict[str, Any]:
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
                for segment, counts in segments
            },
        }

    def to_dict(self) -> dict[str, Any]:
        """Every count: the default segment first, then the others least recent first."""
        return self._doc([(DEFAULT_SEGMENT, self._default), *self._segments.items()])

    def take_learned(self) -> dict[str, Any]:
        """What was learned since the last call, in `to_dict` form, and start afresh: the
        delta a sync adds to the shared counts. At most max_segments + 1 segments."""
        learned, self._learned = self._learned, {}
        return self._doc(learned.items())

    def give_back(self, taken: dict[str, Any]) -> None:
        """A delta from `take_learned` that could not be shared: to be shared next time
        (the counts have it already; segments evicted since are left out)."""
        for segment, saved in taken["segments"].items():
            if not segment or segment in self._segments:
                self._add(segment, saved, totals=False)

    def absorb(self, other: Bandit) -> None:
        """Add what `other` learned and has not shared yet, as learned here: a bandit
        rebuilt from the shared counts takes over from the one that kept learning."""
        self.evicted += other.evicted
        for segment, counts in other._learned.items():
            saved = {arm: {k: getattr(c, k) for k in _FIELDS} for arm, c in counts.items()}
            self._add(segment, saved, totals=True)

    def _add(
        self, segment: str, saved: dict[str, Any], *, totals: bool, learned: bool = True
    ) -> None:
        """Add saved counts to one segment as they are (the default gets no share)."""
        target = self._admit(segment) if segment else self._default
        if target is None:
            return
        into = [target] if totals else []
        if learned:
            found = self._learned.get(segment)
            into.append(
                found if found is not None else self._learned.setdefault(segment, self._fresh())
            )
        for arm, c in saved.items():
            if arm in target:
                for counts in into:
                    counts[arm].add(int(c["chosen"]), int(c["pulls"]), float(c["reward_sum"]))

    @classmethod
    def from_dict(
        cls,
        data: dict[str, Any],
        rng: random.Random,
        arms: Sequence[str] | None = None,
        *,
        max_segments: int = MAX_SEGMENTS,
    ) -> Self:
        """Restore a saved bandit. `arms` replaces the saved arms (the config changed):
        arms kept keep their counts, new arms start from nothing, dropped arms are
        forgotten. Segments are taken least recent first (by `seen`, the order the
        shared copy keeps), so past `max_segments` the most recent are kept."""
        if data.get("format") != STATE_FORMAT:
            raise ValueError(f"unsupported bandit state format {data.get('format')!r}")
        if data.get("kind") != cls.kind:
            raise ValueError(f"state of a {data.get('kind')!r} bandit, not {cls.kind!r}")
        saved_arms = data["arms"] if arms is None else arms
        bandit = cls(saved_arms, rng, max_segments=max_segments, **data["settings"])
        seen = data.get("seen") or {}
        segments = data["segments"]
        for segment in sorted(segments, key=lambda s: seen.get(s, 0)):  # stable: ties keep order
            bandit._add(segment, segments[segment], totals=True, learned=False)
        bandit.evicted = 0
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
        *,
        max_segments: int = MAX_SEGMENTS,
    ) -> None:
        super().__init__(arms, rng, max_segments=max_segments)
        alpha, beta = (float(x) for x in prior)
        if not (alpha > 0 and beta > 0 and math.isfinite(alpha + beta)):
            raise ValueError(f"prior must be two positive finite numbers, got {prior!r}")
        self.prior = (alpha, beta)

    def _posterior(self, c: ArmCounts) -> tuple[float, float]:
        alpha, beta = self.prior
        # max(): float sums of rewards <= 1 may overshoot pulls by an ulp.
        return alpha + c.reward_sum, beta + max(0.0, c.pulls - c.reward_sum)

    def _pick(self, counts: Counts) -> str:
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

    def __init__(
        self,
        arms: Sequence[str],
        rng: random.Random,
        epsilon: float = 0.1,
        *,
        max_segments: int = MAX_SEGMENTS,
    ) -> None:
        super().__init__(arms, rng, max_segments=max_segments)
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError(f"epsilon must lie in [0, 1], got {epsilon!r}")
        self.epsilon = float(epsilon)

    def _pick(self, counts: Counts) -> str:
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

    def _pick(self, counts: Counts) -> str:
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


def bandit_from_dict(
    data: dict[str, Any], rng: random.Random, *, max_segments: int = MAX_SEGMENTS
) -> Bandit:
    """Restore a saved bandit of whichever strategy saved it."""
    kind = data.get("kind")
    if kind not in BANDITS:
        raise ValueError(f"unknown bandit {kind!r}; choose one of {sorted(BANDITS)}")
    return BANDITS[kind].from_dict(data, rng, max_segments=max_segments)
