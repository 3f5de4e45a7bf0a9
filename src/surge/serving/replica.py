"""A replica: one loaded runtime and the single worker thread it runs on.

Everything here runs on the replica's thread, never on the event loop:
assembling the batch, the model call and the timing of that call.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from surge.core.errors import SurgeError
from surge.runtimes.base import Runtime, Tensors


@dataclass(frozen=True)
class BatchResult:
    outputs: Tensors
    compute_start: float
    compute_end: float


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
    def __init__(self, name: str, runtime: Runtime, nice: int = 0) -> None:
        self.name = name
        self.runtime = runtime
        self.executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=name, initializer=lower_priority, initargs=(nice,)
        )

    def execute(self, parts: list[Tensors]) -> BatchResult:
        inputs = concat(parts)
        start = time.monotonic()
        outputs = self.runtime.run(inputs)
        end = time.monotonic()
        return BatchResult(checked(outputs, inputs, self.runtime.version.ref), start, end)

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
