"""The in-process cache tier: an LRU of encoded values bounded by bytes, each entry with
its own time to live. Sans-IO: every call takes `now` (monotonic seconds).

Bytes stay bounded at all times: a `put` evicts least recently used entries until the
total fits, expired ones included, and an entry that could never fit is not stored.
Expiry itself is lazy: an expired entry stays until it is evicted, purged, swept or
replaced, so emergency mode can still serve it (`get_stale`); a plain `get` never does.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

# What one entry costs beyond its key and value (the entry object, the dict slot, the
# bytes objects' headers): counted so that a flood of tiny values stays bounded too.
ENTRY_OVERHEAD_BYTES = 200


@dataclass(slots=True)  # not frozen: a frozen init costs a microsecond on every miss
class Entry:
    value: bytes
    stored_at: float
    expires_at: float
    size: int  # what it counts against max_bytes

    def fresh(self, now: float) -> bool:
        return now < self.expires_at

    def age_s(self, now: float) -> float:
        return now - self.stored_at


class MemoryCache:
    def __init__(self, max_bytes: int) -> None:
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, Entry] = OrderedDict()  # least recent first
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self.stale_hits = 0
        self.evictions = 0  # dropped to make room (not expired, purged or replaced)
        self.rejected = 0  # values too large to ever fit

    @property
    def entries(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def get(self, key: str, now: float) -> Entry | None:
        """The entry if it is fresh; a use makes it the most recent."""
        entry = self._entries.get(key)
        if entry is None or not entry.fresh(now):
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry

    def get_stale(self, key: str, now: float, max_stale_s: float) -> Entry | None:
        """The entry if it is fresh or expired for at most `max_stale_s`: for emergency
        mode, after `get` missed (so a miss is not counted twice)."""
        entry = self._entries.get(key)
        if entry is None or now >= entry.expires_at + max_stale_s:
            return None
        self._entries.move_to_end(key)
        if entry.fresh(now):
            self.hits += 1
        else:
            self.stale_hits += 1
        return entry

    def put(self, key: str, value: bytes, now: float, ttl_s: float) -> bool:
        """Store `value` for `ttl_s`; False when it was not stored (too large, or no
        time to live). Either way an older value under `key` is gone: it is outdated."""
        self.delete(key)
        size = len(key) + len(value) + ENTRY_OVERHEAD_BYTES
        if size > self.max_bytes:
            self.rejected += 1
            return False
        if not ttl_s > 0:
            return False
        self._entries[key] = Entry(bytes(value), now, now + ttl_s, size)
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self.bytes -= evicted.size
            self.evictions += 1
        return True

    def delete(self, key: str) -> bool:
        entry = self._entries.pop(key, None)
        if entry is None:
            return False
        self.bytes -= entry.size
        return True

    def purge(self, match: str | Callable[[str], bool]) -> int:
        """Drop every key that starts with `match` (keys are `<endpoint>:<hash>`, so an
        endpoint's prefix purges that endpoint), or for which `match(key)` is true."""
        matches = (lambda key: key.startswith(match)) if isinstance(match, str) else match
        doomed = [key for key in self._entries if matches(key)]
        for key in doomed:
            self.delete(key)
        return len(doomed)

    def sweep(self, now: float, keep_stale_s: float = 0.0) -> int:
        """Drop entries expired for longer than `keep_stale_s`. Optional housekeeping
        (bytes are bounded without it): it frees memory early for a driver that calls
        it now and then. O(entries)."""
        return self.purge(lambda key: now >= self._entries[key].expires_at + keep_stale_s)

    def stats(self) -> dict[str, int]:
        return {
            "hits": self.hits,
            "misses": self.misses,
            "stale_hits": self.stale_hits,
            "evictions": self.evictions,
            "rejected": self.rejected,
            "bytes": self.bytes,
            "entries": self.entries,
        }
