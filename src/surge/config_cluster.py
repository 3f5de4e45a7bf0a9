"""The cluster part of the config schema: how the processes that share a registry act
as one (README: "Many processes, many hosts")."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ClusterConfig(_Strict):
    """How the processes that share a registry act as one (README: "Many processes,
    many hosts")."""

    poll_interval_s: float = Field(
        0.5,
        gt=0,
        description="longest a process goes without comparing its routes' revisions with "
        "the registry's (a Redis notification makes it look at once)",
    )
    heartbeat_interval_s: float = Field(
        1.0, gt=0, description="how often a process publishes what it serves and measured"
    )
    process_timeout_s: float = Field(
        5.0, gt=0, description="a process silent this long is counted out (it died)"
    )
    lease_ttl_s: float = Field(
        3.0,
        gt=0,
        description="the rollout leader's lease: renewed every third of it; another "
        "process takes over this long after the leader dies",
    )
    pending_feedback_ttl_s: float = Field(
        3600.0, gt=0, description="how long an answer of a bandit route accepts feedback"
    )

    @model_validator(mode="after")
    def _heartbeats_outpace_the_timeout(self) -> ClusterConfig:
        if self.process_timeout_s < 2 * self.heartbeat_interval_s:
            raise ValueError("process_timeout_s must be at least 2 x heartbeat_interval_s")
        return self
