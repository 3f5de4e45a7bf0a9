"""The rollout controller: steps a canary through traffic shares, promotes it, or rolls
it back, from metrics snapshots and an explicit clock (sans-IO).

The driver (`serving/rollouts.py`) measures each version since the current step
began, calls `evaluate(now, snapshot)` on a timer, and carries out the decision.
Stages form a transition table; an event a stage does not allow raises
`IllegalTransition` and leaves the controller as it was.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


def check_steps_percent(steps: Sequence[float]) -> None:
    """Raise ValueError unless `steps` can drive a canary: shares in (0, 100], strictly
    increasing, ending at 100. The config schema runs this too, so a config with bad
    steps is refused when it loads rather than when someone deploys a canary."""
    if not steps:
        raise ValueError("steps_percent needs at least one step")
    if any(not 0 < s <= 100 for s in steps):
        raise ValueError(f"steps_percent must lie in (0, 100], got {list(steps)}")
    if any(b <= a for a, b in itertools.pairwise(steps)):
        raise ValueError(f"steps_percent must be strictly increasing, got {list(steps)}")
    if steps[-1] != 100:
        raise ValueError(f"the last step must be 100 (the candidate takes all), got {steps[-1]}")


@dataclass(frozen=True)
class RolloutPolicy:
    """The limits a rollout is judged by; `RolloutConfig.policy()` builds it from an
    endpoint's `rollout:` section, whose fields document each limit. These defaults are
    the only copy: the config schema takes its defaults from here."""

    steps_percent: tuple[float, ...] = (1, 5, 25, 50, 100)
    min_requests: int = 100
    min_step_s: float = 30.0
    max_error_rate_margin: float = 0.01
    max_p99_ratio: float = 1.5
    min_latency_samples: int = 100  # a p99 of fewer samples is just the slowest one
    min_shadow_agreement: float = 0.95
    breach_min_requests: int = 10

    def __post_init__(self) -> None:
        check_steps_percent(self.steps_percent)
        for name in ("min_requests", "min_step_s", "max_error_rate_margin", "min_latency_samples",
                     "breach_min_requests"):  # fmt: skip
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.max_p99_ratio <= 0:
            raise ValueError("max_p99_ratio must be positive")
        if not 0 <= self.min_shadow_agreement <= 1:
            raise ValueError("min_shadow_agreement must lie in [0, 1]")


@dataclass(frozen=True)
class VersionWindow:
    requests: int = 0
    errors: int = 0  # 5xx and deadline misses of that version
    p99_s: float | None = None
    latency_samples: int = 0

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


@dataclass(frozen=True)
class Snapshot:
    """What the driver measured since the current step (or shadow stage) began."""

    stable: VersionWindow
    candidate: VersionWindow
    shadow_compared: int = 0
    shadow_agreement: float | None = None


@dataclass(frozen=True)
class Hold:
    waiting_for: str

    @property
    def reason(self) -> str:
        return f"waiting for {self.waiting_for}"


@dataclass(frozen=True)
class Advance:
    step: int
    percent: float
    reason: str


@dataclass(frozen=True)
class Promote:
    reason: str


@dataclass(frozen=True)
class Rollback:
    reason: str


Decision = Hold | Advance | Promote | Rollback

SHADOW, CANARY, PROMOTED, ROLLED_BACK = "shadow", "canary", "promoted", "rolled_back"

# stage -> event -> next stage
TRANSITIONS: dict[str, dict[str, str]] = {
    SHADOW: {"evaluate": SHADOW, "promote": PROMOTED, "rollback": ROLLED_BACK},
    CANARY: {"evaluate": CANARY, "advance": CANARY, "promote": PROMOTED, "rollback": ROLLED_BACK},
    PROMOTED: {},
    ROLLED_BACK: {},
}


class IllegalTransition(Exception):
    def __init__(self, stage: str, event: str) -> None:
        super().__init__(f"cannot {event} a rollout that is {stage}")
        self.stage = stage
        self.event = event


class RolloutController:
    def __init__(
        self,
        policy: RolloutPolicy,
        *,
        stage: str = CANARY,
        step: int = 0,
        step_started_at: float,
    ) -> None:
        if stage not in TRANSITIONS:
            raise ValueError(f"unknown stage {stage!r}")
        if not 0 <= step < len(policy.steps_percent):
            raise ValueError(f"step {step} is outside the policy's {len(policy.steps_percent)}")
        self.policy = policy
        self.stage = stage
        self.step = step
        self.step_started_at = step_started_at
        self.last_decision: Decision | None = None

    @property
    def percent(self) -> float:
        if self.stage == CANARY:
            return float(self.policy.steps_percent[self.step])
        return 100.0 if self.stage == PROMOTED else 0.0

    def _move(self, event: str) -> str:
        allowed = TRANSITIONS[self.stage]
        if event not in allowed:
            raise IllegalTransition(self.stage, event)
        return allowed[event]

    def _decide(self, decision: Decision) -> Decision:
        self.last_decision = decision
        return decision

    # -- operator events --------------------------------------------------------------

    def promote(self, now: float, reason: str = "operator") -> Promote:
        self.stage = self._move("promote")
        self.step_started_at = now
        return self._decide(Promote(reason))  # type: ignore[return-value]

    def rollback(self, now: float, reason: str) -> Rollback:
        self.stage = self._move("rollback")
        self.step_started_at = now
        return self._decide(Rollback(reason))  # type: ignore[return-value]

    # -- the timer ----------------------------------------------------------------------

    def evaluate(self, now: float, snapshot: Snapshot) -> Decision:
        self._move("evaluate")  # raises in a terminal stage
        breach = self._breach(snapshot)
        if breach is not None:
            return self.rollback(now, breach)
        waiting = self._waiting_for(now, snapshot)
        if waiting is not None:
            return self._decide(Hold(waiting))
        if self.stage == SHADOW:
            agreement = snapshot.shadow_agreement or 0.0
            return self._decide(
                Hold(
                    f"shadow criteria met (agreement {agreement:.4f} over "
                    f"{snapshot.shadow_compared} comparisons): promote or roll back"
                )
            )
        percent = self.percent
        if self.step + 1 < len(self.policy.steps_percent):
            self.stage = self._move("advance")
            self.step += 1
            self.step_started_at = now
            return self._decide(
                Advance(
                    self.step,
                    self.percent,
                    f"step at {percent:g} % passed with {snapshot.candidate.requests} requests: "
                    f"{self._figures(snapshot)}",
                )
            )
        return self.promote(
            now,
            f"last step at {percent:g} % passed with {snapshot.candidate.requests} requests: "
            f"{self._figures(snapshot)}",
        )

    def _breach(self, s: Snapshot) -> str | None:
        p = self.policy
        cand, stable = s.candidate, s.stable
        if cand.requests >= p.breach_min_requests:
            limit = stable.error_rate + p.max_error_rate_margin
            if cand.error_rate > limit:
                return (
                    f"candidate error rate {cand.error_rate:.1%} > stable "
                    f"{stable.error_rate:.1%} + {p.max_error_rate_margin:.1%} "
                    f"({cand.errors} of {cand.requests} requests)"
                )
            if self._latency_comparable(s):
                assert cand.p99_s is not None and stable.p99_s is not None
                if cand.p99_s > stable.p99_s * p.max_p99_ratio:
                    return (
                        f"candidate p99 {cand.p99_s * 1000:.1f} ms > stable p99 "
                        f"{stable.p99_s * 1000:.1f} ms x {p.max_p99_ratio:g}"
                    )
        if (
            s.shadow_agreement is not None
            and s.shadow_compared >= p.breach_min_requests
            and s.shadow_agreement < p.min_shadow_agreement
        ):
            return (
                f"shadow agreement {s.shadow_agreement:.4f} < {p.min_shadow_agreement:g} "
                f"over {s.shadow_compared} comparisons"
            )
        return None

    def _latency_comparable(self, s: Snapshot) -> bool:
        need = self.policy.min_latency_samples
        return (
            s.candidate.p99_s is not None
            and s.stable.p99_s is not None
            and s.candidate.latency_samples >= need
            and s.stable.latency_samples >= need
        )

    def _waiting_for(self, now: float, s: Snapshot) -> str | None:
        p = self.policy
        if self.stage == SHADOW:
            if s.shadow_compared < p.min_requests:
                return f"{s.shadow_compared} of {p.min_requests} shadow comparisons"
        elif s.candidate.requests < p.min_requests:
            return (
                f"{s.candidate.requests} of {p.min_requests} candidate requests "
                f"at {self.percent:g} %"
            )
        elapsed = now - self.step_started_at
        if elapsed < p.min_step_s:
            return f"step has run {elapsed:.1f} of {p.min_step_s:g} s"
        return None

    def _figures(self, s: Snapshot) -> str:
        text = f"error rate {s.candidate.error_rate:.1%} (stable {s.stable.error_rate:.1%})"
        if self._latency_comparable(s):
            assert s.candidate.p99_s is not None and s.stable.p99_s is not None
            text += (
                f", p99 {s.candidate.p99_s * 1000:.1f} ms (stable {s.stable.p99_s * 1000:.1f} ms)"
            )
        if s.shadow_agreement is not None:
            text += f", shadow agreement {s.shadow_agreement:.4f}"
        return text

    # -- persistence -----------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "step": self.step, "step_started_at": self.step_started_at}

    @classmethod
    def from_dict(cls, policy: RolloutPolicy, data: dict[str, Any]) -> RolloutController:
        step = min(int(data["step"]), len(policy.steps_percent) - 1)  # the policy may have shrunk
        return cls(
            policy, stage=data["stage"], step=step, step_started_at=float(data["step_started_at"])
        )
