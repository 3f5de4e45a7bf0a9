"""How long each benchmark runs and the fixed parameters every module shares."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CLIENTS = (8, 32, 64)  # closed-loop concurrency levels
TARGET_CLIENTS = 32  # where the throughput and p99 targets are judged
BATCH_SIZES = (8, 16, 32, 64)  # the in-process sweep
OPEN_LOOP_SHARES = (0.5, 0.9)  # of measured capacity
OVERLOAD_FACTOR = 2.0
OVERLOAD_DEADLINE_MS = 500
NOOP_CONNECTIONS = 32
WRK_CAP_PER_S = 50_000  # a request bound per wrk run, far above any rate seen here


@dataclass(frozen=True)
class Durations:
    inprocess_s: float  # per batch size
    wrk_s: float  # per closed-loop run
    warmup_s: float
    openloop_s: float
    overload_s: float
    noop_s: float
    noop_rounds: int  # bare and surge alternate this many times; the best of each counts
    int8_rounds: int  # fp32 and int8 alternate this many times; the best of each counts
    inprocess_rounds: int  # sweeps of the batch sizes; the best of each size counts
    quiet_wait_s: float  # longest wait for other processes to go quiet before a measured run


FULL = Durations(5, 15, 3, 20, 60, 10, 2, 2, 2, 60)
QUICK = Durations(1, 3, 1, 5, 10, 3, 1, 1, 1, 5)


@dataclass(frozen=True)
class Settings:
    durations: Durations
    repository: Path  # the model repository holding digits, embed and noop
    workdir: Path  # temp configs and server logs
    threads: int  # ORT intra-op threads in process: what `surge serve` gives one replica
