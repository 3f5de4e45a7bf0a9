"""The platform's notion of time.

Policies never read a clock; they take `now` (monotonic seconds) as a
parameter. The async drivers read it from here, and tests pass their own.
"""

from __future__ import annotations

import time

monotonic = time.monotonic
