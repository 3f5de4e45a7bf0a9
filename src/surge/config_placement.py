"""Where an endpoint's replicas run: `placement: local` (threads of this process, the
default) or `placement: {ray: {...}}` (actors on a Ray cluster, beside the local ones)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel, field_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RayPlacement(_Strict):
    """Replicas as Ray actors. They add to the endpoint's local `replicas`: the gateway's
    batcher sends each batch to whichever replica, local or Ray, is free."""

    address: str | None = Field(
        None,
        description='"auto" (a cluster already running on this host), "ray://host:port" '
        "(Ray Client), a GCS address host:port, or null: start a Ray instance in this "
        "process (one host, for trying it out)",
    )
    namespace: str = Field(
        "surge", description="Ray namespace of the actors (they are named per replica)"
    )
    num_cpus: float = Field(1.0, ge=0, description="Ray CPUs each replica actor reserves")
    num_gpus: float = Field(0.0, ge=0, description="Ray GPUs each replica actor reserves")
    replicas: int = Field(1, ge=1, description="replica actors of this endpoint on Ray")
    threads_per_replica: int | None = Field(
        None, ge=1, description="intra-op threads per actor (default: its num_cpus, at least 1)"
    )
    serve_on_gateway: bool = Field(
        True,
        description="false: the endpoint's local replicas load only to describe the model "
        "(tensors, batch keys) and take batches only while no Ray replica is ready",
    )
    batches_in_flight: int = Field(
        2,
        ge=1,
        description="batches sent to one actor before its last answers: the next waits in "
        "the actor's queue, so the round trip (~2 ms on a 2-core host) overlaps compute",
    )
    max_restarts: int = Field(
        3, ge=-1, description="times Ray restarts a dead actor (-1: without limit)"
    )
    health_interval_s: float = Field(
        0.5, gt=0, description="how often a replica counted out is asked whether it is back"
    )
    start_timeout_s: float = Field(
        120.0, gt=0, description="longest an actor may take to load and warm at start"
    )

    @field_validator("address")
    @classmethod
    def _known_address(cls, value: str | None) -> str | None:
        if value is None or value == "auto" or value.startswith("ray://") or ":" in value:
            return value
        raise ValueError('address must be "auto", "ray://host:port", "host:port" or null')


class RayPlacementConfig(_Strict):
    ray: RayPlacement


class PlacementConfig(RootModel[Literal["local"] | RayPlacementConfig]):
    """`local` or `{ray: {...}}`."""

    root: Literal["local"] | RayPlacementConfig = "local"

    @property
    def ray(self) -> RayPlacement | None:
        return self.root.ray if isinstance(self.root, RayPlacementConfig) else None
