"""The autoscaling part of the config schema: how an endpoint's replica count follows
its load (the policy is routing/autoscale.py; README: "Scale out").

Kept beside `config.py` so each file stays readable; the same rules hold: every knob
a documented field with its unit in its name, unknown keys refused. The defaults are
the policy's own (one copy of the numbers).
"""

from __future__ import annotations

from dataclasses import fields

from pydantic import BaseModel, ConfigDict, Field, model_validator

from surge.routing.autoscale import AutoscalePolicy

_DEFAULTS = AutoscalePolicy()


class AutoscaleConfig(BaseModel):
    """Scale up fast to the count the load needs, down slowly: after a cooldown, once
    the load has fit in fewer replicas for a window, at most half at a time."""

    model_config = ConfigDict(extra="forbid")

    min_replicas: int = Field(
        _DEFAULTS.min_replicas,
        ge=1,
        description="replicas kept while traffic flows, however light (see "
        "scale_to_zero_after_s for 0)",
    )
    max_replicas: int = Field(
        _DEFAULTS.max_replicas,
        ge=1,
        description="most replicas the endpoint may have, pending ones included; for local "
        "replicas, keep it within the host's cores",
    )
    target_in_flight_rows_per_replica: float = Field(
        _DEFAULTS.target_in_flight_rows_per_replica,
        gt=0,
        description="rows queued or running per replica the count aims at (rows); the load "
        "needs ceil(rows in flight / this) replicas. Lower: more headroom, more replicas",
    )
    target_queue_wait_ms: float = Field(
        _DEFAULTS.target_queue_wait_ms,
        gt=0,
        description="longest the oldest queued row should wait (ms); past it, up to twice "
        "the ready replicas are asked for at each evaluation",
    )
    evaluate_interval_s: float = Field(
        _DEFAULTS.evaluate_interval_s,
        gt=0,
        description="how often the signals are sampled and a decision made (s); a step in "
        "load is answered at the next evaluation",
    )
    scale_down_cooldown_s: float = Field(
        _DEFAULTS.scale_down_cooldown_s,
        ge=0,
        description="after any change, time before the load is judged for a scale down (s)",
    )
    scale_down_window_s: float = Field(
        _DEFAULTS.scale_down_window_s,
        ge=0,
        description="how long (s), after the cooldown, the load must fit in fewer replicas "
        "before they are removed; the count kept is the largest the window needed",
    )
    scale_down_headroom: float = Field(
        _DEFAULTS.scale_down_headroom,
        gt=0,
        le=1,
        description="share of both targets the fewer replicas would run at (0-1]; the gap "
        "to 1 is the hysteresis that keeps a load at the target from flapping",
    )
    scale_to_zero_after_s: float | None = Field(
        _DEFAULTS.scale_to_zero_after_s,
        gt=0,
        description="with nothing in flight this long (s), go to 0 replicas; the next "
        "request waits for a cold start (shown in its timing). null: never",
    )

    @model_validator(mode="after")
    def _the_policy_accepts_it(self) -> AutoscaleConfig:
        self.policy()  # the policy's own checks (max >= min, ...), run when the config loads
        return self

    def policy(self) -> AutoscalePolicy:
        """The autoscaler's policy with these knobs (a field here for each)."""
        return AutoscalePolicy(**{f.name: getattr(self, f.name) for f in fields(AutoscalePolicy)})
