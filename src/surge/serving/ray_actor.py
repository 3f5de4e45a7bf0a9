"""The Ray actor that holds one replica's runtime on a node of the cluster.

Plain Python, no import of Ray: `ray_replica.py` wraps the class with `ray.remote` when
an endpoint is placed on Ray, so a server without Ray installed never imports it. The
actor loads from the model repository path on its own node and verifies the files'
checksums there: the node's copy is what runs, so it is the copy that must match.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from surge.core.tensors import Tensors
from surge.repository import ModelRepository
from surge.runtimes.base import RuntimeSettings
from surge.runtimes.registry import runtime_class
from surge.serving.replica import checked


class ReplicaActor:
    def __init__(
        self,
        repository_root: str,
        model: str,
        version: str,
        settings: dict,
        warm_sizes: list[int],
        warmup_batches: int,
    ) -> None:
        found = ModelRepository(Path(repository_root)).version(model, version)
        found.verify_checksums()
        self.ref = found.ref
        self.runtime = runtime_class(found.manifest.runtime)(found, RuntimeSettings(**settings))
        self.runtime.load()
        self.batches = 0  # batches served since this (re)start: health reports it
        # Ray restarts a dead actor by running __init__ again: it reports healthy only
        # once warm, so a restarted replica never takes a batch at cold-start speed.
        for size in warm_sizes:
            inputs = self.runtime.warmup_inputs(size)
            for _ in range(warmup_batches + 1):
                self.runtime.run(inputs)

    def run(
        self, inputs: Tensors, outbound_headers: dict[str, str] | None, remaining_s: float | None
    ) -> tuple[Tensors, float]:
        """One batch; returns its outputs and the seconds `runtime.run` took. The
        deadline travels as time left: monotonic clocks of two hosts do not compare."""
        self.runtime.outbound_headers = outbound_headers
        self.runtime.deadline = None if remaining_s is None else time.monotonic() + remaining_s
        start = time.monotonic()
        outputs = self.runtime.run(inputs)
        seconds = time.monotonic() - start
        self.batches += 1
        return checked(outputs, inputs, self.ref), seconds

    def health(self) -> dict[str, object]:
        return {"pid": os.getpid(), "ref": self.ref, "batches": self.batches}
