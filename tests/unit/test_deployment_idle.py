"""A deployment left idle after a burst serves a request whose deadline an uncontended batch
meets: admission lets it in, and the batcher does not then expire it in the queue on the
estimate the burst left behind. A tiny Python model on a real replica thread."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np

from surge.core.clock import monotonic
from surge.core.context import RequestContext
from surge.observe.metrics import EndpointMetrics
from surge.repository import ModelRepository, write_manifest
from surge.runtimes.base import RuntimeSettings
from surge.runtimes.registry import runtime_class
from surge.serving.batcher import BatchingPolicy
from surge.serving.deployment import Deployment, DeploymentSpec

DOUBLER = """
class Model:
    def predict(self, batch):
        return {"y": batch["x"] * 2}
"""


def doubler(root: Path) -> Deployment:
    version_dir = root / "double" / "1"
    version_dir.mkdir(parents=True)
    (version_dir / "model.py").write_text(DOUBLER)
    write_manifest(version_dir, {
        "runtime": "python", "artifact": "model.py", "parameters": {"class": "Model"},
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 2]}],
    })  # fmt: skip
    version = ModelRepository(root).version("double", "1")
    spec = DeploymentSpec(
        endpoint="double",
        version=version,
        runtime_cls=runtime_class("python"),
        settings=RuntimeSettings(max_batch_size=8),
        replicas=1,
        batching=BatchingPolicy(max_batch_size=8, max_queue_delay_s=0.001),
        max_queue=16,
        timeout_s=1.0,
        warmup_batches=2,
    )
    return Deployment(spec, EndpointMetrics("double"))


def test_an_idle_deployment_serves_a_tight_deadline_after_a_burst_measured_under_contention(
    tmp_path,
):
    async def scenario() -> np.ndarray:
        deployment = doubler(tmp_path)
        await deployment.start()  # warm-up: the uncontended cost, well under a millisecond
        try:
            # A burst 30 s ago whose batches took 400 ms each under contention.
            finished = monotonic() - 30.0
            for i in range(60):
                deployment.latency.observe((8, 4, 2)[i % 3], 0.4, finished_at=finished + 0.4 * i)
            assert deployment.latency.estimate_s(4) > 0.3
            now = monotonic()
            ctx = RequestContext("r1", "double", deadline=now + 0.3, received=now)
            x = np.ones((4, 2), dtype=np.float32)
            outputs = await deployment.infer(ctx, {"x": x}, rows=4)
            return outputs["y"]
        finally:
            await deployment.stop()

    assert asyncio.run(scenario()).tolist() == [[2.0, 2.0]] * 4
