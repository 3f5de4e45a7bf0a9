"""What `surge status ENDPOINT` shows: the versions behind an endpoint, their traffic
and live figures, and where the rollout stands and what it waits for."""

from __future__ import annotations

from typing import Any

from surge.routing.rollout import RolloutController
from surge.serving.deployment import Deployment
from surge.serving.endpoint import Endpoint


def version_ref(deployment: Deployment) -> dict[str, str]:
    return {"model": deployment.spec.version.model, "version": deployment.version}


def describe_route(
    endpoint: Endpoint,
    controller: RolloutController | None,
    *,
    waiting_for: str,
    ab_key: str,
    now: float,
) -> dict[str, Any]:
    weights = endpoint.weights()
    versions = []
    for deployment in endpoint.deployments:
        versions.append({
            "role": "stable" if deployment is endpoint.stable else "candidate",
            **version_ref(deployment),
            "state": deployment.state,
            "traffic_percent": weights.get(deployment.version, 0.0),
            **endpoint.stats[deployment.version].describe(),
        })  # fmt: skip
    rollout = None
    if controller is not None:
        rollout = {
            "stage": controller.stage,
            "step": controller.step,
            "steps_percent": list(controller.policy.steps_percent),
            "percent": controller.percent,
            "step_running_s": round(now - controller.step_started_at, 1),
            "waiting_for": waiting_for,
        }
    return {
        "endpoint": endpoint.name,
        "mode": endpoint.mode,
        "ab_key": ab_key if endpoint.mode == "ab" else None,
        "versions": versions,
        "rollout": rollout,
    }
