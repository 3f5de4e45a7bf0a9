"""A circuit breaker per upstream: stop sending to a deployment that keeps failing, probe
it after a pause, and resume when a probe succeeds (sans-IO, explicit clock).

The driver asks `allow(now)` before each call and reports the outcome with
`record_success`, `record_failure` or, for a call that ended with no verdict
(cancelled, never sent), `record_cancelled`. Time moves only through `now`: an open
breaker becomes half-open when `allow` is next asked after `open_s`, not by a timer.

States change only through TRANSITIONS; an event a state does not allow raises
`IllegalTransition` and leaves the breaker as it was.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import NamedTuple

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"

# state -> event -> next state
TRANSITIONS: dict[str, dict[str, str]] = {
    CLOSED: {"trip": OPEN},
    OPEN: {"cool_down": HALF_OPEN},
    HALF_OPEN: {"probe_succeeded": CLOSED, "probe_failed": OPEN},
}

TRANSITION_HISTORY = 100  # enough to explain the last flaps, bounded for a long-lived server


@dataclass(frozen=True)
class BreakerPolicy:
    failure_threshold: int = 5  # failures within window_s that open the breaker
    window_s: float = 10.0
    open_s: float = 5.0  # pause before the first probe
    half_open_probes: int = 1  # probes in flight at once while half-open
    # A probe whose answer never comes would hold its slot forever and the breaker
    # would refuse every call; after this long it counts as a failed probe.
    probe_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if self.failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        if self.half_open_probes < 1:
            raise ValueError("half_open_probes must be at least 1")
        for name in ("window_s", "open_s", "probe_timeout_s"):
            if not getattr(self, name) > 0:  # `not >` also refuses NaN
                raise ValueError(f"{name} must be positive")


class BreakerTransition(NamedTuple):
    at: float
    from_state: str
    to_state: str
    reason: str


class IllegalTransition(Exception):
    def __init__(self, name: str, state: str, event: str) -> None:
        label = f"breaker {name!r}" if name else "a breaker"
        super().__init__(f"cannot {event} {label} that is {state}")
        self.state = state
        self.event = event


class CircuitBreaker:
    def __init__(self, policy: BreakerPolicy, name: str = "") -> None:
        self.policy = policy
        self.name = name
        self.state = CLOSED
        self.opened_at: float | None = None
        self.transitions: deque[BreakerTransition] = deque(maxlen=TRANSITION_HISTORY)
        self._failures: deque[float] = deque()  # times of failures inside the window (closed)
        self._probes: deque[float] = deque()  # admission times of probes in flight (half-open)

    def _move(self, event: str, now: float, reason: str) -> None:
        allowed = TRANSITIONS[self.state]
        if event not in allowed:
            raise IllegalTransition(self.name, self.state, event)
        target = allowed[event]
        self.transitions.append(BreakerTransition(now, self.state, target, reason))
        self.state = target
        # Every state starts from a clean slate: a closed breaker counts failures
        # afresh, an open one counts nothing, a half-open one has no probe out yet.
        self._failures.clear()
        self._probes.clear()
        self.opened_at = now if target == OPEN else None

    # -- the call path --------------------------------------------------------------------

    def allow(self, now: float) -> bool:
        """Whether a call may go out now; while half-open, a True takes a probe slot."""
        p = self.policy
        if self.state == OPEN:
            assert self.opened_at is not None
            if now < self.opened_at + p.open_s:
                return False
            self._move("cool_down", now, f"open for {p.open_s:g} s: probing")
        if self.state == HALF_OPEN:
            self._expire_probes(now)
            if self.state == HALF_OPEN and len(self._probes) < p.half_open_probes:
                self._probes.append(now)
                return True
            return False
        return True

    def record_success(self, now: float) -> None:
        # Closed counts failures only; open ignores answers to calls it let out before
        # it opened, since they say nothing about the upstream after the failures.
        if self.state == HALF_OPEN:
            self._move("probe_succeeded", now, "probe succeeded")

    def record_failure(self, now: float) -> None:
        p = self.policy
        if self.state == CLOSED:
            failures = self._failures
            failures.append(now)
            while failures and failures[0] <= now - p.window_s:
                failures.popleft()
            if len(failures) >= p.failure_threshold:
                self._move("trip", now, f"{len(failures)} failures within {p.window_s:g} s")
        elif self.state == HALF_OPEN:
            self._move("probe_failed", now, "probe failed")

    def record_cancelled(self, now: float) -> None:
        """A call let out ended with no verdict: while half-open, free its probe slot."""
        if self.state == HALF_OPEN and self._probes:
            self._probes.pop()

    def retry_after_s(self, now: float) -> float:
        """Seconds until a call may be let out (0 when one may go now); changes nothing."""
        p = self.policy
        if self.state == OPEN:
            assert self.opened_at is not None
            return max(0.0, self.opened_at + p.open_s - now)
        if self.state == HALF_OPEN and len(self._probes) >= p.half_open_probes:
            # The probes out decide: a success lets calls through at once, a failure
            # shuts them out for another open_s. Advising open_s keeps a refused client
            # from coming straight back into the same refusal.
            return p.open_s
        return 0.0

    def _expire_probes(self, now: float) -> None:
        timeout = self.policy.probe_timeout_s
        if self._probes and now - self._probes[0] >= timeout:
            self._move("probe_failed", now, f"probe gave no answer within {timeout:g} s")
