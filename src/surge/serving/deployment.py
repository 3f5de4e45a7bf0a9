"""A deployment: one model version, N replicas, one bounded queue, one batcher.

This is the async driver around the sans-IO policies: it feeds the batcher
and admission with the clock, runs batches on replica threads, and resolves
each request's future. Decisions live in `batcher.py` and `admission.py`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from surge.core.clock import monotonic
from surge.core.context import RequestContext
from surge.core.errors import SurgeError
from surge.core.tensors import Tensors
from surge.observe.batch_watch import BatchWatch, record_runs
from surge.observe.metrics import EndpointMetrics
from surge.repository import ModelVersion
from surge.runtimes.base import Runtime, RuntimeSettings
from surge.serving.admission import AdmissionPolicy, QueueState, admit, signals_overload
from surge.serving.batcher import Batcher, BatchingPolicy, QueuedRequest
from surge.serving.latency import BatchLatencyModel
from surge.serving.replica import BatchResult, Replica, split
from surge.serving.replica_scaling import ReplicaScaling

log = logging.getLogger("surge.deployment")


def _expired_in_queue() -> SurgeError:
    return SurgeError(
        "deadline_exceeded",
        "the deadline passes before this request's batch could finish; dropped before compute",
        504,
    )


@dataclass(slots=True, eq=False)
class Pending:
    ctx: RequestContext
    tensors: Tensors
    future: asyncio.Future[Tensors]


@dataclass(frozen=True)
class DeploymentSpec:
    endpoint: str
    version: ModelVersion
    runtime_cls: type[Runtime]
    settings: RuntimeSettings
    replicas: int
    batching: BatchingPolicy
    max_queue: int
    timeout_s: float
    warmup_batches: int = 3
    compute_nice: int = 0


class Deployment(ReplicaScaling):
    def __init__(
        self,
        spec: DeploymentSpec,
        metrics: EndpointMetrics,
        clock: Callable[[], float] = monotonic,
        watch: BatchWatch | None = None,
        *,
        shadow: bool = False,
    ) -> None:
        self.spec = spec
        self.watch = watch
        self.shadow = shadow  # a shadow copy: background priority, never live traffic
        self.ready_at: float | None = None  # when it started serving (the idle-cost clock)
        self.name = spec.endpoint
        self.version = spec.version.version
        self.metrics = metrics
        self.clock = clock
        self.state = "loading"  # loading -> ready -> draining -> stopped
        self.batcher = Batcher(spec.batching)
        self.latency = BatchLatencyModel()
        self.admission = AdmissionPolicy(
            spec.max_queue, spec.batching.max_batch_size, spec.batching.max_queue_delay_s
        )
        self.replicas: list[Replica] = []
        self._idle: list[Replica] = []
        self._inflight = 0
        self.inflight_rows = 0  # rows queued or running: the autoscaler's load signal
        self.pending_replicas = 0  # being loaded and warmed by `scale_to`
        self._scaling = asyncio.Lock()
        self._retiring: set[Replica] = set()  # to leave as soon as they are idle
        self._driver: asyncio.Task[None] | None = None
        self._waker: asyncio.Future[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        """Load and warm every replica, then start taking requests."""
        loop = asyncio.get_running_loop()
        self.spec.version.verify_checksums()
        self.replicas = [self._new_replica(i) for i in range(self.spec.replicas)]
        self._next_replica = self.spec.replicas
        await asyncio.gather(
            *(loop.run_in_executor(r.executor, self._load_and_warm, r) for r in self.replicas)
        )
        for replica in self.replicas:
            replica.busy_s = 0.0  # warm-up is not serving: busy time counts from here
        self._idle = list(self.replicas)
        self._driver = loop.create_task(self._drive(), name=f"batcher-{self.name}")
        self.state = "ready"
        self.ready_at = self.clock()

    def _load_and_warm(self, replica: Replica) -> None:
        replica.runtime.load()
        top = self.spec.batching.max_batch_size
        sizes = sorted({1, max(1, top // 4), top})
        for size in sizes:
            inputs = replica.runtime.warmup_inputs(size)
            for n in range(self.spec.warmup_batches + 1):
                result = replica.execute([inputs])
                if n:  # the very first call of a shape pays one-off allocation costs
                    self.latency.observe_warmup(size, result.compute_end - result.compute_start)

    async def drain(self, timeout_s: float) -> bool:
        """Stop accepting; wait for queued and running work. True if all finished."""
        if self.state == "ready":
            self.state = "draining"
        deadline = self.clock() + timeout_s
        while self._inflight and self.clock() < deadline:
            await asyncio.sleep(0.01)
        return self._inflight == 0

    async def stop(self) -> None:
        self.state = "stopped"
        if self.watch is not None and self.watch.retire is not None:
            self.watch.retire()
        if self._driver:
            self._driver.cancel()
        for request in self.batcher.take_all():
            self._fail(request.payload, SurgeError("shutting_down", "server shut down", 503, 1.0))
        for replica in self.replicas:
            replica.close()

    @property
    def accepting(self) -> bool:
        return self.state == "ready"

    # -- requests ----------------------------------------------------------------

    def admit_or_refuse(self, ctx: RequestContext, rows: int, now: float) -> None:
        """Admission's verdict on a request of `rows` rows at `now`: return, or raise (and
        count) the refusal."""
        try:
            admit(
                now=now,
                deadline=ctx.deadline,
                rows=rows,
                state=self.queue_state(),
                latency=self.latency,
                policy=self.admission,
                accepting=self.accepting,
                endpoint=self.name,
            )
        except SurgeError as refusal:
            self._count_refusal(refusal.code, ctx)
            raise

    async def infer(self, ctx: RequestContext, tensors: Tensors, rows: int) -> Tensors:
        now = self.clock()
        ctx.stamp("routed", now)
        ctx.rows = rows
        self.admit_or_refuse(ctx, rows, now)
        future: asyncio.Future[Tensors] = asyncio.get_running_loop().create_future()
        key = self.replicas[0].runtime.batch_key(tensors)
        self.batcher.push(
            QueuedRequest(Pending(ctx, tensors, future), rows, now, ctx.deadline, key)
        )
        ctx.stamp("admitted", now)
        self._inflight += 1
        self.inflight_rows += rows
        self.metrics.inflight += 1
        self._wake()
        # One timer per request answers 504 at the deadline wherever the request is;
        # cheaper than asyncio.wait_for's extra future and callbacks on the hot path.
        timer = asyncio.get_running_loop().call_later(
            ctx.deadline - now, self._deadline_passed, future, ctx
        )
        try:
            return await future
        finally:
            timer.cancel()
            self._inflight -= 1
            self.inflight_rows -= rows
            self.metrics.inflight -= 1

    def _deadline_passed(self, future: asyncio.Future[Tensors], ctx: RequestContext) -> None:
        if future.done():
            return
        self._count_refusal("deadline_exceeded", ctx)
        future.set_exception(
            SurgeError(
                "deadline_exceeded",
                f"deadline of {(ctx.deadline - ctx.received) * 1000:.0f} ms passed before the "
                "answer was ready",
                504,
            )
        )

    def _count_refusal(self, code: str, ctx: RequestContext) -> None:
        unloaded_s = self.latency.unloaded_estimate_s(ctx.rows)
        budget_s = ctx.deadline - ctx.received
        overload = signals_overload(code, ctx.deadline_from, budget_s, unloaded_s)
        self.metrics.count_rejection(code, overload)

    def queue_state(self) -> QueueState:
        return QueueState(
            queued_requests=len(self.batcher),
            queued_rows=self.batcher.queued_rows,
            busy_replicas=len(self.replicas) - len(self._idle),
            replicas=len(self.replicas),
        )

    # -- the driver ----------------------------------------------------------------

    def _wake(self) -> None:
        if self._waker is not None and not self._waker.done():
            self._waker.set_result(None)

    async def _drive(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._waker = loop.create_future()
            wake_at = self._dispatch(self.clock())
            timer = None
            if wake_at is not None:
                timer = loop.call_later(max(0.0, wake_at - self.clock()), self._wake)
            await self._waker
            if timer is not None:
                timer.cancel()

    def _dispatch(self, now: float) -> float | None:
        """Launch every batch the batcher closes at `now` and fail what expired in the
        queue; returns when the batcher wants to be asked again."""
        while True:
            step = self.batcher.step(now, len(self._idle), self._next_batch_s(now))
            for request in step.expired:
                if not request.payload.future.done():
                    self._count_refusal("deadline_expired_in_queue", request.payload.ctx)
                    self._fail(request.payload, _expired_in_queue())
            if not step.batch:
                self.metrics.queue_depth = len(self.batcher)
                return step.wake_at
            self._launch(self._idle.pop(), [r.payload for r in step.batch], now)

    def _next_batch_s(self, now: float) -> float:
        """How long the next batch will run: with no replica busy it runs alone, at the
        cost admission assumed for an idle deployment; a request admitted on that cost
        must not be expired in the queue on the estimate a past burst left behind."""
        rows = min(self.batcher.queued_rows, self.spec.batching.max_batch_size)
        if len(self._idle) == len(self.replicas):
            return self.latency.idle_estimate_s(rows, now)
        return self.latency.estimate_s(rows)

    def _launch(self, replica: Replica, batch: list[Pending], now: float) -> None:
        live = [p for p in batch if not p.future.done()]  # drop requests whose caller left
        for pending in live:
            pending.ctx.stamp("batched", now)
            self.metrics.queue_wait.observe(now - pending.ctx.stamps["admitted"])
        if not live:
            self._idle.append(replica)
            return
        loop = asyncio.get_running_loop()
        headers = next((h for p in live if (h := p.ctx.outbound_headers)), None)
        # Past the latest deadline no request of the batch can be answered any more.
        deadline = max(p.ctx.deadline for p in live)
        # Handed to the replica's thread now, not when a task first runs: the replica
        # starts while the loop is still busy with other work.
        work = loop.run_in_executor(
            replica.executor, replica.execute, [p.tensors for p in live], headers, deadline
        )
        task = loop.create_task(self._finish(replica, live, work))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _finish(
        self, replica: Replica, batch: list[Pending], work: asyncio.Future[BatchResult]
    ) -> None:
        try:
            try:
                result = await work
            except Exception as exc:
                await self._isolate_failure(replica, batch, exc)
                return
            self._record(batch, result)
            rows = [p.ctx.rows for p in batch]
            for pending, outputs in zip(batch, split(result.outputs, rows), strict=True):
                if not pending.future.done():
                    pending.future.set_result(outputs)
        finally:
            # Released after the answers are handed out and sent, not before: started
            # earlier, the next batch computed 7.5 % slower per row (the loop's answer
            # work took a core from ONNX Runtime's two threads on 2 cores) and closed-loop
            # throughput fell 5 % though the replica's busy share rose (see
            # benchmarks/results/profile.md).
            self._release(replica)

    def _release(self, replica: Replica) -> None:
        # The driver takes it from here, after the callbacks already scheduled (the
        # answers just handed out): see `_finish`.
        if replica in self._retiring:  # scaled down while it ran this batch
            self._retiring.discard(replica)
            replica.close()
            return
        self._idle.append(replica)
        self._wake()

    def _record(self, batch: list[Pending], result: BatchResult) -> None:
        rows = sum(p.ctx.rows for p in batch)
        seconds = result.compute_end - result.compute_start
        self.latency.observe(rows, seconds, finished_at=result.compute_end)
        m = self.metrics
        m.batch_size.observe(rows)
        m.compute.observe(seconds)
        for pending in batch:
            ctx = pending.ctx
            ctx.stamp("compute_start", result.compute_start)
            ctx.stamp("compute_end", result.compute_end)
            m.batch_formation.observe(result.compute_start - ctx.stamps["batched"])
        watch = self.watch
        if watch is None:
            return
        if watch.record_runs:
            record_runs(
                [p.ctx for p in batch],
                model=self.spec.version.ref,
                endpoint=self.name,
                version=self.version,
                busy_s=result.busy_s,
                energy=result.energy,
            )
        if watch.observe is not None and result.summary is not None:
            watch.observe(result.summary)

    async def _isolate_failure(
        self, replica: Replica, batch: list[Pending], exc: Exception
    ) -> None:
        """One bad request must not fail its batch-mates: rerun each alone to find it."""
        if len(batch) == 1:
            self._fail(batch[0], _as_surge_error(exc, self.spec.version.ref))
            return
        loop = asyncio.get_running_loop()
        for pending in batch:
            try:
                result = await loop.run_in_executor(
                    replica.executor,
                    replica.execute,
                    [pending.tensors],
                    pending.ctx.outbound_headers,
                    pending.ctx.deadline,
                )
            except Exception as single_exc:
                self._fail(pending, _as_surge_error(single_exc, self.spec.version.ref))
                continue
            self._record([pending], result)
            if not pending.future.done():
                pending.future.set_result(result.outputs)

    def _fail(self, pending: Pending, error: SurgeError) -> None:
        if not pending.future.done():
            pending.future.set_exception(error)

    @property
    def busy_s(self) -> float:
        """Seconds the replicas have spent running batches since this went live."""
        return sum(r.busy_s for r in self.replicas)

    def describe(self) -> dict[str, Any]:
        runtime = self.replicas[0].runtime.describe() if self.replicas else {}
        return {
            "endpoint": self.name,
            "model": self.spec.version.model,
            "version": self.spec.version.version,
            "runtime": self.spec.version.manifest.runtime,
            "state": self.state,
            "replicas": len(self.replicas),
            "replicas_pending": self.pending_replicas,
            "threads_per_replica": self.spec.settings.threads,
            "device": self.spec.settings.device,
            **runtime,
        }


def _as_surge_error(exc: Exception, ref: str) -> SurgeError:
    if isinstance(exc, SurgeError):
        return exc
    log.exception("model %s failed on a request", ref, exc_info=exc)
    return SurgeError("model_error", f"model {ref} failed: {type(exc).__name__}: {exc}", 500)
