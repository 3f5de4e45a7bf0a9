"""The chat gateway's state: providers, backends, models and routes built from the
config's `llm:` section, owned by the server's lifespan (started and stopped with it).

Local models load on a worker thread at start (they import torch, which the serving
process does not otherwise need); providers open their connection pools lazily.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from surge.cache.semantic_cache import SemanticCache
from surge.config_llm import LLMConfig, ProviderConfig, provider_api_key
from surge.core.errors import SurgeError
from surge.llm.chat_cache import ChatCache
from surge.llm.metrics import ChatMetrics
from surge.llm.model import BackendSlot, ChatModel
from surge.llm.routes import ChatBandit, ChatCascade, ChatRules, ChatTarget, ChatTimeBox, ReviewHook
from surge.llm.stream import ChatBackend
from surge.routing.breaker import BreakerPolicy, CircuitBreaker

if TYPE_CHECKING:
    from surge.cache.redis_cache import RedisCache
    from surge.config_routes import BanditConfig
    from surge.store.registry import RegistryStore

log = logging.getLogger("surge.llm")

# endpoint name -> a function embedding texts with it (one unit vector per text)
Embedder = Callable[[str], Callable[[list[str]], Awaitable[Any]]]


class ChatGateway:
    def __init__(self, config: LLMConfig) -> None:
        self.config = config
        self.models: dict[str, ChatModel] = {}
        self.routes: dict[str, Any] = {}
        self.providers: dict[str, Any] = {}
        self.backends: list[ChatBackend] = []
        self.metrics = ChatMetrics(lambda: self.models)
        self.open_streams = 0
        self.caches: dict[str, ChatCache] = {}  # public name -> its answer cache

    @property
    def enabled(self) -> bool:
        return bool(self.config.models)

    def names(self) -> list[str]:
        return [*self.models, *self.routes]

    def target(self, name: str) -> ChatTarget:
        found = self.routes.get(name) or self.models.get(name)
        if found is None:
            known = ", ".join(self.names()) or "none (no llm.models configured)"
            raise SurgeError(
                "model_not_found", f"unknown chat model {name!r}; serving: {known}", 404
            )
        return found  # type: ignore[no-any-return]

    def take_stream(self) -> None:
        """The process-wide bound on answers in progress (each model has its own too)."""
        limit = self.config.max_open_streams
        if self.open_streams >= limit:
            raise SurgeError(
                "too_many_streams",
                f"this server has {self.open_streams} chat answers in progress, its limit",
                429,
                retry_after_s=1.0,
            )
        self.open_streams += 1

    def release_stream(self) -> None:
        self.open_streams -= 1

    async def start(
        self,
        store: RegistryStore,
        remember: Callable[..., None],
        review: ReviewHook,
        redis: RedisCache | None = None,
        embedder: Embedder | None = None,
    ) -> None:
        for name, cfg in self.config.models.items():
            slots = []
            for backend_cfg in cfg.backends:
                if backend_cfg.local is not None:
                    backend = await self._local(name, backend_cfg.local)
                    policy = BreakerPolicy()
                else:
                    assert backend_cfg.provider is not None and backend_cfg.model is not None
                    pcfg = self.config.providers[backend_cfg.provider]
                    backend = self._remote(backend_cfg.provider, pcfg, backend_cfg.model)
                    policy = BreakerPolicy(pcfg.failure_threshold, pcfg.window_s, pcfg.open_s)
                self.backends.append(backend)
                slots.append(BackendSlot(backend, CircuitBreaker(policy, backend.name)))
            self.models[name] = ChatModel(name, cfg, slots, self.metrics)
        for name, route in self.config.routes.items():
            if route.cascade is not None:
                tiers = [self.models[t] for t in route.cascade.tiers]
                self.routes[name] = ChatCascade(name, route.cascade, tiers, review)
            elif route.time_boxed is not None:
                models = [self.models[m] for m in route.time_boxed.models]
                self.routes[name] = ChatTimeBox(name, route.time_boxed, models)
            elif route.rules is not None:
                self.routes[name] = ChatRules(name, route.rules, self.models)
            else:
                assert route.bandit is not None
                self.routes[name] = self._bandit(name, route.bandit, store, remember)
        self._open_caches(redis, embedder)
        for bandit in self.bandits:
            await bandit.sync()
            bandit.start()

    def _open_caches(self, redis: RedisCache | None, embedder: Embedder | None) -> None:
        """An answer cache per model or route that asks for one; its identity is its
        config (and, for a route, its models'), so a changed config never reuses."""
        models = self.config.models
        wanted: list[tuple[str, Any, dict[str, Any]]] = []
        for name, cfg in models.items():
            if cfg.cache is not None:
                wanted.append((name, cfg.cache, cfg.model_dump(mode="json")))
        for name, route in self.config.routes.items():
            if route.cache is not None:
                used = {m: models[m].model_dump(mode="json") for m in route.targets()}
                doc = {"route": route.model_dump(mode="json"), "models": used}
                wanted.append((name, route.cache, doc))
        for name, cfg, doc in wanted:
            cache = self.caches[name] = ChatCache(name, cfg, doc, redis)
            semantic = cfg.semantic
            if semantic is not None:
                if embedder is None:
                    raise ValueError(f"{name}: a semantic cache needs an embedding endpoint")
                cache.semantic = SemanticCache(
                    embedder(semantic.embedding_endpoint), semantic.threshold,
                    semantic.max_entries, semantic.max_bytes, cfg.ttl_s,
                )  # fmt: skip

    @property
    def bandits(self) -> list[ChatBandit]:
        return [r for r in self.routes.values() if isinstance(r, ChatBandit)]

    def _bandit(
        self, name: str, cfg: BanditConfig, store: RegistryStore, remember: Callable[..., None]
    ) -> ChatBandit:
        arms: list[Any] = [self.models[a] for a in cfg.arms]
        return ChatBandit(name, cfg, arms, store, remember, random.Random())

    def _remote(self, provider_name: str, cfg: ProviderConfig, model: str) -> ChatBackend:
        from surge.llm.provider import Provider, ProviderBackend

        provider = self.providers.get(provider_name)
        if provider is None:
            provider = self.providers[provider_name] = Provider(
                provider_name,
                cfg.url,
                api_key=provider_api_key(cfg),
                max_connections=cfg.max_connections or cfg.max_concurrent_requests,
                max_concurrent_requests=cfg.max_concurrent_requests,
                connect_timeout_s=cfg.connect_timeout_ms / 1000,
                first_token_timeout_s=cfg.first_token_timeout_ms / 1000,
                idle_timeout_s=cfg.idle_timeout_ms / 1000,
                headers=cfg.headers,
            )
        return ProviderBackend(provider, model)

    async def _local(self, name: str, cfg: Any) -> ChatBackend:
        from surge.llm.local import LocalChatBackend

        backend = LocalChatBackend(
            f"local/{name}",
            cfg.path,
            threads=cfg.threads,
            max_concurrent=cfg.max_concurrent,
            max_waiting=cfg.max_waiting,
            max_context_tokens=cfg.max_context_tokens,
        )
        await asyncio.to_thread(backend.load)
        log.info("local chat model %s loaded from %s", name, cfg.path)
        return backend

    def count_prompt_tokens(self, target: ChatTarget, text: str) -> int | None:
        """The prompt's tokens by the first model's own tokenizer, when it is local."""
        for slot in target.models[0].slots:
            counter = getattr(slot.backend, "count_tokens", None)
            if counter is not None:
                return int(counter(text))
        return None

    async def stop(self) -> None:
        for bandit in self.bandits:
            await bandit.stop()
        for backend in self.backends:
            try:
                await backend.aclose()
            except Exception:
                log.exception("closing chat backend %s", backend.name)
        for provider in self.providers.values():
            await provider.aclose()
