"""The semantic cache's index: the embeddings of texts already answered, looked up by
cosine similarity. A hit needs cosine >= `threshold` and the same scope (the tenant
when the cache is scoped per tenant, None when shared): a similar prompt from another
tenant never answers this one.

Exact brute force: unit vectors in one preallocated float32 matrix, a lookup is one
matrix-vector product over the slots in use and an argmax. Exact means no recall loss,
and a scope filter that costs a comparison instead of an over-fetch. It is memory
bound: 384-d, on one core of a shared 2-core machine, ~65 us at 1k entries, ~1 ms at
10k, ~6-7 ms at 50k (two BLAS threads: ~80 us, ~0.3 ms, ~4 ms). Right up to ~10k
entries, where an embedding call for the query costs more; numpy releases the GIL in
the product, so a driver runs lookups of large indexes in a thread, off the event
loop. Past that an HNSW index answers in ~0.1-0.4 ms at 50k: an ANN index behind this
same interface is the way to grow, measured against this one.

Bounded by `max_entries`: a full index drops its oldest entry to add one. Sans-IO:
`add` takes `now`, which `expire` uses to drop entries older than the cache's TTL.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def _unit(vector: np.ndarray, dim: int) -> np.ndarray:
    v = np.asarray(vector, dtype=np.float32).reshape(-1)
    if v.shape[0] != dim:
        raise ValueError(f"expected a vector of {dim} dimensions, got {v.shape[0]}")
    norm = float(np.linalg.norm(v))
    if not np.isfinite(norm) or norm == 0.0:
        raise ValueError("a vector must be finite and non-zero to have a direction")
    return v / norm


class SemanticIndex:
    def __init__(self, dim: int, threshold: float, max_entries: int) -> None:
        if dim < 1 or max_entries < 1:
            raise ValueError("dim and max_entries must be positive")
        if not -1.0 <= threshold <= 1.0:
            raise ValueError(f"a cosine threshold lies in [-1, 1], got {threshold}")
        self.dim, self.threshold, self.max_entries = dim, threshold, max_entries
        self._vectors = np.zeros((max_entries, dim), dtype=np.float32)
        self._scopes = np.full(max_entries, -1, dtype=np.int64)  # -1: a free slot
        self._order = np.zeros(max_entries, dtype=np.int64)  # insertion sequence
        self._added_at = np.zeros(max_entries, dtype=np.float64)
        self._keys: list[str | None] = [None] * max_entries
        self._slot_of: dict[str, int] = {}
        self._scope_ids: dict[str | None, int] = {}
        self._scope_sizes: dict[int, int] = {}
        self._next_scope_id = 0
        self._free: list[int] = []  # slots freed below the high-water mark
        self._used = 0  # slots [0, _used) have been handed out
        self._seq = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._slot_of)

    def __contains__(self, key: str) -> bool:
        return key in self._slot_of

    def _slot(self) -> int:
        if self._free:
            return self._free.pop()
        if self._used < self.max_entries:
            self._used += 1
            return self._used - 1
        live = np.where(self._scopes >= 0, self._order, np.iinfo(np.int64).max)
        oldest = int(np.argmin(live))
        self._drop(oldest)
        self.evictions += 1
        return self._free.pop()

    def add(self, vector: np.ndarray, key: str, scope: str | None, now: float) -> None:
        """Index `key` (a cache key) under its input's embedding; a key added again
        replaces its earlier vector."""
        unit = _unit(vector, self.dim)
        self.remove(key)
        slot = self._slot()
        sid = self._scope_ids.get(scope)
        if sid is None:
            sid = self._scope_ids[scope] = self._next_scope_id
            self._next_scope_id += 1
        self._scope_sizes[sid] = self._scope_sizes.get(sid, 0) + 1
        self._vectors[slot] = unit
        self._scopes[slot] = sid
        self._order[slot] = self._seq
        self._added_at[slot] = now
        self._seq += 1
        self._keys[slot] = key
        self._slot_of[key] = slot

    def lookup(self, vector: np.ndarray, scope: str | None) -> tuple[str, float] | None:
        """The most similar key in `scope` and its cosine, if that reaches the threshold."""
        unit = _unit(vector, self.dim)
        sid = self._scope_ids.get(scope)
        if sid is None:
            return None
        n = self._used
        cosines = self._vectors[:n] @ unit
        # Other scopes and free slots can never win: a free slot's zero vector would
        # otherwise beat a negative threshold.
        cosines[self._scopes[:n] != sid] = -np.inf
        best = int(np.argmax(cosines))
        cosine = float(cosines[best])
        if cosine < self.threshold:
            return None
        key = self._keys[best]
        assert key is not None
        return key, min(cosine, 1.0)

    def _drop(self, slot: int) -> None:
        key = self._keys[slot]
        assert key is not None
        del self._slot_of[key]
        sid = int(self._scopes[slot])
        self._scope_sizes[sid] -= 1
        if not self._scope_sizes[sid]:
            # Scopes come and go with tenants: keep only the ones still indexed.
            del self._scope_sizes[sid]
            scope = next(s for s, i in self._scope_ids.items() if i == sid)
            del self._scope_ids[scope]
        self._keys[slot] = None
        self._scopes[slot] = -1
        self._vectors[slot] = 0.0
        self._free.append(slot)

    def remove(self, key: str) -> bool:
        slot = self._slot_of.get(key)
        if slot is None:
            return False
        self._drop(slot)
        return True

    def purge(self, match: str | Callable[[str], bool]) -> int:
        """Drop every key that starts with `match` (an endpoint's prefix) or satisfies it."""
        matches = (lambda key: key.startswith(match)) if isinstance(match, str) else match
        doomed = [key for key in self._slot_of if matches(key)]
        for key in doomed:
            self.remove(key)
        return len(doomed)

    def expire(self, before: float) -> int:
        """Drop entries added before `before` (now minus the cache's TTL): their answers
        are gone from the cache, so a hit on them would only be a miss later."""
        n = self._used
        slots = np.flatnonzero((self._scopes[:n] >= 0) & (self._added_at[:n] < before))
        for slot in slots:
            self._drop(int(slot))
        return len(slots)
