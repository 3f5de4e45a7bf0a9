"""A deployment changes its replica count while it serves: new replicas take batches only
once warm, a replica scaled away while busy finishes its batch first, and every request
in flight is answered. A tiny Python model on real replica threads."""

from __future__ import annotations

import asyncio
import time

import numpy as np
from test_deployment_idle import doubler

from surge.core.clock import monotonic
from surge.core.context import RequestContext


def request(deployment, i: int) -> asyncio.Future:
    now = monotonic()
    ctx = RequestContext(f"r{i}", "double", now + 5.0, now)
    x = np.full((1, 2), float(i), dtype=np.float32)
    return asyncio.ensure_future(deployment.infer(ctx, {"x": x}, 1))


def test_scaling_up_and_down_while_serving_answers_every_request(tmp_path):
    async def scenario() -> None:
        deployment = doubler(tmp_path)
        await deployment.start()
        try:
            assert len(deployment.replicas) == 1
            grow = asyncio.ensure_future(deployment.scale_to(3))
            await asyncio.sleep(0)
            # Warming replicas are pending, not serving: no batch can reach a cold one.
            assert deployment.pending_replicas == 2 and len(deployment.replicas) == 1
            answers = [request(deployment, i) for i in range(12)]  # the queue holds 16
            await grow
            results = list(await asyncio.gather(*answers))
            assert len(deployment.replicas) == 3 and deployment.pending_replicas == 0
            assert deployment.describe()["replicas"] == 3
            answers = [request(deployment, i) for i in range(12, 24)]
            await asyncio.sleep(0)
            await deployment.scale_to(1)  # some replicas may be mid-batch: they finish
            results += await asyncio.gather(*answers)
            assert [float(r["y"][0, 0]) for r in results] == [2.0 * i for i in range(24)]
            assert len(deployment.replicas) == 1
            # Retired replicas closed once their batch was done; the one left serves.
            started = time.monotonic()
            while deployment._retiring and time.monotonic() - started < 5:
                await asyncio.sleep(0.01)
            assert not deployment._retiring
            assert float((await request(deployment, 7))["y"][0, 0]) == 14.0
            await deployment.scale_to(0)  # never below one local replica
            assert len(deployment.replicas) == 1
        finally:
            await deployment.stop()

    asyncio.run(scenario())
