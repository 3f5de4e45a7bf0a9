"""The config schema: one YAML file, validated at start-up.

Every knob is a documented field with its unit in its name. Unknown keys and
wrong types fail with the key path and what was expected. This is the only
module that reads the environment.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import fields
from pathlib import Path
from typing import Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from surge.config_autoscale import AutoscaleConfig
from surge.config_cache import CacheConfig
from surge.config_cluster import ClusterConfig
from surge.config_llm import LLMConfig
from surge.config_observe import CostConfig, ObservabilityConfig
from surge.config_placement import PlacementConfig
from surge.config_routes import ModesConfig, RouteConfig
from surge.config_security import AuthConfig, LimitsConfig, TenantConfig, check_tenant_names
from surge.repository import name_problem
from surge.routing.rollout import RolloutPolicy, check_steps_percent

DEMO_CONFIG = Path(__file__).parent / "demo" / "demo.yaml"


AB_KEY_PATTERN = r"^(header|parameter):[A-Za-z0-9_.-]+$"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServerConfig(Strict):
    host: str = Field("127.0.0.1", description="interface to bind")
    port: int = Field(8000, ge=0, le=65535, description="TCP port (0: any free port)")
    workers: int = Field(1, ge=1, description="server processes; cores are divided among them")
    max_body_bytes: int = Field(8 << 20, gt=0, description="request bodies past this get 413")
    shutdown_grace_s: float = Field(30.0, ge=0, description="SIGTERM: time to finish queued work")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    access_log: bool = Field(False, description="per-request access log (off on the hot path)")
    compute_nice: int = Field(
        10,
        ge=0,
        le=19,
        description="nice value of model compute threads, so the event loop (which reads "
        "requests and answers them) is never starved by compute; 0 = same priority",
    )


class BatchingConfig(Strict):
    max_batch_size: int = Field(
        32, ge=1, description="rows per batch; also the most rows per request"
    )
    max_queue_delay_ms: float = Field(
        2.0, ge=0, description="longest the oldest queued request waits for a batch to fill"
    )
    preferred_batch_sizes: list[int] = Field(
        default_factory=list, description="sizes dispatched at once when reachable (e.g. 8, 16)"
    )

    @model_validator(mode="after")
    def _preferred_within_max(self) -> BatchingConfig:
        bad = [s for s in self.preferred_batch_sizes if not 1 <= s <= self.max_batch_size]
        if bad:
            raise ValueError(f"preferred_batch_sizes {bad} must lie in 1..max_batch_size")
        return self


# The rollout policy's defaults are the config's: one copy of the numbers (routing/rollout.py).
_ROLLOUT = RolloutPolicy()


class RolloutConfig(Strict):
    """How the rollout controller steps a canary and when it rolls back (see routing/rollout.py)."""

    steps_percent: list[float] = Field(
        default_factory=lambda: list(_ROLLOUT.steps_percent),
        description="candidate's share of traffic at each step, strictly increasing in "
        "(0, 100]; the last must be 100",
    )
    min_requests: int = Field(
        _ROLLOUT.min_requests, ge=1, description="candidate requests a step needs to pass"
    )
    min_step_s: float = Field(_ROLLOUT.min_step_s, ge=0, description="shortest time a step lasts")
    max_error_rate_margin: float = Field(
        _ROLLOUT.max_error_rate_margin,
        ge=0,
        le=1,
        description="candidate error rate may exceed stable's by this much",
    )
    max_p99_ratio: float = Field(
        _ROLLOUT.max_p99_ratio, gt=0, description="candidate p99 <= stable p99 x this"
    )
    min_latency_samples: int = Field(
        _ROLLOUT.min_latency_samples,
        ge=1,
        description="answers each version needs before p99s are compared (a p99 of fewer "
        "than 100 samples is just the slowest one)",
    )
    min_shadow_agreement: float = Field(
        _ROLLOUT.min_shadow_agreement,
        ge=0,
        le=1,
        description="shadowed candidate's agreement with the live answer",
    )
    breach_min_requests: int = Field(
        _ROLLOUT.breach_min_requests,
        ge=1,
        description="requests (or comparisons) before a breach can trigger a rollback",
    )
    evaluate_interval_s: float = Field(1.0, gt=0, description="how often the controller runs")
    retry_on_stable: bool = Field(
        True, description="retry a request that failed on the canary once on stable"
    )

    @field_validator("steps_percent")
    @classmethod
    def _steps_drive_a_canary(cls, steps: list[float]) -> list[float]:
        check_steps_percent(steps)  # the controller's own rule, checked at load
        return steps

    def policy(self) -> RolloutPolicy:
        """The rollout controller's policy with these limits (a field here for each)."""
        limits = {f.name: getattr(self, f.name) for f in fields(RolloutPolicy)}
        return RolloutPolicy(**{**limits, "steps_percent": tuple(self.steps_percent)})


class EndpointConfig(Strict):
    model: str | None = Field(None, description="model in the repository (default: endpoint name)")
    version: str = Field("1", description="version directory that serves")
    device: Literal["cpu", "cuda"] = "cpu"
    replicas: int = Field(1, ge=1, description="loaded runtime instances, each on its own thread")
    threads_per_replica: int | None = Field(
        None, ge=1, description="intra-op threads per replica (default: the cores left / replicas)"
    )
    quantization: Literal["none", "int8"] = "none"
    batching: BatchingConfig = Field(default_factory=BatchingConfig)
    max_queue: int = Field(256, ge=1, description="queued requests before 429")
    timeout_ms: float = Field(1000.0, gt=0, description="deadline when the client sends none")
    warmup_batches: int = Field(3, ge=0, description="warm-up runs per batch shape per replica")
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    ab_key: str = Field(
        "header:x-user-id",
        pattern=AB_KEY_PATTERN,
        description="where a sticky A/B split finds the user key: header:<name> or "
        "parameter:<name> (v2 request parameters; OpenAI's `user` field)",
    )
    cost: CostConfig = Field(default_factory=CostConfig)
    cache: CacheConfig | None = Field(None, description="reuse answers (config_cache.py)")
    autoscale: AutoscaleConfig | None = Field(
        None,
        description="follow the load with the live version's local replica count (README: "
        "'Scale out'); `replicas` is then the count it starts with. None: fixed replicas",
    )
    placement: PlacementConfig = Field(
        default_factory=PlacementConfig,
        description="where replicas run besides the local ones: local (default) or "
        "{ray: {address, num_cpus, num_gpus, replicas, max_restarts}} (config_placement.py)",
    )

    @field_validator("model", "version")
    @classmethod
    def _repository_names(cls, value: str | None, info: ValidationInfo) -> str | None:
        # Each becomes a directory under the model repository: one plain name, no path.
        if value is not None and (problem := name_problem(str(info.field_name), value)):
            raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _autoscale_local_only(self) -> EndpointConfig:
        if self.autoscale is not None and self.placement.ray is not None:
            raise ValueError(
                "autoscale changes the count of local replicas; an endpoint with Ray "
                "replicas (placement.ray) keeps placement.ray.replicas actors: use one or "
                "the other"
            )
        return self


class AdminKey(Strict):
    name: str = Field(description="who the key belongs to; recorded in the audit log")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256 hex of the key")


class AdminConfig(Strict):
    keys: list[AdminKey] = Field(
        default_factory=list,
        description="admin keys, hashed at rest; SURGE_ADMIN_KEY adds one named "
        "SURGE_ADMIN_KEY_NAME (default 'env')",
    )


class Config(Strict):
    server: ServerConfig = Field(default_factory=ServerConfig)
    model_repository: Path = Field(Path(".surge/models"), description="root of <model>/<version>/")
    endpoints: dict[str, EndpointConfig] = Field(default_factory=dict)
    registry_url: str = Field(
        "sqlite:///.surge/registry.db",
        description="where versions, routes, rollout progress and the audit log persist: "
        "sqlite:///<path> (relative to the config file) or postgresql://...; "
        "SURGE_REGISTRY_URL in the environment replaces it",
    )
    registry_namespace: str = Field(
        "surge",
        pattern=r"^[a-z_][a-z0-9_]*$",
        description="prefix of the registry's tables and of Redis keys, so several "
        "deployments (or test runs) can share one database and one Redis",
    )
    redis_url: str | None = Field(
        None,
        description="redis://[:password@]host:port/db: the processes' shared fast state "
        "(route change notifications, pending feedback, rate limits, budgets); without it "
        "they poll the registry; SURGE_REDIS_URL in the environment replaces it",
    )
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    admin: AdminConfig = Field(default_factory=AdminConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    tenants: dict[str, TenantConfig] = Field(
        default_factory=dict,
        description="the tenants surge knows by name: their priority, limits and budget; "
        "metrics label only these (others count as 'other')",
    )
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    routes: dict[str, RouteConfig] = Field(
        default_factory=dict, description="public names served by a routing policy"
    )
    modes: ModesConfig = Field(default_factory=ModesConfig)
    observability: ObservabilityConfig = Field(default_factory=ObservabilityConfig)
    llm: LLMConfig = Field(
        default_factory=LLMConfig,
        description="language models behind /v1/chat/completions: providers, models, routes "
        "(config_llm.py; README: 'Language models')",
    )

    @model_validator(mode="after")
    def _routes_resolve(self) -> Config:
        check_tenant_names(self.tenants)
        budgeted = [n for n, t in self.tenants.items() if t.budget.per_hour or t.budget.per_day]
        if budgeted and not self.observability.receipts.enabled:
            raise ValueError(
                f"tenants {budgeted} have budgets, which count the receipts' cost: "
                "observability.receipts.enabled must be true"
            )
        clash = sorted(set(self.routes) & set(self.endpoints))
        if clash:
            raise ValueError(f"routes {clash} have the names of endpoints")
        chat_names = set(self.llm.models) | set(self.llm.routes)
        clash = sorted(chat_names & (set(self.routes) | set(self.endpoints)))
        if clash:
            raise ValueError(f"llm models or routes {clash} have the names of endpoints or routes")
        known = set(self.routes) | set(self.endpoints)
        for name, route in self.routes.items():
            missing = [t for t in route.targets() if t not in known]
            if missing:
                raise ValueError(
                    f"route {name!r} targets {missing}, which are neither endpoints nor routes"
                )
        for name in self.routes:  # a route may target routes, but never itself through them
            seen, frontier = {name}, list(self.routes[name].targets())
            while frontier:
                target = frontier.pop()
                if target == name:
                    raise ValueError(f"route {name!r} reaches itself")
                if target in self.routes and target not in seen:
                    seen.add(target)
                    frontier.extend(self.routes[target].targets())
        return self

    def model_of(self, endpoint: str) -> str:
        return self.endpoints[endpoint].model or endpoint


class ConfigError(Exception):
    """A config that cannot start a server; the message lists every problem."""


def _format(exc: ValidationError, source: str) -> str:
    lines = [f"{source}: {exc.error_count()} problem(s)"]
    for err in exc.errors():
        path = ".".join(str(p) for p in err["loc"]) or "(top level)"
        got = err.get("input")
        shown = "" if isinstance(got, dict | list) else f" (got {got!r})"
        if err["type"] == "extra_forbidden":
            lines.append(f"  {path}: unknown key")
        else:
            lines.append(f"  {path}: {err['msg']}{shown}")
    return "\n".join(lines)


def load_config(path: Path | None = None) -> Config:
    """Load and validate a config file; no path means the built-in demo."""
    source = Path(path) if path else DEMO_CONFIG
    try:
        raw = yaml.safe_load(source.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"{source}: no such file") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level")
    try:
        config = Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format(exc, str(source))) from None
    if not config.model_repository.is_absolute() and path is not None:
        # A relative repository path means relative to the config file, except for the
        # demo, whose models are built into the working directory.
        config.model_repository = (source.parent / config.model_repository).resolve()
        config.registry_url = _relative_sqlite(config.registry_url, source.parent)
        receipts = config.observability.receipts
        if receipts.url:
            receipts.url = _relative_sqlite(receipts.url, source.parent)
        for model in config.llm.models.values():  # local model directories, likewise
            for backend in model.backends:
                if backend.local is not None and not backend.local.path.is_absolute():
                    backend.local.path = (source.parent / backend.local.path).resolve()
    _add_env_admin_key(config)
    _urls_from_env(config)
    return config


def _urls_from_env(config: Config) -> None:
    """SURGE_REGISTRY_URL and SURGE_REDIS_URL replace the file's URLs: a password then
    lives in the environment (a Kubernetes Secret), not in the config file."""
    registry = os.environ.get("SURGE_REGISTRY_URL")
    if registry:
        config.registry_url = registry
    redis = os.environ.get("SURGE_REDIS_URL")
    if redis:
        config.redis_url = redis


def _relative_sqlite(url: str, base: Path) -> str:
    match = re.fullmatch(r"sqlite:///(.+)", url)
    if match and match.group(1) != ":memory:" and not Path(match.group(1)).is_absolute():
        return f"sqlite:///{(base / match.group(1)).resolve()}"
    return url


def hash_admin_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _add_env_admin_key(config: Config) -> None:
    key = os.environ.get("SURGE_ADMIN_KEY")
    if key:
        name = os.environ.get("SURGE_ADMIN_KEY_NAME", "env")
        config.admin.keys.append(AdminKey(name=name, sha256=hash_admin_key(key)))


def admin_key_from_env() -> str | None:
    """The admin key the CLI shows the server (SURGE_ADMIN_KEY)."""
    return os.environ.get("SURGE_ADMIN_KEY") or None


def feedback_secret_from_env() -> str | None:
    """The key of bandit feedback tokens (SURGE_FEEDBACK_SECRET), when the operator sets
    one: else the processes share one the registry makes (`store.shared_secret`)."""
    return os.environ.get("SURGE_FEEDBACK_SECRET") or None


def demo_repository_from_env() -> Path:
    return Path(os.environ.get("SURGE_DEMO_REPOSITORY", ".surge/models")).resolve()


def export_for_workers(config_path: Path | None, config: Config) -> None:
    """Hand a worker process what `surge serve` resolved (config file, repository, workers)."""
    os.environ["SURGE_CONFIG"] = str(config_path.resolve()) if config_path else ""
    os.environ["SURGE_DEMO_REPOSITORY"] = str(config.model_repository)
    os.environ["SURGE_WORKERS"] = str(config.server.workers)


def load_worker_config() -> Config:
    """The config as `surge serve` resolved it, read back inside a worker process."""
    value = os.environ.get("SURGE_CONFIG")
    config = load_config(Path(value) if value else None)
    if not value:
        config.model_repository = demo_repository_from_env()
    config.server.workers = int(os.environ.get("SURGE_WORKERS", config.server.workers))
    return config
