"""One replica on Ray, both ends: `ReplicaActor` holds the runtime on a node of the
cluster, `RayReplica` is what the gateway's batcher sees of it.

The actor loads from the model repository path on its own node and verifies the files'
checksums there: the node's copy is what runs, so it is the copy that must match.
`RayReplica` has a local `Replica`'s `execute` on a one-thread executor: it sends the
batch's numpy tensors through Ray's object store and waits for the answer (the thread
waits, not the event loop). Imported only when an endpoint is placed on Ray.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import ray
import ray.exceptions as rex

from surge.config_placement import RayPlacement
from surge.core.errors import SurgeError
from surge.core.tensors import Tensors
from surge.repository import ModelRepository
from surge.runtimes.base import RuntimeSettings
from surge.runtimes.registry import runtime_class
from surge.serving.replica import BatchResult, checked, concat

log = logging.getLogger("surge.ray")


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


# What Ray raises when the actor or its node is gone (not when the model failed).
_LOST = (
    rex.RayActorError,
    rex.ActorUnavailableError,
    rex.WorkerCrashedError,
    rex.NodeDiedError,
    rex.ObjectLostError,
    rex.OwnerDiedError,
    rex.LocalRayletDiedError,
)
# A batch slower than its deadline by this much means the actor is stuck, not busy.
_STUCK_GRACE_S = 2.0
_connect_lock = threading.Lock()


class ReplicaLost(SurgeError):
    """The replica could not run the batch (actor or node gone, or stuck). A 503 in its
    own right, for a request that meets it where no retry is left (a batch-mate rerun
    alone by the base deployment's isolation)."""

    def __init__(self, message: str) -> None:
        super().__init__("replica_unavailable", message, 503, 1.0)


def connect(placement: RayPlacement) -> None:
    """Join the configured cluster once per process (blocking: call it off the loop)."""
    with _connect_lock:
        if ray.is_initialized():
            return
        if placement.address is None:
            # A private single-host Ray: "local" starts one even where another cluster
            # runs on this host (a bare init would join it); no dashboard (a web server
            # nobody asked for).
            ray.init(
                address="local",
                namespace=placement.namespace,
                include_dashboard=False,
                log_to_driver=False,
            )
        else:
            ray.init(address=placement.address, namespace=placement.namespace, log_to_driver=False)


def wait_healthy(handle: Any, timeout_s: float) -> None:
    ray.get(handle.health.remote(), timeout=timeout_s)


class RayReplica:
    """One actor as the batcher sees a replica."""

    placement = "ray"

    def __init__(
        self,
        name: str,
        handle: Any,
        summarize: Callable[[Tensors, Tensors], Any] | None = None,
    ) -> None:
        self.name = name
        self.handle = handle
        self.summarize = summarize
        self.meter = None  # the actor's node is not this host: no energy reading here
        self.busy_s = 0.0
        self.ready = False
        self.running = False  # launched and not yet released (event-loop side)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

    def execute(
        self,
        parts: list[Tensors],
        outbound_headers: dict[str, str] | None = None,
        deadline: float | None = None,
    ) -> BatchResult:
        began = time.monotonic()
        inputs = concat(parts)
        remaining = None if deadline is None else max(0.0, deadline - began)
        ref = self.handle.run.remote(inputs, outbound_headers, remaining)
        try:
            outputs, compute_s = ray.get(
                ref, timeout=None if remaining is None else remaining + _STUCK_GRACE_S
            )
        except rex.GetTimeoutError as exc:
            raise ReplicaLost(f"{self.name} did not answer within the deadline") from exc
        except _LOST as exc:
            raise ReplicaLost(f"{self.name} is gone: {type(exc).__name__}") from exc
        except rex.RayTaskError as exc:  # the runtime raised: the model's error, as is
            cause = exc.cause
            raise cause if isinstance(cause, Exception) else exc from None
        end = time.monotonic()
        # Busy is the actor's compute alone: with batches in flight, the wall from here
        # also holds the wait behind the previous batch, which receipts must not bill
        # (and the idle-cost line would count twice).
        self.busy_s += compute_s
        summary = self.summarize(inputs, outputs) if self.summarize is not None else None
        # The actor's clock is another host's: the compute stage is placed to end at the
        # answer's arrival, so Server-Timing's compute is the runtime's own seconds.
        return BatchResult(outputs, end - compute_s, end, compute_s, None, summary)

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
        try:
            ray.kill(self.handle, no_restart=True)
        except Exception:  # already gone, or Ray shut down first: nothing left to stop
            log.debug("actor %s was already gone", self.name)
