"""A replica: one loaded runtime and the single worker thread it runs on.

Everything here runs on the replica's thread, never on the event loop:
assembling the batch, the model call and the timing of that call.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from surge.core.errors import SurgeError
from surge.core.tensors import Tensors
from surge.observe.energy import BatchEnergy, EnergyMeter
from surge.runtimes.base import Runtime


@dataclass(frozen=True)
class BatchResult:
    outputs: Tensors
    compute_start: float  # runtime.run only: the compute stage of Server-Timing
    compute_end: float
    busy_s: float = 0.0  # the whole time the replica was occupied by this batch
    energy: BatchEnergy | None = None
    summary: Any = None  # drift signals of the batch, when watched


def concat(parts: list[Tensors]) -> Tensors:
    if len(parts) == 1:
        return parts[0]
    return {name: np.concatenate([p[name] for p in parts], axis=0) for name in parts[0]}


def checked(outputs: object, inputs: Tensors, ref: str) -> Tensors:
    """The model's outputs, or a 500 that says what is wrong with them: a batch is split
    back into answers by rows, so a model that returns anything else would otherwise
    fail after compute, where no request could be answered."""
    rows = len(next(iter(inputs.values()))) if inputs else 0
    if not isinstance(outputs, dict) or not outputs:
        raise SurgeError(
            "model_error",
            f"model {ref} returned {type(outputs).__name__}, not a dict of tensors",
            500,
        )
    arrays = {}
    for name, value in outputs.items():
        array = np.asarray(value)
        if array.ndim == 0 or len(array) != rows:
            got = "a scalar" if array.ndim == 0 else f"{len(array)} rows"
            raise SurgeError(
                "model_error",
                f"model {ref} returned {got} for output {name!r}; the batch has {rows}",
                500,
            )
        arrays[name] = array
    return arrays


def split(outputs: Tensors, rows: list[int]) -> list[Tensors]:
    """Slice a batch's outputs back into per-request views."""
    if len(rows) == 1:
        return [outputs]
    out: list[Tensors] = []
    start = 0
    for n in rows:
        out.append({name: value[start : start + n] for name, value in outputs.items()})
        start += n
    return out


def lower_priority(nice: int) -> None:
    """Make the calling thread yield the CPU to the event loop (Linux: nice is per thread).

    Compute threads keep both cores busy under load; at equal priority the event
    loop waits its turn behind them and requests sit unread in socket buffers.
    Threads the runtime starts later (ONNX Runtime's intra-op pool is created at
    load, on this thread) inherit the value.
    """
    if nice > 0 and hasattr(os, "setpriority"):
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)


class Replica:
    def __init__(
        self,
        name: str,
        runtime: Runtime,
        nice: int = 0,
        meter: EnergyMeter | None = None,
        summarize: Callable[[Tensors, Tensors], Any] | None = None,
    ) -> None:
        self.name = name
        self.runtime = runtime
        self.meter = meter
        self.summarize = summarize
        # Seconds this replica spent executing batches since it went live; written only
        # by the replica's thread. The receipts' attributed compute is checked against it.
        self.busy_s = 0.0
        self.executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=name, initializer=lower_priority, initargs=(nice,)
        )

    def execute(
        self,
        parts: list[Tensors],
        outbound_headers: dict[str, str] | None = None,
        deadline: float | None = None,
    ) -> BatchResult:
        began = time.monotonic()
        inputs = concat(parts)
        # Runtimes that call out (upstream) forward the trace context of the batch and
        # wait no longer than its deadline; one replica runs one batch at a time, so the
        # attributes are this batch's alone.
        self.runtime.outbound_headers = outbound_headers
        self.runtime.deadline = deadline
        token = self.meter.begin() if self.meter is not None else None
        start = time.monotonic()
        outputs = self.runtime.run(inputs)
        end = time.monotonic()
        energy = self.meter.end(token) if self.meter is not None else None
        outputs = checked(outputs, inputs, self.runtime.version.ref)
        summary = self.summarize(inputs, outputs) if self.summarize is not None else None
        busy = time.monotonic() - began
        self.busy_s += busy
        return BatchResult(outputs, start, end, busy, energy, summary)

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
