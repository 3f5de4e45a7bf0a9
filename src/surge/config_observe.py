"""The observability part of the config schema: receipts, cost, energy, traces, logs, drift.

Kept beside `config.py` (which imports it) so each file stays readable; the same rules
hold: every knob a documented field with its unit in its name, unknown keys refused.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CostConfig(_Strict):
    """What an endpoint's answers cost, attributed per request (see observe/cost.py)."""

    per_compute_second: float = Field(
        0.0,
        ge=0,
        description="price of one second of a replica's compute (its whole replica: all "
        "its cores); a request pays its share of each batch it was in, and warm "
        "replica time nobody used is billed as the endpoint's idle line",
    )
    per_item: float = Field(0.0, ge=0, description="price per input row (text, image, ...)")
    currency: str = Field("USD", description="the unit prices are in; shown, never converted")
    budget_per_hour: float | None = Field(
        None, gt=0, description="spend per hour an alert compares the burn rate with"
    )


class ReceiptsConfig(_Strict):
    enabled: bool = Field(True, description="write a receipt for every request")
    buffer: int = Field(
        10_000,
        ge=1,
        description="receipts waiting to be written; when full, new ones are counted as "
        "dropped (surge_receipts_dropped_total), never blocking a request",
    )
    flush_interval_s: float = Field(0.25, gt=0, description="how often the buffer is written")
    retention_s: float = Field(
        7 * 86400.0, gt=0, description="receipts older than this are deleted"
    )
    url: str | None = Field(
        None,
        description="where receipts are stored: sqlite:///<path> or postgresql://...; "
        "default: the registry's database",
    )
    inline_header: str = Field(
        "x-surge-receipt",
        description="a request with this header set to 1 gets its receipt inline, in the "
        "response header of the same name (JSON)",
    )


class EnergyConfig(_Strict):
    watts_per_core: float = Field(
        10.0,
        gt=0,
        description="power of one busy core, used when no RAPL counter is readable: "
        "joules = measured compute core-seconds x this",
    )
    powercap_path: str = Field(
        "/sys/class/powercap",
        description="where RAPL energy counters are read (intel-rapl:*/energy_uj) when present",
    )
    source: Literal["auto", "rapl", "estimate"] = Field(
        "auto", description="auto: RAPL when readable, else the per-core estimate"
    )


class TracingConfig(_Strict):
    otlp_endpoint: str | None = Field(
        None,
        description="OTLP/HTTP traces URL (e.g. http://127.0.0.1:4318/v1/traces); "
        "unset: tracing is off and costs nothing",
    )
    service_name: str = Field("surge", description="service.name of the exported spans")
    sample_ratio: float = Field(
        1.0, ge=0, le=1, description="share of requests traced (a caller's sampled flag wins)"
    )


class LogsConfig(_Strict):
    format: Literal["json", "text"] = Field("json", description="one JSON object per line")
    access_log_sample: float = Field(
        0.0,
        ge=0,
        le=1,
        description="share of requests written to the access log (0: none, 1: all); "
        "errors (5xx) are always logged",
    )


class DriftConfig(_Strict):
    enabled: bool = Field(True, description="watch each model's inputs and confidence")
    reference_rows: int = Field(
        1000, ge=50, description="the first rows a model serves form its reference window"
    )
    window_rows: int = Field(1000, ge=50, description="rows in the live window compared with it")
    psi_threshold: float = Field(
        0.25, gt=0, description="PSI at or above which a signal counts as drifting"
    )
    ks_threshold: float = Field(
        0.2, gt=0, le=1, description="KS statistic at or above which a signal counts as drifting"
    )


class ObservabilityConfig(_Strict):
    receipts: ReceiptsConfig = Field(default_factory=ReceiptsConfig)
    energy: EnergyConfig = Field(default_factory=EnergyConfig)
    tracing: TracingConfig = Field(default_factory=TracingConfig)
    logs: LogsConfig = Field(default_factory=LogsConfig)
    drift: DriftConfig = Field(default_factory=DriftConfig)
    stage_timing: bool = Field(
        True, description="per-stage histograms and the Server-Timing header"
    )
