"""The routes part of the config schema: public names whose requests a policy (cascade,
deadline ladder, fallback, bandit, rules) sends to endpoints or other routes."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CascadeTierConfig(Strict):
    target: str = Field(description="an endpoint or another route")
    threshold: float = Field(
        ge=0, le=1, description="confidence at or above which a row is accepted"
    )
    confidence: Literal["max_probability", "margin"] = "max_probability"


class CascadeConfig(Strict):
    tiers: list[CascadeTierConfig] = Field(min_length=1, description="cheapest first")
    review: bool = Field(
        True, description="rows the last tier is unsure of are flagged and queued for human review"
    )
    # Anyone who can call the route can add to the queue, so it is bounded. Labelled items
    # are the retraining data: they outlive the retention, bounded by their own cap.
    review_retention_s: float = Field(
        7 * 86400.0, gt=0, description="unlabelled review items older than this are dropped"
    )
    review_max_pending: int = Field(
        10_000, ge=0, description="unlabelled review items kept (the newest); older ones dropped"
    )
    review_max_labelled: int = Field(
        100_000, ge=0, description="labelled review items kept (the most recently labelled)"
    )


class LadderConfig(Strict):
    rungs: list[str] = Field(min_length=1, description="targets, best (slowest) first")
    safety_margin: float = Field(
        0.9, gt=0, le=1, description="a rung fits when its estimate <= this x the time left"
    )


class FallbackConfig(Strict):
    targets: list[str] = Field(min_length=2, description="tried in order on error or timeout")
    failure_threshold: int = Field(5, ge=1, description="failures in window_s that open a breaker")
    window_s: float = Field(10.0, gt=0)
    open_s: float = Field(5.0, gt=0, description="how long an open breaker refuses before a probe")


class BanditConfig(Strict):
    arms: list[str] = Field(min_length=2, description="targets the bandit learns between")
    strategy: Literal["thompson", "epsilon_greedy"] = "thompson"
    epsilon: float = Field(0.1, ge=0, le=1, description="epsilon_greedy: share explored")
    segment_header: str | None = Field(
        None, description="learn separately per value of this header (e.g. x-tenant)"
    )
    sync_s: float = Field(5.0, gt=0, description="how often counts are shared via the registry")
    max_segments: int = Field(
        1000,
        ge=0,
        description="segments learned separately at most (the least recently used give way); "
        "any other segment is served by the default segment, which learns from all",
    )


class RulesConfig(Strict):
    rules: list[dict[str, Any]] = Field(
        description="in order: {name, when: [{field, op, value}], target}; fields: "
        "header:<name>, tenant, priority, input_rows, input_bytes, param:<name>"
    )
    default: str = Field(description="the target when no rule matches")

    @field_validator("rules")
    @classmethod
    def _rules_parse(cls, rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
        from surge.routing.rules import parse_rules  # a pure module: no cycle, no I/O

        parse_rules(rules)
        return rules

    def targets(self) -> list[str]:
        return [*(str(rule.get("target")) for rule in self.rules), self.default]


class RouteConfig(Strict):
    """A public name whose requests a policy sends to endpoints (or other routes)."""

    cascade: CascadeConfig | None = None
    ladder: LadderConfig | None = None
    fallback: FallbackConfig | None = None
    bandit: BanditConfig | None = None
    rules: RulesConfig | None = None

    @model_validator(mode="after")
    def _exactly_one_policy(self) -> RouteConfig:
        kinds = ("cascade", "ladder", "fallback", "bandit", "rules")
        chosen = [k for k in kinds if getattr(self, k) is not None]
        if len(chosen) != 1:
            raise ValueError(f"a route names exactly one policy ({', '.join(kinds)}), got {chosen}")
        return self

    def targets(self) -> list[str]:
        if self.cascade is not None:
            return [t.target for t in self.cascade.tiers]
        if self.ladder is not None:
            return list(self.ladder.rungs)
        if self.bandit is not None:
            return list(self.bandit.arms)
        if self.rules is not None:
            return self.rules.targets()
        assert self.fallback is not None
        return list(self.fallback.targets)


class ModesConfig(Strict):
    """Burst modes (normal / surge / emergency, see routing/modes.py), flipped by load."""

    enabled: bool = Field(True, description="change modes automatically from live signals")
    target_p99_ms: float = Field(
        500.0, gt=0, description="the p99 the p99 signal is measured against"
    )
    evaluate_interval_s: float = Field(1.0, gt=0, description="how often the signals are sampled")
    hold_s: float = Field(10.0, ge=0, description="calm time before stepping down one mode")
    min_dwell_s: float = Field(
        5.0, ge=0, description="no automatic change sooner than this after one"
    )
    min_client_deadline_ms: float = Field(
        50.0,
        ge=0,
        description="a refused request whose X-Request-Timeout-Ms is below this is the "
        "client's problem, not evidence of overload: it never raises the mode (else any "
        "client could put the server in emergency mode with tiny deadlines)",
    )
    min_requests_per_interval: int = Field(
        20,
        ge=1,
        description="the share of requests refused counts only over at least this many "
        "requests in one interval (below, it reads as 0): under 20, a single refusal is "
        "already the 5 % that enters emergency, so a handful of requests could flip a mode",
    )
