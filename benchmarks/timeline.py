"""Reading a run over time: loadgen's per-request samples and the burst mode's timeline.

A sample is [scheduled offset s, outcome, latency s from the scheduled time, header]
(loadgen.py, `samples: true`). Offsets are from the run's `started_at`, a
CLOCK_MONOTONIC time, the clock the server stamps its mode changes with, so the two
line up without translation.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from typing import Any

from benchmarks.loadgen import percentiles
from surge.routing.modes import default_policy

Sample = list[Any]
LEVELS = [level.name for level in default_policy().levels]  # normal, surge, emergency


def ok_latencies(samples: list[Sample]) -> list[float]:
    return [s[2] for s in samples if s[1] == "200"]


def code_shares(samples: list[Sample]) -> str:
    counts: dict[str, int] = {}
    for s in samples:
        counts[s[1]] = counts.get(s[1], 0) + 1
    total = max(len(samples), 1)
    return ", ".join(f"{code}: {n / total:.1%}" for code, n in sorted(counts.items()))


def between(samples: list[Sample], start: float, end: float = float("inf")) -> list[Sample]:
    """The requests scheduled in [start, end) seconds into the run."""
    return [s for s in samples if start <= s[0] < end]


class ModePoller(threading.Thread):
    """GET /admin/mode every `every_s`: (monotonic time, mode, signals) per poll, and the
    last answer (whose `history` holds each change's exact time and reason)."""

    def __init__(self, url: str, key: str, every_s: float) -> None:
        super().__init__(daemon=True)
        self.request = urllib.request.Request(
            url + "/admin/mode", headers={"Authorization": f"Bearer {key}"}
        )
        self.every_s = every_s
        self.polls: list[tuple[float, str, dict[str, float]]] = []
        self.last: dict[str, Any] = {}
        self.errors = 0
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            try:
                with urllib.request.urlopen(self.request, timeout=2) as response:
                    doc = json.loads(response.read())
                self.last = doc
                self.polls.append((time.monotonic(), doc["mode"], doc["signals"]))
            except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError):
                self.errors += 1
            self._done.wait(self.every_s)

    def stop(self) -> None:
        self._done.set()
        self.join(5)

    def changes(self, t0: float) -> list[dict[str, Any]]:
        """Every change of mode, with its time in seconds from `t0`."""
        history = self.last.get("history", [])
        return [{**c, "t_s": round(c["at"] - t0, 2)} for c in history if c["from"] != c["to"]]


def is_rise(change: dict[str, Any]) -> bool:
    return LEVELS.index(change["to"]) > LEVELS.index(change["from"])


def episodes(changes: list[dict[str, Any]]) -> tuple[int, int]:
    """Rises and falls: runs of changes in one direction. A burst handled without
    flapping is one of each, however many modes each run crosses."""
    up = [is_rise(c) for c in changes]
    turns = [d for i, d in enumerate(up) if i == 0 or d != up[i - 1]]
    return sum(turns), len(turns) - sum(turns)


def per_second(
    samples: list[Sample], polls: list[tuple[float, str, Any]], t0: float
) -> list[dict[str, Any]]:
    """Each second of the run: requests sent, 200s, their p99, and the mode polled last."""
    out = []
    for second in range(int(max((s[0] for s in samples), default=0)) + 1):
        part = between(samples, second, second + 1)
        modes = [mode for t, mode, _ in polls if t - t0 < second + 1]
        ok = ok_latencies(part)
        p99 = percentiles(ok).get("p99")
        mode = modes[-1] if modes else None
        out.append(
            {"t_s": second, "sent": len(part), "ok": len(ok), "ok_p99_ms": p99, "mode": mode}
        )
    return out
