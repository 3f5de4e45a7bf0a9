"""The semantic cache: an answer stored for a text is reused for a later text of the
same meaning, judged by the cosine of their embeddings. Off by default; exact caching
(`keys`, `memory`) is the safe kind, this one trades a measured share of wrong answers
(benchmarks/results/semantic_cache.md: precision of hits on labelled paraphrases) for
hits that an exact key never gets.

A hit needs cosine >= `threshold` AND the same scope. The scope is everything that must
match exactly besides meaning, composed by the caller: the tenant (a similar prompt of
another tenant never answers this one) and the serving version's identity (a new
version never serves an old one's answers). Each scope has its own `SemanticIndex`, so
a lookup's cost grows with its own scope's entries only, and a whole scope leaves at
once. Scopes come from client input, so they are bounded too: at most `max_scopes`,
the least recently used scope goes whole when a new one arrives. A lookup in a scope
never seen creates nothing.

Bounds: `max_entries` and `max_bytes` over all scopes (least recently used entry goes
first), `ttl_s` per entry. An entry's bytes count its value, its unit vector twice (the
entry keeps one to move between index sizes and to re-check a hit; the index holds the
other) and a fixed overhead.

The embedding is the only I/O: `embed` (in production a call to an embedding endpoint
of surge) is awaited with a timeout, and any failure of it is a miss, never an error of
the request. `lookup` returns the query's vector with its answer, so that storing the
answer after a miss (`add_vector`) does not embed the same text twice.

Everything else is synchronous and takes `now` (defaults to `clock()`), so tests drive
time. Only the cosine product of a large scope leaves the event loop (see
`THREAD_CUTOVER_ENTRIES`); the loop may change the index meanwhile, so a hit found in a
thread is re-checked on the loop against the entry's own vector: a race can cost a
hit, never serve a wrong one.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from surge.cache.memory import ENTRY_OVERHEAD_BYTES
from surge.cache.semantic import SemanticIndex

log = logging.getLogger(__name__)

Embed = Callable[[list[str]], Awaitable[np.ndarray]]

# Measured by benchmarks/semantic_cache.py on the shared 2-core box (384-d, p50): a
# lookup on the loop costs ~50 us at 1k entries, ~90-130 us at 4k, ~220 us at 10k and
# ~0.5-1 ms at 16k (past the CPU cache); the hop to a thread and back adds ~150-250 us
# to the request but keeps the loop's stalls at tens of us. Below the cut-over the loop
# blocks for no longer than a hop would cost the request; above it the product runs
# in a thread (numpy releases the GIL) and other requests go on.
THREAD_CUTOVER_ENTRIES = 4096
INITIAL_CAPACITY = 64  # a scope's first index; it doubles when full, halves when 1/4 used
DEFAULT_MAX_SCOPES = 1024


@dataclass(frozen=True, slots=True)
class SemanticHit:
    key: str  # the key the answer was stored under
    cosine: float
    value: bytes
    age_s: float


class SemanticLookup(NamedTuple):
    """A lookup's answer, and the query's unit vector for `add_vector` after a miss
    (None when the embedding failed: then there is nothing to store either)."""

    hit: SemanticHit | None
    vector: np.ndarray | None


@dataclass(slots=True)
class _Entry:
    key: str
    scope: str | None
    value: bytes
    vector: np.ndarray  # unit, float32
    stored_at: float
    size: int


@dataclass(slots=True)
class _Scope:
    index: SemanticIndex
    entries: dict[str, _Entry]  # by key: what a rebuild re-adds, what a scope drop takes


class SemanticCache:
    def __init__(
        self,
        embed: Embed,
        threshold: float,
        max_entries: int,
        max_bytes: int,
        ttl_s: float,
        clock: Callable[[], float] = time.monotonic,
        *,
        max_scopes: int = DEFAULT_MAX_SCOPES,
        embed_timeout_s: float = 0.5,
        dim: int | None = None,
        thread_cutover_entries: int = THREAD_CUTOVER_ENTRIES,
    ) -> None:
        if not -1.0 <= threshold <= 1.0:
            raise ValueError(f"a cosine threshold lies in [-1, 1], got {threshold}")
        if max_entries < 1 or max_bytes < 1 or max_scopes < 1:
            raise ValueError("max_entries, max_bytes and max_scopes must be positive")
        if not ttl_s > 0 or not embed_timeout_s > 0:
            raise ValueError("ttl_s and embed_timeout_s must be positive")
        self._embed = embed
        self.threshold, self.ttl_s, self.clock = threshold, ttl_s, clock
        self.max_entries, self.max_bytes, self.max_scopes = max_entries, max_bytes, max_scopes
        self.embed_timeout_s = embed_timeout_s
        self.dim = dim  # None: taken from the first embedding
        self.thread_cutover_entries = thread_cutover_entries
        self._scopes: OrderedDict[str | None, _Scope] = OrderedDict()  # least recent first
        # Every entry, least recently used first: what goes when the cache is full.
        self._lru: OrderedDict[tuple[str | None, str], _Entry] = OrderedDict()
        # The same entries in the order they were stored: one TTL for all, so the
        # oldest expire first and a sweep stops at the first fresh one.
        self._by_age: dict[tuple[str | None, str], _Entry] = {}
        self.bytes = 0
        self.lookups = self.hits = self.misses = 0
        self.evictions = 0  # entries dropped for room, whole scopes' entries included
        self.scope_evictions = 0
        self.expired = 0
        self.rejected = 0  # values too large to ever fit
        self.embed_failures = 0
        self._embed_failing = False

    @property
    def entries(self) -> int:
        return len(self._lru)

    @property
    def scopes(self) -> int:
        return len(self._scopes)

    # -- the async face: the embedding, and the product of large scopes off the loop --

    async def embed_one(self, text: str) -> np.ndarray | None:
        """The text's unit vector, or None when the embedding failed, timed out or came
        back unusable (counted in `embed_failures`; the caller carries on uncached)."""
        try:
            rows = await asyncio.wait_for(self._embed([text]), self.embed_timeout_s)
            vector = self._unit(rows)
        except Exception as exc:  # the cache must never fail a request
            self.embed_failures += 1
            if not self._embed_failing:  # one line per outage, not one per request
                log.warning("semantic cache: embedding failed, serving uncached: %r", exc)
                self._embed_failing = True
            return None
        if self._embed_failing:
            log.info("semantic cache: embedding works again")
            self._embed_failing = False
        return vector

    async def lookup(
        self, text: str, scope: str | None, now: float | None = None
    ) -> SemanticLookup:
        vector = await self.embed_one(text)
        if vector is None:
            self.lookups += 1
            self.misses += 1
            return SemanticLookup(None, None)
        now = self.clock() if now is None else now
        self.sweep(now)
        held = self._scopes.get(scope)
        if held is not None and len(held.entries) > self.thread_cutover_entries:
            found = await asyncio.to_thread(_search, held.index, vector, scope)
            return SemanticLookup(self._answer(found, vector, scope, now, verify=True), vector)
        found = _search(held.index, vector, scope) if held is not None else None
        return SemanticLookup(self._answer(found, vector, scope, now, verify=False), vector)

    async def add(
        self,
        text: str,
        scope: str | None,
        value: bytes,
        now: float | None = None,
        key: str | None = None,
    ) -> bool:
        """Embed `text` and store its answer; False when not stored (embedding failed,
        value too large). After a `lookup`, `add_vector` with its vector embeds nothing."""
        vector = await self.embed_one(text)
        return self.add_vector(vector, scope, value, now, key)

    # -- the sans-IO core --

    def lookup_vector(
        self, vector: np.ndarray, scope: str | None, now: float | None = None
    ) -> SemanticHit | None:
        """A lookup by an embedding already at hand, on the calling thread."""
        unit = self._unit(vector)
        now = self.clock() if now is None else now
        self.sweep(now)
        held = self._scopes.get(scope)
        found = _search(held.index, unit, scope) if held is not None else None
        return self._answer(found, unit, scope, now, verify=False)

    def add_vector(
        self,
        vector: np.ndarray | None,
        scope: str | None,
        value: bytes,
        now: float | None = None,
        key: str | None = None,
    ) -> bool:
        """Store `value` as the answer to texts near `vector` in `scope`, under `key`
        (default: a digest of the unit vector, so the same text stored again replaces
        its answer; pass the exact cache's key to purge by its prefix). A None vector
        (the lookup's embedding failed) stores nothing."""
        if vector is None:
            return False
        unit = self._unit(vector)
        now = self.clock() if now is None else now
        if key is None:
            key = hashlib.blake2b(unit.tobytes(), digest_size=16).hexdigest()
        self._remove((scope, key))  # an older answer under this key is outdated either way
        size = len(key) + len(value) + 2 * unit.nbytes + ENTRY_OVERHEAD_BYTES
        if size > self.max_bytes:
            self.rejected += 1
            return False
        self.sweep(now)
        while self._lru and (
            len(self._lru) >= self.max_entries or self.bytes + size > self.max_bytes
        ):
            self._remove(next(iter(self._lru)))
            self.evictions += 1
        held = self._scope_for_add(scope)
        if len(held.entries) == held.index.max_entries:
            # Room overall (just made) but not in this scope's index: double it.
            self._rebuild(held, min(2 * held.index.max_entries, self.max_entries))
        held.index.add(unit, key, scope, now)
        entry = _Entry(key, scope, bytes(value), unit, now, size)
        held.entries[key] = self._lru[(scope, key)] = self._by_age[(scope, key)] = entry
        self.bytes += size
        return True

    def sweep(self, now: float) -> int:
        """Drop entries older than the TTL. Runs on every lookup and add (it stops at the
        first fresh entry, so it costs next to nothing when nothing expired); a driver
        may also call it now and then to free an idle cache's memory."""
        doomed = []
        for item, entry in self._by_age.items():
            if now - entry.stored_at < self.ttl_s:
                break
            doomed.append(item)
        for item in doomed:
            self._remove(item)
        self.expired += len(doomed)
        return len(doomed)

    def purge(self, prefix: str | None = None) -> int:
        """Drop every entry, or those whose key starts with `prefix` (an endpoint's,
        when keys are the exact cache's keys)."""
        doomed = [item for item in self._lru if prefix is None or item[1].startswith(prefix)]
        for item in doomed:
            self._remove(item)
        return len(doomed)

    def stats(self) -> dict[str, int]:
        return {
            "lookups": self.lookups,
            "hits": self.hits,
            "misses": self.misses,
            "evictions": self.evictions,
            "scope_evictions": self.scope_evictions,
            "expired": self.expired,
            "rejected": self.rejected,
            "embed_failures": self.embed_failures,
            "entries": self.entries,
            "scopes": self.scopes,
            "bytes": self.bytes,
        }

    # -- internals --

    def _unit(self, rows: np.ndarray) -> np.ndarray:
        vector = np.asarray(rows, dtype=np.float32)
        if vector.ndim == 2 and vector.shape[0] == 1:
            vector = vector[0]
        if vector.ndim != 1 or (self.dim is not None and vector.shape[0] != self.dim):
            raise ValueError(f"expected one vector of {self.dim} dimensions, got {vector.shape}")
        norm = float(np.linalg.norm(vector))
        if not np.isfinite(norm) or norm == 0.0:
            raise ValueError("an embedding must be finite and non-zero")
        if self.dim is None:
            self.dim = int(vector.shape[0])
        return vector / norm

    def _answer(
        self,
        found: tuple[str, float] | None,
        unit: np.ndarray,
        scope: str | None,
        now: float,
        verify: bool,
    ) -> SemanticHit | None:
        self.lookups += 1
        entry = self._lru.get((scope, found[0])) if found is not None else None
        cosine = found[1] if found is not None else 0.0
        if entry is not None and verify:
            # Found in a thread while the loop may have replaced or dropped the entry:
            # trust only the entry as it is now.
            cosine = min(float(entry.vector @ unit), 1.0)
        # The age is checked again: a sweep stops at the first fresh entry, and a caller
        # that passes `now` out of order can leave an expired one behind it.
        if entry is None or cosine < self.threshold or now - entry.stored_at >= self.ttl_s:
            self.misses += 1
            return None
        self.hits += 1
        self._lru.move_to_end((scope, entry.key))
        self._scopes.move_to_end(scope)
        return SemanticHit(entry.key, cosine, entry.value, now - entry.stored_at)

    def _scope_for_add(self, scope: str | None) -> _Scope:
        held = self._scopes.get(scope)
        if held is not None:
            self._scopes.move_to_end(scope)
            return held
        while len(self._scopes) >= self.max_scopes:
            _, oldest = self._scopes.popitem(last=False)
            for entry in oldest.entries.values():  # the index goes with the scope
                del self._lru[(entry.scope, entry.key)], self._by_age[(entry.scope, entry.key)]
                self.bytes -= entry.size
            self.evictions += len(oldest.entries)
            self.scope_evictions += 1
        assert self.dim is not None  # set by the vector being added
        capacity = min(INITIAL_CAPACITY, self.max_entries)
        held = self._scopes[scope] = _Scope(SemanticIndex(self.dim, self.threshold, capacity), {})
        return held

    def _remove(self, item: tuple[str | None, str]) -> None:
        entry = self._lru.pop(item, None)
        if entry is None:
            return
        del self._by_age[item]
        self.bytes -= entry.size
        scope = item[0]
        held = self._scopes[scope]
        del held.entries[entry.key]
        held.index.remove(entry.key)
        capacity = held.index.max_entries
        if not held.entries:
            del self._scopes[scope]  # an empty scope holds memory and a place in the LRU
        elif capacity > INITIAL_CAPACITY and len(held.entries) <= capacity // 4:
            # Shrink, so that scopes once large and now nearly empty do not keep their
            # peak memory: capacities stay within 4x the entries (plus 64 per scope).
            self._rebuild(held, max(INITIAL_CAPACITY, capacity // 2))

    def _rebuild(self, held: _Scope, capacity: int) -> None:
        """A new index of `capacity` slots for the scope's entries. The old index is left
        as it was, so a lookup still reading it in a thread reads a consistent one."""
        assert self.dim is not None
        index = SemanticIndex(self.dim, self.threshold, capacity)
        for entry in held.entries.values():
            index.add(entry.vector, entry.key, entry.scope, entry.stored_at)
        held.index = index


def _search(index: SemanticIndex, unit: np.ndarray, scope: str | None) -> tuple[str, float] | None:
    """The index's best match. In a thread the loop may change the index meanwhile: a
    slot freed mid-search fails the index's own check, which is a miss here, and
    `_answer` re-checks whatever it found."""
    try:
        return index.lookup(unit, scope)
    except (AssertionError, ValueError):
        return None
