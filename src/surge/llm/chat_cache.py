"""Exact reuse of chat answers: the same messages and parameters to the same chat model
(or route) at temperature 0 or with a seed get the answer already given.

The key is the public name's identity (its config: backends, prices, route policy) +
the messages + every parameter that changes an answer + the tenant with `scope: tenant`.
Only complete answers (finish_reason stop or length) are kept; an answer cut by a
deadline, an error or a client that left is not. An unseeded sample (temperature > 0)
is not cached unless `allow_sampling` says so: caching it would turn varied answers
into one.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from surge.cache.keys import (
    Uncacheable,
    chat_key,
    endpoint_key,
    is_deterministic_chat,
    model_identity,
)
from surge.cache.memory import MemoryCache
from surge.cache.redis_cache import RedisCache, Write
from surge.cache.semantic_cache import SemanticCache
from surge.cache.write_behind import WriteBehind
from surge.config_llm import ChatCacheConfig
from surge.core.clock import monotonic
from surge.llm.answer import ChatAnswer
from surge.llm.stream import ChatCall, Finish, Piece, Usage

CACHE_BACKEND = "cache"  # the backend a reused answer names (X-Surge-Route: model@cache)


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    text: str
    reason: str
    usage: Usage


class ChatCache:
    def __init__(
        self,
        name: str,
        config: ChatCacheConfig,
        identity_doc: dict[str, Any],
        redis: RedisCache | None,
        clock: Callable[[], float] = monotonic,
    ) -> None:
        self.name = name
        self.config = config
        digest = hashlib.sha256(orjson.dumps(identity_doc, option=orjson.OPT_SORT_KEYS))
        self.identity = model_identity(name, "chat", digest.hexdigest())
        self.redis = redis if config.redis else None
        self.clock = clock
        self.memory = MemoryCache(config.max_bytes)
        self.results: dict[str, int] = {"hit": 0, "miss": 0, "skipped": 0, "similar": 0}
        self.semantic: SemanticCache | None = None  # set when config.semantic is
        # Off the answer's path and bounded, as the endpoint cache's writes are.
        self.writer = WriteBehind(self.redis) if self.redis is not None else None

    def scope(self, tenant: str | None) -> str | None:
        return tenant if self.config.scope == "tenant" else None

    async def similar(
        self, prompt: str, tenant: str | None
    ) -> tuple[CachedAnswer | None, float, np.ndarray | None]:
        """The answer to a prompt similar enough (semantic cache), its cosine, and the
        prompt's vector (for `keep` after a miss)."""
        if self.semantic is None:
            return None, 0.0, None
        found = await self.semantic.lookup(prompt, self.scope(tenant))
        if found.hit is None:
            return None, 0.0, found.vector
        self.results["similar"] += 1
        return _decoded(found.hit.value), found.hit.cosine, found.vector

    def key(self, call: ChatCall, tenant: str | None) -> str | None:
        """The request's key, or None when its answer must not be reused."""
        params = {f.name: getattr(call, f.name) for f in dataclasses.fields(call)}
        messages = params.pop("messages")
        if not is_deterministic_chat(params, self.config.allow_sampling):
            self.results["skipped"] += 1
            return None
        try:
            scope = self.scope(tenant)
            return endpoint_key(self.name, chat_key(self.identity, messages, params, scope))
        except Uncacheable:
            self.results["skipped"] += 1
            return None

    async def get(self, key: str) -> CachedAnswer | None:
        entry = self.memory.get(key, self.clock())
        value = entry.value if entry is not None else None
        if value is None and self.redis is not None and self.redis.healthy:
            found = await self.redis.get(key)
            value = found.value if found is not None else None
        if value is None:
            self.results["miss"] += 1
            return None
        self.results["hit"] += 1
        return _decoded(value)

    def keep(
        self,
        key: str,
        answer: ChatAnswer,
        vector: np.ndarray | None = None,
        tenant: str | None = None,
    ) -> None:
        """Have `answer` stored when it completes (not when it is cut short), and, with
        the prompt's `vector`, found by similar prompts too."""
        answer.text_parts = answer.text_parts if answer.text_parts is not None else []
        closed_by_model = answer.on_close

        def on_close(done: ChatAnswer, end: Any) -> None:
            closed_by_model(done, end)
            if end.reason in ("stop", "length") and end.error is None:
                usage = end.usage
                value = orjson.dumps(
                    {"text": "".join(done.text_parts or ()), "reason": end.reason,
                     "usage": [usage.prompt_tokens, usage.completion_tokens, usage.source]}
                )  # fmt: skip
                self._store(key, value)
                if self.semantic is not None and vector is not None:
                    self.semantic.add_vector(vector, self.scope(tenant), value, key=key)

        answer.on_close = on_close

    def _store(self, key: str, value: bytes) -> None:
        self.memory.put(key, value, self.clock(), self.config.ttl_s)
        if self.writer is not None and self.writer.redis.healthy:
            self.writer.offer(Write([(key, value)], self.config.ttl_s))


def _decoded(value: bytes) -> CachedAnswer:
    doc = orjson.loads(value)
    return CachedAnswer(doc["text"], doc["reason"], Usage(*doc["usage"]))


def replayed(name: str, cached: CachedAnswer, deadline: float) -> ChatAnswer:
    """A cached answer as an answer that has started: one piece with its text, then its
    Finish (with the usage it had when it was computed: what the cache saved)."""

    async def rest() -> AsyncIterator[Piece | Finish]:
        yield Finish(cached.reason, cached.usage)

    now = monotonic()
    return ChatAnswer(
        name, CACHE_BACKEND, Piece(cached.text), rest(), now, now, 0,
        on_close=lambda _a, _e: None, deadline=deadline,
    )  # fmt: skip
