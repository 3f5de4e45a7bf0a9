"""asyncio + aiohttp load generator, run as its own process (`python -m benchmarks.loadgen`).

Two shapes of load:
- closed: C clients, each sending its next request when the last is answered;
- open: Poisson arrivals at a fixed rate, each sent at its scheduled absolute
  time whether or not earlier ones were answered, so a slow server cannot
  slow the arrival process (no coordinated omission). Latency is counted from
  the scheduled time; `service` latency from the moment the request was
  handed to the client, which is what a server-side deadline sees.

An open loop may change its rate in steps (`phases`: [{rate, duration_s}, ...],
e.g. normal -> burst -> normal; `duration_s` is then their sum). With `samples:
true` the result also lists every request as [scheduled offset s, outcome,
latency s from the scheduled time, the response header `record_header` or null].

With `deadline_s` the result also counts the 200s answered within that many seconds
of their send (`ok_within_deadline`).

Every run stops at `duration_s` or `max_requests`, whichever comes first, and
targets only 127.0.0.1. It reads a JSON spec on stdin and prints a JSON result
on stdout; `run_loadgen` does both from the orchestrator.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import re
import resource
import subprocess
import sys
import time
from collections import Counter
from typing import Any

import aiohttp

from benchmarks.servers import REPO_ROOT

CLIENT_TIMEOUT_S = 30.0
SERVER_TIMING = re.compile(r"(\w+);dur=([\d.]+)")


def percentiles(values: list[float]) -> dict[str, float]:
    """p50/p90/p99/max/mean of seconds, in ms (nearest-rank)."""
    if not values:
        return {}
    ordered = sorted(values)
    n = len(ordered)

    def rank(q: float) -> float:
        return ordered[min(n - 1, max(0, math.ceil(q * n) - 1))] * 1000

    return {
        "p50": round(rank(0.50), 3),
        "p90": round(rank(0.90), 3),
        "p99": round(rank(0.99), 3),
        "max": round(ordered[-1] * 1000, 3),
        "mean": round(sum(ordered) / n * 1000, 3),
    }


class Recorder:
    def __init__(self, record_header: str | None = None, keep_samples: bool = False) -> None:
        self.started = time.perf_counter()  # the origin of the samples' offsets
        self.record_header = record_header
        self.samples: list[tuple[float, str, float, str | None]] | None = (
            [] if keep_samples else None
        )
        self.status: Counter[str] = Counter()
        self.latency: dict[str, list[float]] = {}  # by outcome, from the scheduled time
        self.service: dict[str, list[float]] = {}  # by outcome, from the actual send
        self.lag: list[float] = []  # actual send - scheduled send (open loop)
        self.server_ms: dict[str, list[float]] = {}  # 200s' Server-Timing stages, by stage
        self.error_samples: list[str] = []

    def add(
        self, outcome: str, scheduled: float, sent: float, done: float, header: str | None = None
    ) -> None:
        if self.samples is not None:
            self.samples.append((scheduled - self.started, outcome, done - scheduled, header))
        self.status[outcome] += 1
        self.latency.setdefault(outcome, []).append(done - scheduled)
        self.service.setdefault(outcome, []).append(done - sent)
        self.lag.append(sent - scheduled)


# Timestamps come from perf_counter: uvloop's loop.time() is libuv's cached
# millisecond clock, too coarse for sub-millisecond latencies.
async def _one(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    headers: dict[str, str],
    scheduled: float,
    rec: Recorder,
) -> None:
    sent = time.perf_counter()
    recorded = None
    try:
        async with session.post(url, data=body, headers=headers) as response:
            await response.read()
            outcome = str(response.status)
            if rec.record_header:
                recorded = response.headers.get(rec.record_header)
            timing = response.headers.get("Server-Timing") if outcome == "200" else None
            if timing:
                for stage, ms in SERVER_TIMING.findall(timing):
                    rec.server_ms.setdefault(stage, []).append(float(ms) / 1000)
    except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
        outcome = "connection_error"
        if len(rec.error_samples) < 5:
            rec.error_samples.append(repr(exc))
    except TimeoutError:
        outcome = "client_timeout"
    rec.add(outcome, scheduled, sent, time.perf_counter(), recorded)


async def closed_loop(spec: dict[str, Any], session: aiohttp.ClientSession, rec: Recorder) -> None:
    bodies = [b.encode() for b in spec["bodies"]]
    end = time.perf_counter() + spec["duration_s"]
    budget = spec["max_requests"]
    counter = 0

    async def client(offset: int) -> None:
        nonlocal counter
        i = offset
        while time.perf_counter() < end and counter < budget:
            counter += 1
            i += 1
            now = time.perf_counter()
            await _one(session, spec["url"], bodies[i % len(bodies)], spec["headers"], now, rec)

    await asyncio.gather(*(client(c) for c in range(spec["concurrency"])))


def _phases(spec: dict[str, Any]) -> list[tuple[float, float]]:
    """(rate, end offset s) of each phase; one phase unless the spec lists several."""
    phases = spec.get("phases") or [{"rate": spec["rate"], "duration_s": spec["duration_s"]}]
    out, end = [], 0.0
    for phase in phases:
        end += phase["duration_s"]
        out.append((phase["rate"], end))
    return out


async def open_loop(spec: dict[str, Any], session: aiohttp.ClientSession, rec: Recorder) -> None:
    bodies = [b.encode() for b in spec["bodies"]]
    rng = random.Random(spec.get("seed", 0))
    phases = _phases(spec)
    phase = 0
    start = time.perf_counter() + 0.05
    rec.started = start  # sample offsets are offsets into the schedule
    at = start
    tasks: set[asyncio.Task[None]] = set()
    for i in range(spec["max_requests"]):
        rate, end = phases[phase]
        at += rng.expovariate(rate)  # absolute schedule: a late send never shifts the next
        while at - start > end and phase + 1 < len(phases):
            # Arrivals are memoryless: the next phase draws afresh from its own start.
            phase += 1
            rate, end = phases[phase]
            at = start + phases[phase - 1][1] + rng.expovariate(rate)
        if at - start > end:
            break
        delay = at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        body = bodies[i % len(bodies)]
        task = asyncio.create_task(_one(session, spec["url"], body, spec["headers"], at, rec))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.gather(*tasks)


async def main_async(spec: dict[str, Any]) -> dict[str, Any]:
    if not spec["url"].startswith("http://127.0.0.1:"):
        raise ValueError(f"benchmarks only target 127.0.0.1, not {spec['url']}")
    spec.setdefault("headers", {})
    spec["headers"].setdefault("Content-Type", "application/json")
    rec = Recorder(spec.get("record_header"), spec.get("samples", False))
    # Enough connections that the pool never queues requests the server could take.
    connector = aiohttp.TCPConnector(limit=spec.get("connection_limit", 1024))
    timeout = aiohttp.ClientTimeout(total=CLIENT_TIMEOUT_S)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        cpu_before = resource.getrusage(resource.RUSAGE_SELF)
        started = time.monotonic()
        rec.started = time.perf_counter()
        if spec["mode"] == "closed":
            await closed_loop(spec, session, rec)
        else:
            await open_loop(spec, session, rec)
        wall = time.monotonic() - started
        cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    total = sum(rec.status.values())
    ok = rec.status.get("200", 0)
    extra: dict[str, Any] = {}
    if spec.get("deadline_s"):
        # 200s that reached the client within the deadline of their send (send to answer)
        extra["ok_within_deadline"] = sum(
            1 for x in rec.service.get("200", []) if x <= spec["deadline_s"]
        )
    if rec.samples is not None:
        # perf_counter is CLOCK_MONOTONIC on Linux, the server's clock too: offsets line up
        extra = {"started_at": rec.started, "samples": sorted(rec.samples)}
    return {
        "generator": "aiohttp",
        "mode": spec["mode"],
        "rate": spec.get("rate"),
        "concurrency": spec.get("concurrency"),
        "duration_s": round(wall, 3),
        "requests": total,
        "ok": ok,
        "status": dict(rec.status),
        "rps": round(total / wall, 1),
        "ok_rps": round(ok / wall, 1),
        "latency_ms": percentiles([x for v in rec.latency.values() for x in v]),
        "latency_ok_ms": percentiles(rec.latency.get("200", [])),
        "service_ok_ms": percentiles(rec.service.get("200", [])),
        "send_lag_ms": percentiles(rec.lag),
        # The server's own view of its 200s, to set against the client's.
        "server_timing_ok_ms": {k: percentiles(v) for k, v in rec.server_ms.items()},
        "error_samples": rec.error_samples,
        "generator_cores": round(cpu / wall, 3),
        **extra,
    }


def run_loadgen(spec: dict[str, Any], timeout_s: float | None = None) -> dict[str, Any]:
    """Run one load in a fresh process (its own interpreter and event loop); return the result."""
    budget = timeout_s or spec["duration_s"] + CLIENT_TIMEOUT_S + 30
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.loadgen"],
        input=json.dumps(spec).encode(),
        capture_output=True,
        cwd=REPO_ROOT,
        timeout=budget,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"loadgen failed ({done.returncode}): {done.stderr.decode()[-2000:]}")
    return json.loads(done.stdout)


def main() -> None:
    spec = json.load(sys.stdin)
    try:
        import uvloop  # the same loop the server runs on; cheaper per request than asyncio's
    except ImportError:
        result = asyncio.run(main_async(spec))
    else:
        result = uvloop.run(main_async(spec))
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
