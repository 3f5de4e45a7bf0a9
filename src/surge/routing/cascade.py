"""Confidence cascades: a cheap model answers what it is sure of, a costlier one the rest,
and a human reviews what even the last tier is unsure of. Pure functions on numpy arrays.

The cascade works per row, not per request. A request of 8 rows runs at tier 0; if 6
rows pass tier 0's threshold they are answered there, and only the other 2 rows go on
to tier 1 (the costly tier runs on a batch of 2, not 8). The driver keeps, for every
tier, which of the request's original rows it ran on:

    rows = np.arange(n)                        # tier 0 runs on every row
    outcome = judge(policy, 0, outputs_0)      # indices in outcome are into `rows`
    rows_1 = rows[outcome.escalate_rows]       # original rows that go to tier 1

and at the end `merge(n, [(rows, outputs_0), (rows_1, outputs_1), ...])` puts each
row's final answer (its last tier's) back in the request's order. Rows the last tier is
still unsure of keep its answer and are flagged `needs_review` (unless review is off).
When a burst mode allows fewer tiers, the rows the last allowed tier would have sent on
are answered there and marked degraded instead (they are not doubtful, only cheaper).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from surge.core.tensors import Tensors

PROBABILITIES = "probabilities"


def _probabilities(outputs: Tensors, method: str) -> np.ndarray:
    if PROBABILITIES not in outputs:
        raise ValueError(
            f"confidence {method!r} needs an output tensor {PROBABILITIES!r} "
            f"(rows x classes); the model returned {sorted(outputs)}"
        )
    probs = np.asarray(outputs[PROBABILITIES])
    if probs.ndim != 2 or probs.shape[1] < 1:
        raise ValueError(
            f"confidence {method!r} needs {PROBABILITIES!r} shaped (rows, classes), "
            f"got shape {probs.shape}"
        )
    if not np.issubdtype(probs.dtype, np.number):
        raise ValueError(f"{PROBABILITIES!r} must be numeric, got dtype {probs.dtype}")
    return probs


def _max_probability(outputs: Tensors) -> np.ndarray:
    return _probabilities(outputs, "max_probability").max(axis=1)


def _margin(outputs: Tensors) -> np.ndarray:
    probs = _probabilities(outputs, "margin")
    if probs.shape[1] < 2:
        raise ValueError(
            f"confidence 'margin' needs at least 2 classes, {PROBABILITIES!r} has {probs.shape[1]}"
        )
    # partition finds the top two in linear time; a full sort per row is not needed
    top2 = np.partition(probs, probs.shape[1] - 2, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


# Methods by name, so a config can choose one; a new method is one entry here.
CONFIDENCE_METHODS: dict[str, Callable[[Tensors], np.ndarray]] = {
    "max_probability": _max_probability,
    "margin": _margin,
}


def confidence(outputs: Tensors, method: str) -> np.ndarray:
    """One confidence per row, as float64. A NaN confidence never passes a threshold,
    so a row with broken probabilities escalates rather than being accepted."""
    fn = CONFIDENCE_METHODS.get(method)
    if fn is None:
        raise ValueError(
            f"unknown confidence method {method!r}; choose one of {sorted(CONFIDENCE_METHODS)}"
        )
    return np.asarray(fn(outputs), dtype=np.float64)


@dataclass(frozen=True)
class CascadeTier:
    target: str  # the deployment this tier calls
    threshold: float  # a row is accepted when its confidence >= threshold
    confidence: str = "max_probability"


@dataclass(frozen=True)
class CascadePolicy:
    tiers: tuple[CascadeTier, ...]  # cheapest first
    review: bool = True  # flag rows the last tier is unsure of; off: the last tier decides

    def __post_init__(self) -> None:
        object.__setattr__(self, "tiers", tuple(self.tiers))  # a list from config is fine
        if not self.tiers:
            raise ValueError("a cascade needs at least one tier")
        for i, tier in enumerate(self.tiers):
            if not tier.target:
                raise ValueError(f"tier {i} has no target")
            if not 0 <= tier.threshold <= 1:
                raise ValueError(
                    f"tier {i} ({tier.target}): threshold must lie in [0, 1], got {tier.threshold}"
                )
            if tier.confidence not in CONFIDENCE_METHODS:
                raise ValueError(
                    f"tier {i} ({tier.target}): unknown confidence method "
                    f"{tier.confidence!r}; choose one of {sorted(CONFIDENCE_METHODS)}"
                )


@dataclass(frozen=True)
class TierOutcome:
    tier: int  # index of the tier that ran
    accepted: np.ndarray  # bool per row of the rows this tier ran on
    confidence: np.ndarray  # per row
    escalate_rows: np.ndarray  # int indices (into the tier's input rows) for the next tier
    review_rows: np.ndarray  # int indices flagged needs_review (last tier, review on)
    # Rows that would have escalated but a burst mode allows no further tier: answered by
    # this tier as a degraded answer (not doubtful ones: nobody reviews them).
    degraded_rows: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.intp))


def judge(
    policy: CascadePolicy, tier: int, outputs: Tensors, allowed_tiers: int | None = None
) -> TierOutcome:
    """Which rows tier `tier` answers, which go on, and which need a human.

    `allowed_tiers` is how many tiers a burst mode lets run (None: all). At the last
    allowed tier, rows that would escalate are answered there, degraded: the cheaper
    answer is the mode's choice, not a doubt for a human to settle."""
    if not 0 <= tier < len(policy.tiers):
        raise ValueError(f"tier {tier} is outside the cascade's {len(policy.tiers)} tiers")
    spec = policy.tiers[tier]
    conf = confidence(outputs, spec.confidence)
    passed = conf >= spec.threshold
    none = np.empty(0, dtype=np.intp)
    if tier < len(policy.tiers) - 1:
        if allowed_tiers is not None and tier >= allowed_tiers - 1:
            held = np.flatnonzero(~passed)
            return TierOutcome(tier, np.ones_like(passed), conf, none, none, held)
        return TierOutcome(tier, passed, conf, np.flatnonzero(~passed), none)
    if not policy.review:
        # nobody above the last tier: its answer stands whatever its confidence
        return TierOutcome(tier, np.ones_like(passed), conf, none, none)
    return TierOutcome(tier, passed, conf, none, np.flatnonzero(~passed))


def merge(rows: int, per_tier: list[tuple[np.ndarray, Tensors]]) -> Tensors:
    """The final answer of `rows` rows: each row from the last tier that answered it.

    `per_tier` holds, in tier order, (original row indices, that tier's outputs for
    exactly those rows). Every tier must return the same tensor names with the same
    per-row shapes; dtypes that differ between tiers (float32 from one runtime,
    float64 from another) are promoted so no tier's values are truncated.
    """
    if rows < 0:
        raise ValueError(f"rows must not be negative, got {rows}")
    if not per_tier:
        raise ValueError("merge needs at least one tier's outputs")
    names = sorted(per_tier[0][1])
    checked: list[tuple[np.ndarray, Tensors]] = []
    for i, (index, outputs) in enumerate(per_tier):
        index = np.asarray(index)
        if index.ndim != 1 or (index.size and not np.issubdtype(index.dtype, np.integer)):
            raise ValueError(f"tier {i}: row indices must be a 1-D integer array")
        index = index.astype(np.intp)
        if index.size and (index.min() < 0 or index.max() >= rows):
            raise ValueError(f"tier {i}: row indices must lie in [0, {rows})")
        if np.unique(index).size != index.size:
            raise ValueError(f"tier {i}: row indices repeat")
        if sorted(outputs) != names:
            raise ValueError(
                f"tier {i} returned tensors {sorted(outputs)}, tier 0 returned {names}"
            )
        for name in names:
            if len(outputs[name]) != index.size:
                raise ValueError(
                    f"tier {i}: tensor {name!r} has {len(outputs[name])} rows "
                    f"for {index.size} row indices"
                )
        checked.append((index, outputs))

    covered = np.zeros(rows, dtype=bool)
    for index, _ in checked:
        covered[index] = True
    if not covered.all():
        missing = np.flatnonzero(~covered)
        raise ValueError(f"no tier answered rows {missing[:10].tolist()}")

    merged: Tensors = {}
    for name in names:
        arrays = [np.asarray(outputs[name]) for _, outputs in checked]
        tails = {a.shape[1:] for a in arrays}
        if len(tails) != 1:
            raise ValueError(f"tensor {name!r} has different per-row shapes across tiers: {tails}")
        try:
            dtype = np.result_type(*arrays)
        except TypeError as exc:  # numpy's DTypePromotionError is a TypeError
            dtypes = [str(a.dtype) for a in arrays]
            raise ValueError(
                f"tensor {name!r} has incompatible dtypes across tiers: {dtypes}"
            ) from exc
        out = np.empty((rows, *arrays[0].shape[1:]), dtype=dtype)
        for (index, _), array in zip(checked, arrays, strict=True):
            out[index] = array  # later tiers overwrite the rows they re-answered
        merged[name] = out
    return merged
