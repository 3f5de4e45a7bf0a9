"""What a semantic cache lookup costs per request, and what embedding the query costs:
the cost half of `benchmarks.semantic_cache` (see its docstring), which runs it.

Lookups go through `SemanticCache` over one scope of random 384-d unit vectors (brute
force costs the same whatever the vectors), queried with real embeddings, in four ways:
the sans-IO `lookup_vector` on the calling thread, and the async `lookup` with an
instant embedding (so the embedding is excluded) at the default thread cut-over, forced
inline and forced into a thread. A lookup in a thread is slower for its own request
(the hop) but leaves the loop free meanwhile, so the loop's stalls are measured too:
`THREAD_CUTOVER_ENTRIES` is where an inline stall outgrows a hop's cost.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import sys
import time
from typing import Any

import numpy as np

from benchmarks.semantic_cache import embed_texts
from benchmarks.servers import wait_for_quiet

COST_SIZES = (256, 1_000, 2_000, 4_000, 8_000, 10_000, 16_000)
DIM = 384


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _percentiles(times: list[float]) -> dict[str, float]:
    times = sorted(times)
    return {"p50_us": times[len(times) // 2] * 1e6, "p99_us": times[int(len(times) * 0.99)] * 1e6}


async def _async_times(cache: Any, n: int) -> list[float]:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        await cache.lookup("query", "t", now=0.0)
        times.append(time.perf_counter() - start)
    return times


async def _loop_stalls(cache: Any, n: int) -> list[float]:
    """How long the loop went without running anything else while lookups ran: the gaps
    seen by a task that yields at every turn of the loop."""
    gaps: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(0)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    task = asyncio.create_task(ticker())
    await _async_times(cache, n)
    done.set()
    await task
    return gaps


def lookup_cost(queries: np.ndarray, sizes=COST_SIZES, rounds: int = 5, calls: int = 200):
    """Per size, best of `rounds` (interleaved, so a busy spell of the shared machine
    hits every mode alike) of `calls` lookups each, garbage collection paused."""
    rng = np.random.default_rng(0)
    gc.disable()
    try:
        return [_cost_at(rng.standard_normal((n, DIM)).astype(np.float32), queries, rounds, calls)
                for n in sizes]  # fmt: skip
    finally:
        gc.enable()


def _cost_at(stored: np.ndarray, queries: np.ndarray, rounds: int, calls: int) -> dict:
    from surge.cache.semantic_cache import THREAD_CUTOVER_ENTRIES, SemanticCache

    turn = itertools.cycle(queries)

    async def instant(texts: list[str]) -> np.ndarray:
        return next(turn)[None, :]

    def sans_io() -> list[float]:
        times = []
        for _ in range(calls):
            start = time.perf_counter()
            cache.lookup_vector(next(turn), "t", 0.0)
            times.append(time.perf_counter() - start)
        return times

    cache = SemanticCache(instant, 0.9, len(stored), 1 << 31, 3600.0, clock=lambda: 0.0)
    for i, vector in enumerate(stored):
        cache.add_vector(vector, "t", b"answer", now=0.0, key=str(i))
    modes = {
        "sans_io_inline": (None, sans_io),
        "async_default": (THREAD_CUTOVER_ENTRIES, _async_times),
        "async_inline": (10**9, _async_times),
        "async_thread": (0, _async_times),
        "stall_inline": (10**9, _loop_stalls),
        "stall_thread": (0, _loop_stalls),
    }
    row: dict[str, Any] = {"entries": len(stored)}
    row["background_cores"] = wait_for_quiet(_log, max_wait_s=30.0)
    for _ in range(rounds):
        for mode, (cutover, measure) in modes.items():
            if cutover is None:
                got = _percentiles(measure())
            else:
                cache.thread_cutover_entries = cutover
                # A stall run's ticker spins the loop, so each threaded lookup waits for
                # the GIL (up to the 5 ms switch interval): fewer calls there.
                n = calls // 4 if measure is _loop_stalls else calls
                got = _percentiles(asyncio.run(measure(cache, n)))
            best = row.setdefault(mode, got)
            row[mode] = {k: min(best[k], got[k]) for k in got}
    row["threaded_by_default"] = len(stored) > THREAD_CUTOVER_ENTRIES
    return row


def embedding_cost(runtime: Any, texts: list[str]) -> dict[str, float]:
    from benchmarks.inprocess import as_text

    wait_for_quiet(_log, max_wait_s=30.0)
    for text in texts[:8]:
        runtime.run({"text": as_text([text])})  # first calls pay one-off allocations
    one = []
    for text in texts:
        start = time.perf_counter()
        runtime.run({"text": as_text([text])})
        one.append(time.perf_counter() - start)
    one.sort()
    start = time.perf_counter()
    embed_texts(runtime, texts, batch=32)
    batched = (time.perf_counter() - start) / len(texts)
    return {
        "texts": len(texts),
        "one_per_call_p50_ms": one[len(one) // 2] * 1e3,
        "one_per_call_p99_ms": one[int(len(one) * 0.99)] * 1e3,
        "batch32_ms_per_text": batched * 1e3,
    }
