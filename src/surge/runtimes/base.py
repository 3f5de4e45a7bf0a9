"""The runtime protocol: load an artifact, warm it up, run a batch, describe its tensors.

A runtime sees only tensors (`core.tensors`): numpy arrays keyed by tensor name, the
first dimension being the batch. Runtimes know nothing of HTTP, queues or requests; the
deployment calls `run` on a worker thread, never on the event loop. A runtime that
waits on another server also reads the batch's `deadline`, so it stops waiting when no
caller is left to answer.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from surge.core.tensors import Tensors, TensorSpec

if TYPE_CHECKING:
    from surge.repository import ModelVersion


@dataclass(frozen=True)
class RuntimeSettings:
    """How one replica of a runtime should run (from the endpoint's config)."""

    threads: int = 1  # intra-op threads for this replica
    device: str = "cpu"  # "cpu" or "cuda"
    quantization: str = "none"  # "none" or "int8"
    max_batch_size: int = 32
    extra: dict[str, Any] = field(default_factory=dict)


class Runtime(ABC):
    """One loaded model instance. Subclasses fill `inputs` and `outputs` in `load`."""

    def __init__(self, version: ModelVersion, settings: RuntimeSettings) -> None:
        self.version = version
        self.settings = settings
        self.inputs: list[TensorSpec] = list(version.manifest.inputs)
        self.outputs: list[TensorSpec] = list(version.manifest.outputs)
        # Headers a runtime that calls another server sends with the batch it runs now
        # (the trace context); set by the replica before each `run`, None when there are none.
        self.outbound_headers: dict[str, str] | None = None
        # When the batch it runs now must be answered by (monotonic seconds, the latest
        # deadline among its requests), set by the replica like `outbound_headers`; None
        # when there is none. Local compute cannot be cut short and ignores it.
        self.deadline: float | None = None

    @abstractmethod
    def load(self) -> None:
        """Load the artifact. Runs once per replica, off the event loop."""

    @abstractmethod
    def run(self, inputs: Tensors) -> Tensors:
        """Run one batch. Every output has the same first dimension as the inputs."""

    @abstractmethod
    def warmup_inputs(self, batch_size: int) -> Tensors:
        """A representative batch of `batch_size` rows, used before reporting ready."""

    def batch_key(self, inputs: Tensors) -> int:
        """A size measure used to group similar requests into one batch (e.g. token count).

        Requests with close keys pad less when batched together. 0 means "no grouping".
        """
        return 0

    def describe(self) -> dict[str, Any]:
        """Runtime-specific facts for `surge models` and the metadata endpoint."""
        return {}
