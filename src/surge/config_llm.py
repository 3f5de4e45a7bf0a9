"""The language-model part of the config schema (README: "Language models").

```yaml
llm:
  providers:                 # OpenAI-compatible servers: OpenAI, vLLM, TGI, Ollama, surge
    openai: {url: https://api.openai.com/v1, api_key_env: OPENAI_API_KEY}
  models:                    # public model names, each served by backends in order
    gpt-small:
      backends: [{provider: openai, model: gpt-4o-mini}]
      price_per_1k_prompt_tokens: 0.00015
  routes:                    # public names served by a policy over models
    support: {cascade: {tiers: [tiny, gpt-small], min_mean_logprob: -0.6}}
```

API keys are never in the file: a provider names the environment variable that holds
its key (`api_key_env`), read here, the one module that reads the environment.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from surge.config_routes import BanditConfig
from surge.routing.rules import parse_rules


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ProviderConfig(_Strict):
    url: str = Field(
        description="the OpenAI-compatible base URL, up to /v1 (e.g. http://127.0.0.1:8001/v1)"
    )
    api_key_env: str | None = Field(
        None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="environment variable holding the API key (sent as a Bearer token); "
        "keys never go in the config file",
    )
    max_connections: int | None = Field(
        None,
        ge=1,
        description="pooled HTTP connections (default: max_concurrent_requests: a stream "
        "holds its connection for its whole answer, so fewer would make calls wait unseen)",
    )
    max_concurrent_requests: int = Field(
        256, ge=1, description="calls in flight at once; past it a call is refused (429)"
    )
    connect_timeout_ms: float = Field(2000.0, gt=0)
    first_token_timeout_ms: float = Field(
        30_000.0, gt=0, description="longest wait from sending to the first token"
    )
    idle_timeout_ms: float = Field(
        30_000.0, gt=0, description="longest gap between two tokens of a stream"
    )
    headers: dict[str, str] = Field(
        default_factory=dict, description="extra headers on every call (not secrets)"
    )
    failure_threshold: int = Field(
        5, ge=1, description="failures within window_s that open this provider's breaker"
    )
    window_s: float = Field(10.0, gt=0)
    open_s: float = Field(5.0, gt=0, description="an open breaker's pause before a probe")


class BackendConfig(_Strict):
    provider: str | None = Field(None, description="a provider name (or `local` below)")
    model: str | None = Field(None, description="the provider's model name")
    local: LocalModelConfig | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> BackendConfig:
        if (self.provider is None) == (self.local is None):
            raise ValueError("a backend is either {provider, model} or {local: {...}}")
        if self.provider is not None and not self.model:
            raise ValueError("a provider backend needs `model` (the provider's model name)")
        return self


class LocalModelConfig(_Strict):
    path: Path = Field(
        description="a directory saved with transformers' save_pretrained (model + tokenizer)"
    )
    threads: int = Field(1, ge=1, description="torch threads for this model")
    max_concurrent: int = Field(1, ge=1, description="generations at once")
    max_waiting: int = Field(16, ge=0, description="queued requests beyond which 429")
    max_context_tokens: int = Field(2048, ge=1, description="prompt tokens allowed")


BackendConfig.model_rebuild()


class SemanticCacheConfig(_Strict):
    """Reuse of an answer to a *similar* prompt (llm/chat_cache.py), off unless set.

    Measured on a hand-labelled set of paraphrases and hard negatives with
    all-MiniLM-L6-v2 (`benchmarks/results/semantic_cache.md`): no threshold reached 95 %
    precision: swapped entities and negations ("London to New York" / "New York to
    London") score above 0.98. So there is no default threshold: choose it on your own
    traffic, and prefer it where a near answer is acceptable.
    """

    embedding_endpoint: str = Field(
        description="an endpoint of `endpoints:` with one BYTES input and an `embedding` output"
    )
    threshold: float = Field(gt=0, le=1, description="cosine a similar prompt must reach")
    max_entries: int = Field(10_000, ge=1, description="prompts remembered (oldest go first)")
    max_bytes: int = Field(16 << 20, gt=0, description="answers remembered, by bytes")


class ChatCacheConfig(_Strict):
    """Reuse of complete answers to the same messages and parameters (llm/chat_cache.py)."""

    ttl_s: float = Field(300.0, gt=0, description="how long an answer is reused")
    max_bytes: int = Field(16 << 20, gt=0, description="this process's LRU, by bytes")
    scope: Literal["shared", "tenant"] = Field(
        "shared", description="tenant: each tenant has its own entries, never another's"
    )
    redis: bool = Field(True, description="also keep answers in Redis (`redis_url`)")
    allow_sampling: bool = Field(
        False,
        description="also reuse answers to unseeded samples (temperature > 0), which makes "
        "a varied answer a fixed one; off: only temperature 0 or a seed are reused",
    )
    semantic: SemanticCacheConfig | None = Field(
        None, description="also reuse the answer to a similar prompt (off by default)"
    )


class ChatModelConfig(_Strict):
    backends: list[BackendConfig] = Field(
        min_length=1,
        description="who serves this model, in order: a backend that fails, refuses (429, "
        "5xx) or times out before its first token hands the request to the next",
    )
    price_per_1k_prompt_tokens: float = Field(0.0, ge=0)
    price_per_1k_completion_tokens: float = Field(0.0, ge=0)
    currency: str = Field("USD")
    max_concurrent_streams: int = Field(
        256, ge=1, description="answers in progress at once; past it 429 with Retry-After"
    )
    default_max_tokens: int = Field(512, ge=1, description="when the client sets none")
    max_tokens_limit: int = Field(
        4096, ge=1, description="the most a client may ask for (bounds each stream's memory)"
    )
    timeout_ms: float = Field(
        60_000.0, gt=0, description="deadline when the client sends no X-Request-Timeout-Ms"
    )
    cache: ChatCacheConfig | None = None


class ChatCascadeConfig(_Strict):
    tiers: list[str] = Field(min_length=2, description="chat models, cheapest first")
    min_mean_logprob: float = Field(
        -1.0,
        le=0,
        description="an answer whose mean token log-probability is below this escalates",
    )
    review_below: float | None = Field(
        None,
        le=0,
        description="the last tier's answers below this mean log-probability go to the "
        "human-review queue (default: min_mean_logprob)",
    )


class ChatTimeBoxConfig(_Strict):
    models: list[str] = Field(min_length=1, description="chat models, best (slowest) first")
    safety_margin: float = Field(
        0.9,
        gt=0,
        le=1,
        description="share of the remaining time an answer's estimate must fit in (room for "
        "what the estimate does not see), as for the deadline ladder",
    )
    min_max_tokens: int = Field(
        16, ge=1, description="the fewest tokens worth capping an answer to; below: 504"
    )


class ChatRulesConfig(_Strict):
    rules: list[dict[str, Any]] = Field(
        default_factory=list,
        description="{name, when: [{field, op, value}], target: <chat model>}, first match "
        "wins; fields as for routes' rules (tenant, priority, header:<name>, param:<name>) "
        "plus prompt_chars and prompt_tokens",
    )
    default: str = Field(description="the chat model when no rule matches")

    @model_validator(mode="after")
    def _rules_parse(self) -> ChatRulesConfig:
        parse_rules(self.rules)
        return self


class ChatRouteConfig(_Strict):
    cascade: ChatCascadeConfig | None = None
    time_boxed: ChatTimeBoxConfig | None = None
    rules: ChatRulesConfig | None = None
    bandit: BanditConfig | None = Field(
        None, description="as for routes' bandit; its arms are chat models"
    )
    cache: ChatCacheConfig | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> ChatRouteConfig:
        set_ = [k for k in ("cascade", "time_boxed", "rules", "bandit") if getattr(self, k)]
        if self.cache is not None and self.cache.allow_sampling and self.bandit is not None:
            raise ValueError("a bandit route learns from varied answers: allow_sampling is off")
        if len(set_) != 1:
            raise ValueError("a chat route has exactly one of cascade, time_boxed, rules, bandit")
        return self

    def targets(self) -> list[str]:
        if self.cascade:
            return list(self.cascade.tiers)
        if self.time_boxed:
            return list(self.time_boxed.models)
        if self.bandit:
            return list(self.bandit.arms)
        assert self.rules is not None
        return [r["target"] for r in self.rules.rules] + [self.rules.default]


class LLMConfig(_Strict):
    providers: dict[str, ProviderConfig] = Field(default_factory=dict)
    models: dict[str, ChatModelConfig] = Field(default_factory=dict)
    routes: dict[str, ChatRouteConfig] = Field(default_factory=dict)
    max_open_streams: int = Field(
        2048, ge=1, description="answers in progress in this process, all models together"
    )

    @model_validator(mode="after")
    def _names_resolve(self) -> LLMConfig:
        for name, model in self.models.items():
            for backend in model.backends:
                if backend.provider is not None and backend.provider not in self.providers:
                    raise ValueError(
                        f"model {name!r} names provider {backend.provider!r}, which "
                        "llm.providers does not define"
                    )
        clash = sorted(set(self.routes) & set(self.models))
        if clash:
            raise ValueError(f"llm routes {clash} have the names of llm models")
        for name, route in self.routes.items():
            missing = [t for t in route.targets() if t not in self.models]
            if missing:
                raise ValueError(f"llm route {name!r} names {missing}, which are not llm models")
        return self


def provider_api_key(provider: ProviderConfig) -> str | None:
    """The provider's API key from the environment (None when it names no variable)."""
    if provider.api_key_env is None:
        return None
    key = os.environ.get(provider.api_key_env)
    if not key:
        raise ValueError(f"environment variable {provider.api_key_env} (an API key) is not set")
    return key
