"""The cache part of the config schema: an endpoint's response cache (README: "Caching")."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class CacheConfig(BaseModel):
    """An endpoint's answers kept for reuse, per row: a request whose rows were all seen
    is answered without the model, one with some seen computes only the others.

    The key is the serving version's identity (model, version, a digest of its manifest
    and quantization) + the row's input bytes, dtype and shape + the request parameters
    that can change an answer (+ the tenant with `scope: tenant`), so a new version never
    serves an old version's answers. Models are taken to answer each row on its own, as
    batching already requires.
    """

    model_config = ConfigDict(extra="forbid")

    ttl_s: float = Field(300.0, gt=0, description="how long an answer is reused")
    max_bytes: int = Field(
        64 << 20, gt=0, description="this process's in-memory LRU, bounded by bytes"
    )
    scope: Literal["shared", "tenant"] = Field(
        "shared",
        description="shared: one answer serves every tenant (the input decides it); "
        "tenant: each tenant has its own entries and never sees another's",
    )
    redis: bool = Field(
        True,
        description="also keep answers in Redis (`redis_url`), shared by every process, and "
        "coalesce identical requests across processes; without redis_url: memory only",
    )
    redis_timeout_ms: float = Field(
        50.0,
        gt=0,
        description="longest a Redis read may take before it counts as a miss (it includes "
        "waiting behind a busy event loop: too tight and a loaded server sees Redis as down)",
    )
    coalesce: bool = Field(
        True,
        description="identical requests that arrive while the first is computing wait for "
        "its answer (each within its own deadline) instead of computing again",
    )
    stale_in_emergency_s: float = Field(
        0.0,
        ge=0,
        description="in the emergency burst mode, serve answers this long past their TTL "
        "(marked stale); 0: never",
    )
