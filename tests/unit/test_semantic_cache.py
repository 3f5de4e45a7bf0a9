"""The semantic cache: a text near one already answered (cosine >= threshold) in the same
scope gets that answer; another scope never does; answers expire on time; entries,
bytes and scopes stay bounded; an embedding that fails or hangs is a miss, never an
error; a lookup's vector stores the answer without embedding again; a hit found off
the event loop is re-checked against the cache as it is when it lands.

The embedding is a fake: a table of 2-d (or random) vectors, so every cosine is known.
Time is an explicit `now`, except the embedding timeout, which is a short real one.
"""

from __future__ import annotations

import asyncio
import math
import threading

import numpy as np
import pytest

from surge.cache import semantic_cache
from surge.cache.memory import ENTRY_OVERHEAD_BYTES
from surge.cache.semantic_cache import SemanticCache

pytestmark = pytest.mark.timeout(30)


def at_cosine(c: float) -> list[float]:
    """A 2-d vector at cosine `c` from [1, 0]."""
    return [c, math.sqrt(1 - c * c)]


class FakeEmbed:
    """Texts to fixed vectors; counts its calls; can fail or hang on demand."""

    def __init__(self, table: dict[str, list[float]]) -> None:
        self.table = table
        self.calls: list[str] = []
        self.fail: BaseException | None = None
        self.hang = False

    async def __call__(self, texts: list[str]) -> np.ndarray:
        self.calls.extend(texts)
        if self.fail is not None:
            raise self.fail
        if self.hang:
            await asyncio.Event().wait()
        return np.array([self.table[t] for t in texts], dtype=np.float32) * 3.0  # not unit


TABLE = {
    "how do I reset my password": at_cosine(1.0),
    "how can I reset my password": at_cosine(0.95),
    "how do I delete my account": at_cosine(0.7),
}
Q, PARAPHRASE, OTHER = TABLE


def make(embed: FakeEmbed | None = None, **kw) -> tuple[SemanticCache, FakeEmbed]:
    embed = embed or FakeEmbed(dict(TABLE))
    settings = {"threshold": 0.9, "max_entries": 100, "max_bytes": 1 << 20, "ttl_s": 60.0}
    settings.update(kw)
    return SemanticCache(embed, clock=lambda: 0.0, **settings), embed


def run(coro):
    return asyncio.run(coro)


def test_a_paraphrase_hits_and_a_different_question_misses():
    async def scenario():
        cache, _ = make()
        assert await cache.add(Q, "acme", b"click 'forgot password'", now=0.0)
        found = await cache.lookup(PARAPHRASE, "acme", now=5.0)
        hit = found.hit
        assert hit is not None and hit.value == b"click 'forgot password'"
        assert hit.cosine == pytest.approx(0.95, abs=1e-6) and hit.age_s == 5.0
        assert (await cache.lookup(OTHER, "acme", now=5.0)).hit is None  # cosine 0.7
        assert (cache.lookups, cache.hits, cache.misses) == (2, 1, 1)
        # Stored again, by its text or by a lookup's vector, the same text replaces its
        # answer: one key per text.
        assert await cache.add(Q, "acme", b"use the reset link", now=6.0)
        cache.add_vector((await cache.lookup(Q, "acme", now=6.0)).vector, "acme", b"v3", 6.0)
        assert cache.entries == 1
        assert (await cache.lookup(PARAPHRASE, "acme", now=7.0)).hit.value == b"v3"


def test_the_threshold_decides_between_a_hit_and_a_miss():
    async def scenario():
        for threshold, hits in ((0.949, True), (0.951, False)):
            cache, _ = make(threshold=threshold)
            await cache.add(Q, None, b"a", now=0.0)
            assert ((await cache.lookup(PARAPHRASE, None, now=0.0)).hit is not None) == hits

    run(scenario())


def test_a_miss_hands_back_its_vector_so_storing_the_answer_embeds_nothing():
    async def scenario():
        cache, embed = make()
        first = await cache.lookup(Q, "acme", now=0.0)
        assert first.hit is None and first.vector is not None
        assert np.linalg.norm(first.vector) == pytest.approx(1.0)
        assert cache.add_vector(first.vector, "acme", b"answer", now=0.0, key="chat:k1")
        assert embed.calls == [Q]  # one embedding for the miss and the store
        hit = (await cache.lookup(PARAPHRASE, "acme", now=1.0)).hit
        assert hit is not None and hit.key == "chat:k1" and hit.value == b"answer"
        # The same vector stored again under its default key replaces the answer.
        cache.add_vector(first.vector, "acme", b"one", now=2.0)
        cache.add_vector(first.vector, "acme", b"two", now=3.0)
        assert cache.entries == 2  # chat:k1 and the vector's own key

    run(scenario())


def test_a_hit_never_crosses_scopes():
    async def scenario():
        cache, _ = make()
        await cache.add(Q, "acme", b"acme's answer", now=0.0)
        for scope in ("zenith", None, "acme "):
            assert (await cache.lookup(Q, scope, now=0.0)).hit is None
        await cache.add(OTHER, "zenith", b"zenith's answer", now=0.0)
        # zenith's own entry is far (0.7): still a miss, though acme has an exact match.
        assert (await cache.lookup(Q, "zenith", now=0.0)).hit is None
        assert (await cache.lookup(Q, "acme", now=0.0)).hit.value == b"acme's answer"
        assert cache.scopes == 2  # the lookups in unknown scopes created none

    run(scenario())


def test_answers_expire_after_the_ttl():
    async def scenario():
        cache, _ = make(ttl_s=10.0)
        await cache.add(Q, None, b"a", now=0.0)
        await cache.add(OTHER, None, b"b", now=5.0)
        assert (await cache.lookup(PARAPHRASE, None, now=9.999)).hit is not None
        assert (await cache.lookup(PARAPHRASE, None, now=10.0)).hit is None
        assert cache.expired == 1 and cache.entries == 1
        assert cache.sweep(now=15.0) == 1 and cache.entries == 0 and cache.scopes == 0
        assert cache.bytes == 0

    run(scenario())


def entry_size(key: str, value: bytes, dim: int = 2) -> int:
    return len(key) + len(value) + 2 * 4 * dim + ENTRY_OVERHEAD_BYTES


def test_bytes_stay_bounded_and_the_least_recently_used_answer_goes_first():
    async def scenario():
        value = b"x" * 500
        size = entry_size("k" * 32, value)
        cache, _ = make(max_bytes=2 * size + 10)
        await cache.add(Q, None, value, now=0.0)
        await cache.add(OTHER, None, value, now=1.0)
        assert (await cache.lookup(Q, None, now=2.0)).hit is not None  # Q is now recent
        cache.add_vector(np.array([0.0, 1.0]), None, value, now=3.0, key="third")
        assert cache.bytes <= cache.max_bytes and cache.evictions == 1
        assert (await cache.lookup(Q, None, now=4.0)).hit is not None
        assert (await cache.lookup(OTHER, None, now=4.0)).hit is None  # evicted
        # A value that could never fit is refused, and the older answer under its key
        # is gone: it was outdated by the new one.
        assert not cache.add_vector(np.array([1.0, 0.0]), None, b"y" * size * 3, 5.0, "third")
        assert cache.rejected == 1 and cache.entries == 1

    run(scenario())


def test_entries_stay_bounded_across_scopes():
    cache, _ = make(max_entries=3)
    for i in range(10):
        angle = i * 0.3
        vector = np.array([math.cos(angle), math.sin(angle)])
        assert cache.add_vector(vector, f"t{i % 4}", b"v", now=float(i), key=f"k{i}")
        assert cache.entries <= 3
    assert cache.evictions == 7
    assert cache.lookup_vector(np.array([math.cos(2.7), math.sin(2.7)]), "t1", now=10.0)


def test_scopes_are_bounded_and_the_least_recently_used_scope_goes_whole():
    async def scenario():
        cache, _ = make(max_scopes=2)
        await cache.add(Q, "a", b"a", now=0.0)
        await cache.add(OTHER, "a", b"a2", now=0.0)
        await cache.add(Q, "b", b"b", now=1.0)
        assert (await cache.lookup(Q, "a", now=2.0)).hit is not None  # a is now recent
        await cache.add(Q, "c", b"c", now=3.0)
        assert cache.scopes == 2 and cache.scope_evictions == 1 and cache.evictions == 1
        assert (await cache.lookup(Q, "b", now=4.0)).hit is None
        assert (await cache.lookup(Q, "a", now=4.0)).hit.value == b"a"
        assert (await cache.lookup(Q, "c", now=4.0)).hit.value == b"c"
        # A flood of tenants costs at most max_scopes scopes, and the books balance.
        for i in range(50):
            await cache.add(Q, f"flood{i}", b"f", now=5.0)
        assert cache.scopes == 2 and cache.entries == 2
        assert cache.bytes == 2 * entry_size("k" * 32, b"f")

    run(scenario())


@pytest.mark.parametrize(
    "trouble",
    ["raises", "hangs", "nan", "zero", "wrong size", "two rows"],
)
def test_an_embedding_that_fails_or_hangs_is_a_miss_never_an_error(trouble):
    async def scenario():
        embed = FakeEmbed(dict(TABLE))
        cache, _ = make(embed, embed_timeout_s=0.05)
        await cache.add(Q, None, b"a", now=0.0)
        if trouble == "raises":
            embed.fail = ConnectionError("embedding endpoint down")
        elif trouble == "hangs":
            embed.hang = True
        else:
            embed.table[PARAPHRASE] = {
                "nan": [math.nan, 1.0],
                "zero": [0.0, 0.0],
                "wrong size": [1.0, 0.0, 0.0],
                "two rows": [[1.0, 0.0], [1.0, 0.0]],
            }[trouble]
        found = await cache.lookup(PARAPHRASE, None, now=1.0)
        assert found.hit is None and found.vector is None
        assert cache.embed_failures == 1 and cache.misses == 1
        assert not cache.add_vector(found.vector, None, b"b", now=1.0)  # nothing to store
        assert not await cache.add(PARAPHRASE, None, b"b", now=1.0)
        assert cache.embed_failures == 2 and cache.entries == 1

    run(scenario())


def test_cancelling_a_lookup_still_cancels_it():
    async def scenario():
        embed = FakeEmbed(dict(TABLE))
        embed.hang = True
        cache, _ = make(embed, embed_timeout_s=30.0)
        task = asyncio.create_task(cache.lookup(Q, None))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert cache.embed_failures == 0

    run(scenario())


def test_purge_drops_everything_or_one_endpoints_keys():
    cache, _ = make()
    for i, key in enumerate(("chat:a", "chat:b", "classify:a")):
        cache.add_vector(np.array(at_cosine(0.1 * i)), "t", b"v", now=0.0, key=key)
    assert cache.purge("chat:") == 2 and cache.entries == 1
    assert cache.purge() == 1 and cache.entries == 0 and cache.scopes == 0 and cache.bytes == 0


def test_a_scope_grows_and_shrinks_and_every_answer_stays_findable():
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((300, 16)).astype(np.float32)
    cache, _ = make(threshold=0.999, max_entries=1000)
    for i, v in enumerate(vectors):
        cache.add_vector(v, "t", str(i).encode(), now=0.0, key=f"k{i}.")
    for i in range(0, 300, 7):
        assert cache.lookup_vector(vectors[i], "t", now=1.0).key == f"k{i}."
    assert cache.purge("k1") == 111  # k1., k10. to k19., k100. to k199.
    for i in range(2, 300, 11):
        hit = cache.lookup_vector(vectors[i], "t", now=1.0)
        assert (hit is None) == str(i).startswith("1")
    for i in range(300):
        if i % 10:
            cache.purge(f"k{i}.")
    survivors = [i for i in range(0, 300, 10) if not str(i).startswith("1")]
    assert cache.entries == len(survivors)
    for i in survivors:
        assert cache.lookup_vector(vectors[i], "t", now=1.0).value == str(i).encode()


def test_a_large_scope_is_searched_off_the_loop_with_the_same_answers(monkeypatch):
    async def scenario():
        rng = np.random.default_rng(1)
        vectors = rng.standard_normal((50, 8)).astype(np.float32)
        table = {f"text {i}": list(map(float, v)) for i, v in enumerate(vectors)}
        cache, _ = make(FakeEmbed(table), threshold=0.999, thread_cutover_entries=10)
        for i in range(50):
            await cache.add(f"text {i}", "t", str(i).encode(), now=0.0)
        loop_thread = threading.get_ident()
        threads = []
        real = semantic_cache._search

        def spy(*args):
            threads.append(threading.get_ident())
            return real(*args)

        monkeypatch.setattr(semantic_cache, "_search", spy)
        for i in range(0, 50, 5):
            hit = (await cache.lookup(f"text {i}", "t", now=1.0)).hit
            assert hit is not None and hit.value == str(i).encode()
        assert threads and loop_thread not in threads

    run(scenario())


def test_a_hit_found_off_the_loop_is_rechecked_against_the_cache_as_it_is_now(monkeypatch):
    """The loop replaces the matched entry's answer with one for a different text while
    the search runs in a thread: the stale match is a miss, not the new answer."""

    async def scenario():
        cache, _ = make(thread_cutover_entries=0)
        await cache.add(Q, "t", b"reset answer", now=0.0, key="chat:k")
        searched, release = threading.Event(), threading.Event()
        real = semantic_cache._search

        def paused(*args):
            found = real(*args)
            searched.set()
            release.wait(10)
            return found

        monkeypatch.setattr(semantic_cache, "_search", paused)
        task = asyncio.create_task(cache.lookup(PARAPHRASE, "t", now=1.0))
        await asyncio.to_thread(searched.wait, 10)
        cache.add_vector(np.array([0.0, 1.0]), "t", b"another answer", now=1.0, key="chat:k")
        release.set()
        found = await task
        assert found.hit is None and cache.misses == 1
        monkeypatch.setattr(semantic_cache, "_search", real)
        hit = (await cache.lookup(PARAPHRASE, "t", now=1.0)).hit
        assert hit is None  # the new entry is far from the paraphrase: still a miss

    run(scenario())


def test_bad_settings_are_refused():
    embed = FakeEmbed({})
    for bad in (
        {"threshold": 1.5},
        {"max_entries": 0},
        {"max_bytes": 0},
        {"ttl_s": 0.0},
        {"max_scopes": 0},
        {"embed_timeout_s": 0.0},
    ):
        with pytest.raises(ValueError):
            make(embed, **bad)
