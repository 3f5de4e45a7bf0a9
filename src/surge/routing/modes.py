"""Burst modes: named sets of switches (normal / surge / emergency) that the platform
flips from live load signals, with hysteresis (sans-IO).

The driver samples the signals on a timer, calls `observe(now, signals)`, and applies
`switches` of the current mode to the other policies (batcher delay, cascade tiers,
shadow mirrors, default deadlines, shedding by priority).

The levels form a ladder. A rise may skip rungs (a burst that fills the queue goes
straight to emergency: waiting one dwell per rung would shed nothing while the queue
overflows); a fall takes one rung per `hold_s` of calm, so a lull inside a burst does
not switch everything back on at once. Each level enters on ANY signal at its enter
threshold and is left only when ALL signals sit below its exit thresholds, which lie
below the enter ones: a signal hovering at one threshold cannot flap the mode.

Two control states: automatic (observe moves the mode) and forced (an operator pinned
a mode; observe still tracks the calm time, so that after `release` the next observe
can step down at once if the load had long been calm).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, replace

_SIGNALS = ("queue_fill", "p99_ratio", "rejection_rate")


@dataclass(frozen=True)
class ModeSwitches:
    """What a mode changes in the other policies; None leaves the endpoint's own setting."""

    allowed_tiers: int | None = None  # cascade: how many tiers may run (1 = the small one only)
    shadow: bool = True  # False drops shadow mirrors: their compute goes to live traffic
    # Deadline when the client sends none; a cap, so the driver takes min(this, endpoint's).
    default_timeout_ms: float | None = None
    # Requests with a priority below this are refused with 503 + Retry-After.
    shed_priorities_below: int | None = None

    def __post_init__(self) -> None:
        if self.allowed_tiers is not None and self.allowed_tiers < 1:
            raise ValueError(f"allowed_tiers must be >= 1, got {self.allowed_tiers}")
        if self.default_timeout_ms is not None and not self.default_timeout_ms > 0:
            raise ValueError(f"default_timeout_ms must be > 0, got {self.default_timeout_ms}")


@dataclass(frozen=True)
class LoadSignals:
    queue_fill: float  # queued / max_queue: 0..1
    p99_ratio: float  # live p99 / target p99
    rejection_rate: float  # refused / offered over the last interval: 0..1
    # How many requests `rejection_rate` was computed over; None: enough (the caller vouches).
    offered: int | None = None

    def __post_init__(self) -> None:
        # NaN compares False both ways: it would neither raise the mode nor let it fall.
        for name in _SIGNALS:
            value = getattr(self, name)
            if not value >= 0:
                raise ValueError(f"{name} must be a number >= 0, got {value}")
        if self.rejection_rate > 1:
            raise ValueError(f"rejection_rate must lie in [0, 1], got {self.rejection_rate}")
        if self.offered is not None and self.offered < 0:
            raise ValueError(f"offered must be >= 0, got {self.offered}")


@dataclass(frozen=True)
class ModeLevel:
    """One rung of the ladder. A threshold left at inf takes that signal out: it never
    enters the level and never holds it up."""

    name: str
    switches: ModeSwitches = ModeSwitches()
    enter_queue_fill: float = math.inf
    enter_p99_ratio: float = math.inf
    enter_rejection_rate: float = math.inf
    exit_queue_fill: float = math.inf
    exit_p99_ratio: float = math.inf
    exit_rejection_rate: float = math.inf

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a mode needs a name")
        for signal in _SIGNALS:
            enter, leave = self.enter(signal), self.exit(signal)
            if not (enter >= 0 and leave >= 0):
                raise ValueError(f"mode {self.name!r}: {signal} thresholds must be >= 0")
            if enter != math.inf and not leave < enter:
                raise ValueError(
                    f"mode {self.name!r}: exit_{signal} {leave:g} must be below "
                    f"enter_{signal} {enter:g} (hysteresis)"
                )

    def enter(self, signal: str) -> float:
        return float(getattr(self, f"enter_{signal}"))

    def exit(self, signal: str) -> float:
        return float(getattr(self, f"exit_{signal}"))


@dataclass(frozen=True)
class ModePolicy:
    levels: tuple[ModeLevel, ...]  # escalating; levels[0] is the base, its thresholds unused
    hold_s: float = 10.0  # calm time before stepping down one level
    min_dwell_s: float = 5.0  # no automatic step down sooner than this after the last change
    # A refusal share over fewer requests than this reads as 0: 1 refused of 3 is 33 %,
    # past every enter threshold, and says nothing about capacity.
    min_requests: int = 0

    def __post_init__(self) -> None:
        if not self.levels:
            raise ValueError("a mode policy needs at least one level")
        if self.min_requests < 0:
            raise ValueError(f"min_requests must be >= 0, got {self.min_requests}")
        names = [level.name for level in self.levels]
        if len(set(names)) != len(names):
            raise ValueError(f"mode names must be unique, got {names}")
        if not self.hold_s >= 0 or not self.min_dwell_s >= 0:
            raise ValueError("hold_s and min_dwell_s must be >= 0")
        # A higher level easier to enter than a lower one means the order is wrong.
        for low, high in itertools.pairwise(self.levels[1:]):
            for signal in _SIGNALS:
                if high.enter(signal) < low.enter(signal):
                    raise ValueError(
                        f"levels must escalate: {high.name!r} enters at {signal} "
                        f"{high.enter(signal):g}, below {low.name!r} at {low.enter(signal):g}"
                    )

    def index(self, name: str) -> int:
        for i, level in enumerate(self.levels):
            if level.name == name:
                return i
        raise ValueError(f"unknown mode {name!r}; modes are {[lv.name for lv in self.levels]}")


def default_policy() -> ModePolicy:
    """normal / surge / emergency.

    surge (queue half full, p99 1.5x its target, or 1 % refused): shadow mirrors off and
    a 500 ms default deadline, so no capacity goes to answers nobody reads and requests
    that cannot be served soon give up early instead of holding a queue slot. The batch
    delay is left alone: under a burst batches fill before it expires, and shortening it
    would only shrink batches when throughput matters most.

    emergency (queue 80 % full, p99 3x, or 5 % refused): also only the first cascade tier
    (the big model is the first thing to give up), a 250 ms default deadline, and
    priority-0 (best-effort) traffic shed with 503 so paying traffic keeps its latency.

    Exit thresholds sit well below the enter ones (about half) so a burst that eases
    a little does not switch everything back on.
    """
    return ModePolicy(
        levels=(
            ModeLevel("normal"),
            ModeLevel(
                "surge",
                ModeSwitches(shadow=False, default_timeout_ms=500.0),
                enter_queue_fill=0.5,
                enter_p99_ratio=1.5,
                enter_rejection_rate=0.01,
                exit_queue_fill=0.2,
                exit_p99_ratio=1.1,
                exit_rejection_rate=0.001,
            ),
            ModeLevel(
                "emergency",
                ModeSwitches(
                    shadow=False,
                    default_timeout_ms=250.0,
                    allowed_tiers=1,
                    shed_priorities_below=1,
                ),
                enter_queue_fill=0.8,
                enter_p99_ratio=3.0,
                enter_rejection_rate=0.05,
                exit_queue_fill=0.5,
                exit_p99_ratio=1.5,
                exit_rejection_rate=0.01,
            ),
        ),
        hold_s=10.0,
        min_dwell_s=5.0,
    )


@dataclass(frozen=True)
class ModeChange:
    at: float
    from_mode: str
    to_mode: str
    reason: str
    forced: bool


def _show(signal: str, value: float) -> str:
    if signal == "queue_fill":
        return f"queue {value * 100:.0f} % full"
    if signal == "p99_ratio":
        return f"p99 {value:.2f}x target"
    return f"{value * 100:.1f} % refused"


def _limit(signal: str, value: float) -> str:
    return f"{value:g}x" if signal == "p99_ratio" else f"{value * 100:g} %"


class ModeController:
    def __init__(self, policy: ModePolicy, now: float, *, history_limit: int = 100) -> None:
        if history_limit < 1:
            raise ValueError("history_limit must be >= 1")
        self.policy = policy
        self.level = 0
        self.forced = False
        self.history: list[ModeChange] = []
        self._history_limit = history_limit
        self._last_event_at = now
        # None until the first change: the first burst must not wait out a dwell.
        self._last_change_at: float | None = None
        self._calm_since: float | None = None  # start of the current run of calm samples

    @property
    def mode(self) -> str:
        return self.policy.levels[self.level].name

    @property
    def switches(self) -> ModeSwitches:
        return self.policy.levels[self.level].switches

    # -- the timer ----------------------------------------------------------------------

    def observe(self, now: float, signals: LoadSignals) -> ModeChange | None:
        self._check_clock(now)
        self._last_event_at = now
        signals = self._trusted(signals)
        target, reason = self._target(now, signals)
        if target == self.level or self.forced:
            return None  # a forced mode stays put; the calm time above was still tracked
        last = self._last_change_at
        rising = target > self.level
        # The dwell holds back only steps down: a burst that outgrows surge must reach
        # emergency at once (hysteresis and hold_s already stop flapping).
        if not rising and last is not None and now - last < self.policy.min_dwell_s:
            return None
        change = self._change(now, target, reason, forced=False)
        if self._calm(signals):
            self._calm_since = now  # already calm for the rung below: its hold starts now
        return change

    def _trusted(self, s: LoadSignals) -> LoadSignals:
        """The signals with a refusal share over too small a sample read as 0."""
        if s.offered is None or s.offered >= self.policy.min_requests or not s.rejection_rate:
            return s
        return replace(s, rejection_rate=0.0)

    def _target(self, now: float, s: LoadSignals) -> tuple[int, str]:
        """The level the signals call for and why; keeps the calm clock on the way."""
        levels = self.policy.levels
        for i in range(len(levels) - 1, self.level, -1):  # the highest level reached wins
            hits = [
                f"{_show(sig, v)} >= {_limit(sig, levels[i].enter(sig))}"
                for sig in _SIGNALS
                if (v := getattr(s, sig)) >= levels[i].enter(sig)
            ]
            if hits:
                self._calm_since = None
                return i, ", ".join(hits)
        if self.level == 0:
            return 0, ""
        if not self._calm(s):
            self._calm_since = None
            return self.level, ""
        if self._calm_since is None:
            self._calm_since = now
        calm_for = now - self._calm_since
        if calm_for < self.policy.hold_s:
            return self.level, ""
        level = levels[self.level]
        figures = ", ".join(
            f"{_show(sig, getattr(s, sig))} < {_limit(sig, level.exit(sig))}"
            for sig in _SIGNALS
            if level.exit(sig) != math.inf
        )
        return self.level - 1, f"calm for {calm_for:.1f} s: {figures or 'no exit thresholds'}"

    def _calm(self, s: LoadSignals) -> bool:
        """Every signal below the current level's exit threshold (the base is always calm)."""
        if self.level == 0:
            return True
        level = self.policy.levels[self.level]
        return all(getattr(s, sig) < level.exit(sig) for sig in _SIGNALS)

    # -- operator events ----------------------------------------------------------------

    def force(self, mode: str, now: float, reason: str) -> ModeChange:
        """Pin a mode until `release`; neither dwell nor hold applies to an operator."""
        self._check_clock(now)
        target = self.policy.index(mode)  # raises before anything changes
        self._last_event_at = now
        self.forced = True
        return self._change(now, target, reason, forced=True)

    def release(self, now: float, reason: str = "operator released") -> ModeChange | None:
        """Back to automatic from the forced mode; the next observe decides. A release
        while automatic is a no-op (None), so a repeated admin call is harmless."""
        self._check_clock(now)
        self._last_event_at = now
        if not self.forced:
            return None
        self.forced = False
        change = ModeChange(now, self.mode, self.mode, reason, forced=False)
        self._record(change)
        return change

    # -- internals ------------------------------------------------------------------------

    def _check_clock(self, now: float) -> None:
        if now < self._last_event_at:
            raise ValueError(f"time went backwards: {now} < {self._last_event_at}")

    def _change(self, now: float, target: int, reason: str, *, forced: bool) -> ModeChange:
        change = ModeChange(now, self.mode, self.policy.levels[target].name, reason, forced)
        if target != self.level:
            self.level = target
            self._last_change_at = now
            self._calm_since = None  # each rung down earns its own hold_s of calm
        self._record(change)
        return change

    def _record(self, change: ModeChange) -> None:
        self.history.append(change)
        if len(self.history) > self._history_limit:
            del self.history[: -self._history_limit]
