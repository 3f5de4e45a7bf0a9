"""Traffic splits between versions: sticky by user key (A/B), or per request (canary).

Pure functions and plain state; no I/O, no clock.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping


def _unit_hash(arm: str, key: str) -> float:
    """A stable point in (0, 1) for (arm, key): the same in every process and release
    (Python's `hash()` is salted per process, so several workers would disagree)."""
    digest = hashlib.blake2b(f"{arm}\x00{key}".encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "big") + 0.5) / 2.0**64


def sticky_arm(key: str, weights: Mapping[str, float]) -> str:
    """The arm a user key belongs to, by weighted rendezvous hashing.

    Each arm draws an exponential variate from the key's hash, scaled by its weight;
    the smallest wins, so each arm gets its weight's share of keys. When one arm's
    weight changes, keys move only to it (it rose) or from it (it fell): never between
    two arms whose weights stayed the same. Raising a canary from 5 % to 25 % moves
    users from stable to the canary and none back.
    """
    best, best_score = None, math.inf
    for arm, weight in weights.items():
        if weight <= 0:
            continue
        score = -math.log(_unit_hash(arm, key)) / weight
        if score < best_score:
            best, best_score = arm, score
    if best is None:
        raise ValueError(f"no arm has a positive weight: {dict(weights)}")
    return best


class WeightedSplit:
    """Per-request split by smooth weighted round robin (nginx's): deterministic, exact
    shares over every window of sum(weights) picks, and picks of a small arm spread
    out rather than arriving in a run."""

    def __init__(self, weights: Mapping[str, float]) -> None:
        self._weights = {arm: float(w) for arm, w in weights.items() if w > 0}
        if not self._weights:
            raise ValueError(f"no arm has a positive weight: {dict(weights)}")
        self._total = sum(self._weights.values())
        self._current = dict.fromkeys(self._weights, 0.0)

    @property
    def weights(self) -> dict[str, float]:
        return dict(self._weights)

    def pick(self) -> str:
        current = self._current
        for arm, weight in self._weights.items():
            current[arm] += weight
        chosen = max(current, key=current.__getitem__)
        current[chosen] -= self._total
        return chosen
