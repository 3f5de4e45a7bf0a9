"""Deploying a canary whose rollout policy cannot be built: a 4xx, and nothing left loaded."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from surge.config import Config
from surge.core.errors import SurgeError
from surge.serving.rollouts import Rollouts


class FakeDeployment:
    """Just what deploy touches: the version, its tensors (all compatible) and stop()."""

    def __init__(self, version: str) -> None:
        self.name = "e"
        self.version = version
        self.spec = SimpleNamespace(version=SimpleNamespace(ref=f"m@{version}"))
        self.replicas = [SimpleNamespace(runtime=SimpleNamespace(inputs=[], outputs=[]))]
        self.stopped = False

    async def stop(self) -> None:
        self.stopped = True


@pytest.mark.parametrize("mode", ["canary", "shadow"])
def test_a_policy_that_cannot_be_built_is_a_4xx_and_the_candidate_is_not_left_loaded(mode):
    # The schema refuses such steps at load; a config changed in memory afterwards (no
    # validation on assignment) is the one way left, and it must not become a 500.
    config = Config.model_validate({"endpoints": {"e": {}}})
    config.endpoints["e"].rollout.steps_percent = [5.0, 50.0]
    endpoint = SimpleNamespace(candidate=None, stable=FakeDeployment("1"), mode="single")
    rollouts = Rollouts(config, {"e": endpoint}, factory=None, store=None)  # type: ignore[arg-type]
    loaded: list[FakeDeployment] = []

    async def load(name: str, ref: dict[str, str], *, shadow: bool, actor: str) -> FakeDeployment:
        loaded.append(FakeDeployment(ref["version"]))
        return loaded[-1]

    rollouts.versions.load = load  # type: ignore[method-assign]
    with pytest.raises(SurgeError) as info:
        asyncio.run(rollouts.deploy("e", "m", "2", mode=mode, actor="tester"))
    assert 400 <= info.value.status < 500
    assert "endpoints.e.rollout" in info.value.message
    assert "last step must be 100" in info.value.message
    assert all(candidate.stopped for candidate in loaded)
    assert endpoint.candidate is None and rollouts.controller("e") is None
