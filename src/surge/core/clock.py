"""The platform's notion of time.

Policies never read a clock; they take `now` (monotonic seconds) as a
parameter. The async drivers read it from here, and tests pass their own.
"""

from __future__ import annotations

import time

monotonic = time.monotonic


class FakeClock:
    """A clock tests move by hand."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now
