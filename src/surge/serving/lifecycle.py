"""A version's life beside the live ones: registered, loaded and warmed, then, once it
has lost its traffic, drained of what it holds and unloaded in the background."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from surge.core.errors import SurgeError
from surge.serving.deployment import Deployment
from surge.serving.factory import DeploymentFactory, version_checksum
from surge.store.registry import RegistryStore

log = logging.getLogger("surge.rollouts")


class VersionLifecycle:
    def __init__(
        self,
        factory: DeploymentFactory,
        store: RegistryStore,
        drain_grace_s: float,
        wall_clock: Callable[[], float],
    ) -> None:
        self.factory = factory
        self.store = store
        self.drain_grace_s = drain_grace_s
        self.wall_clock = wall_clock
        self._retiring: set[asyncio.Task[None]] = set()

    async def register(self, deployment: Deployment, actor: str) -> None:
        """Pin the version's checksum in the registry; a rebuilt version with other files
        under the same number refuses to load (409)."""
        version = deployment.spec.version
        await asyncio.to_thread(
            self.store.register_version,
            version.model,
            version.version,
            version_checksum(version),
            actor,
            self.wall_clock(),
        )

    async def load(
        self, endpoint: str, ref: dict[str, str], *, shadow: bool, actor: str
    ) -> Deployment:
        """Register, load and warm `ref` for `endpoint`; it takes no traffic yet."""
        version = await asyncio.to_thread(self.factory.version, ref["model"], ref["version"])
        deployment = self.factory.build(endpoint, version, shadow=shadow)
        await self.register(deployment, actor)
        try:
            await deployment.start()
        except SurgeError:
            await deployment.stop()
            raise
        except Exception as exc:
            await deployment.stop()
            # A loader's message may name the file it read (ONNX Runtime does): say it
            # relative to the repository, as every other refusal does.
            why = str(exc).replace(str(version.root), "<repository>")
            raise SurgeError(
                "load_failed", f"{version.ref} failed to load: {type(exc).__name__}: {why}", 422
            ) from exc
        deployment.metrics.ready = True
        return deployment

    def retire(self, deployment: Deployment) -> None:
        """Let the deployment that lost traffic finish what it holds, then unload it."""

        async def drain_and_stop() -> None:
            await deployment.drain(self.drain_grace_s)
            await deployment.stop()
            log.info("%s: unloaded %s", deployment.name, deployment.spec.version.ref)

        task = asyncio.get_running_loop().create_task(drain_and_stop())
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def wait_retired(self) -> None:
        for task in list(self._retiring):
            with contextlib.suppress(asyncio.CancelledError):
                await task
