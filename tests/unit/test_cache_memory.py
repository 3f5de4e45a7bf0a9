"""The in-process cache: hits after a miss, entries expire on time, the byte bound holds
after every call with the least recently used going first, stale entries are served
only when asked for, and a purge takes one endpoint's keys and no other's. Driven by
an explicit clock."""

from __future__ import annotations

import random

import pytest

from surge.cache.memory import ENTRY_OVERHEAD_BYTES, MemoryCache


def cost(key: str, value: bytes) -> int:
    return len(key) + len(value) + ENTRY_OVERHEAD_BYTES


def test_a_miss_then_a_hit_until_the_ttl_passes():
    cache = MemoryCache(max_bytes=10_000)
    assert cache.get("embed:k", now=0.0) is None
    assert cache.put("embed:k", b"answer", now=0.0, ttl_s=10.0)
    entry = cache.get("embed:k", now=9.999)
    assert entry is not None and entry.value == b"answer" and entry.age_s(9.999) == 9.999
    assert cache.get("embed:k", now=10.0) is None  # expired exactly at the ttl
    assert (cache.hits, cache.misses) == (1, 2)
    assert cache.entries == 1  # lazily: still held for emergency mode


def test_bytes_stay_under_the_bound_and_the_least_recently_used_goes_first():
    value = b"x" * 100
    size = cost("k0", value)
    cache = MemoryCache(max_bytes=3 * size)
    for i in range(3):
        cache.put(f"k{i}", value, now=0.0, ttl_s=60)
    cache.get("k0", now=1.0)  # k1 is now the least recently used
    cache.put("k3", value, now=2.0, ttl_s=60)
    assert "k1" not in cache and all(k in cache for k in ("k0", "k2", "k3"))
    assert cache.bytes == 3 * size and cache.evictions == 1


def test_the_bound_holds_after_every_call_of_a_random_workload():
    rng = random.Random(7)
    cache = MemoryCache(max_bytes=20_000)
    for step in range(3_000):
        now = step * 0.01
        key = f"ep{rng.randrange(3)}:{rng.randrange(200)}"
        action = rng.random()
        if action < 0.5:
            cache.put(key, b"v" * rng.randrange(0, 3_000), now, ttl_s=rng.uniform(0.1, 5))
        elif action < 0.9:
            cache.get(key, now)
        elif action < 0.98:
            cache.get_stale(key, now, max_stale_s=2.0)
        else:
            cache.purge(f"ep{rng.randrange(3)}:")
        assert 0 <= cache.bytes <= cache.max_bytes
        assert cache.bytes == sum(e.size for e in cache._entries.values())
    assert cache.evictions > 0 and cache.hits > 0


def test_a_value_that_could_never_fit_is_not_stored_and_its_old_value_is_dropped():
    cache = MemoryCache(max_bytes=1_000)
    cache.put("k", b"old", now=0.0, ttl_s=60)
    assert not cache.put("k", b"x" * 1_000, now=1.0, ttl_s=60)
    assert cache.get("k", now=1.0) is None  # the old answer is outdated: not served
    assert (cache.rejected, cache.bytes, cache.entries) == (1, 0, 0)
    assert not cache.put("k", b"v", now=1.0, ttl_s=0)  # no time to live, nothing stored


def test_replacing_a_value_counts_its_bytes_once():
    cache = MemoryCache(max_bytes=10_000)
    cache.put("k", b"a" * 100, now=0.0, ttl_s=1)
    cache.put("k", b"b" * 10, now=0.5, ttl_s=1)
    assert cache.bytes == cost("k", b"b" * 10) and cache.entries == 1
    entry = cache.get("k", now=1.2)  # the new ttl counts from the new put
    assert entry is not None and entry.value == b"b" * 10


def test_a_stale_entry_is_served_only_when_asked_for_and_only_within_its_window():
    cache = MemoryCache(max_bytes=10_000)
    cache.put("k", b"v", now=0.0, ttl_s=10)
    assert cache.get_stale("k", now=5.0, max_stale_s=30).value == b"v"  # fresh: a hit
    assert cache.get("k", now=15.0) is None
    stale = cache.get_stale("k", now=15.0, max_stale_s=30)
    assert stale is not None and not stale.fresh(15.0)
    assert cache.get_stale("k", now=40.0, max_stale_s=30) is None
    assert cache.get_stale("absent", now=0.0, max_stale_s=30) is None
    assert (cache.hits, cache.stale_hits, cache.misses) == (1, 1, 1)


def test_a_stale_entry_ages_out_of_the_lru_like_any_other():
    cache = MemoryCache(max_bytes=2 * cost("a", b"v"))
    cache.put("a", b"v", now=0.0, ttl_s=1)
    cache.put("b", b"v", now=0.0, ttl_s=100)
    cache.get("b", now=50.0)
    cache.put("c", b"v", now=50.0, ttl_s=100)
    assert "a" not in cache and cache.get_stale("a", now=50.0, max_stale_s=1e9) is None


def test_purge_by_endpoint_prefix_or_by_predicate():
    cache = MemoryCache(max_bytes=100_000)
    for key in ("embed:1", "embed:2", "embed-large:1", "chat:1"):
        cache.put(key, b"v", now=0.0, ttl_s=60)
    assert cache.purge("embed:") == 2
    assert "embed-large:1" in cache and "chat:1" in cache and "embed:1" not in cache
    assert cache.purge(lambda key: key.endswith(":1")) == 2
    assert (cache.entries, cache.bytes) == (0, 0)


def test_sweep_frees_expired_entries_beyond_the_stale_window():
    cache = MemoryCache(max_bytes=100_000)
    cache.put("short", b"v", now=0.0, ttl_s=1)
    cache.put("long", b"v", now=0.0, ttl_s=100)
    assert cache.sweep(now=5.0, keep_stale_s=10) == 0
    assert cache.sweep(now=11.0, keep_stale_s=10) == 1
    assert "long" in cache and "short" not in cache
    assert cache.stats()["entries"] == 1


def test_a_bound_must_be_positive():
    with pytest.raises(ValueError):
        MemoryCache(max_bytes=0)
