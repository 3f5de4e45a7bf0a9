"""The semantic index: a lookup finds the most similar text's key in the same scope
when its cosine reaches the threshold, exactly as a brute-force reference does; it
holds at most `max_entries`, dropping the oldest; entries leave by key, by endpoint
prefix and by age."""

from __future__ import annotations

import math

import numpy as np
import pytest

from surge.cache.semantic import SemanticIndex


def at_cosine(c: float) -> np.ndarray:
    """A 2-d vector at cosine `c` from [1, 0]."""
    return np.array([c, math.sqrt(1 - c * c)], dtype=np.float32)


def test_a_similar_input_hits_and_a_dissimilar_one_misses():
    index = SemanticIndex(dim=2, threshold=0.9, max_entries=10)
    index.add(np.array([3.0, 0.0]), "chat:k1", None, now=0.0)  # any length: normalized
    key, cosine = index.lookup(at_cosine(0.95) * 7, None)
    assert key == "chat:k1" and cosine == pytest.approx(0.95, abs=1e-6)
    assert index.lookup(at_cosine(0.85), None) is None
    hit = index.lookup(np.array([1.0, 0.0]), None)
    assert hit is not None and hit[1] == pytest.approx(1.0)


def test_the_threshold_is_inclusive_and_checked_against_the_best_match():
    index = SemanticIndex(dim=2, threshold=0.8, max_entries=10)
    index.add(at_cosine(1.0), "far", None, now=0.0)
    index.add(at_cosine(0.6), "near", None, now=0.0)  # cosine 0.6 to "far"
    query = at_cosine(0.9)  # cos(query, far) = 0.9; cos(query, near) ~ 0.88
    assert index.lookup(query, None)[0] == "far"
    strict = SemanticIndex(dim=2, threshold=0.95, max_entries=10)
    strict.add(at_cosine(1.0), "far", None, now=0.0)
    assert strict.lookup(query, None) is None


def test_a_hit_never_crosses_scopes():
    index = SemanticIndex(dim=2, threshold=0.5, max_entries=10)
    index.add(at_cosine(1.0), "acme-key", "acme", now=0.0)
    index.add(at_cosine(0.6), "zenith-key", "zenith", now=0.0)
    assert index.lookup(at_cosine(1.0), "zenith")[0] == "zenith-key"  # not acme's closer one
    assert index.lookup(at_cosine(1.0), "acme")[0] == "acme-key"
    assert index.lookup(at_cosine(1.0), None) is None  # shared scope: nothing there
    assert index.lookup(at_cosine(1.0), "other") is None


def test_it_agrees_with_a_brute_force_reference_on_random_embeddings():
    rng = np.random.default_rng(0)
    dim, n = 384, 2_000
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    scopes = [f"t{i % 3}" for i in range(n)]
    index = SemanticIndex(dim=dim, threshold=-1.0, max_entries=n)
    for i in range(n):
        index.add(vectors[i], f"k{i}", scopes[i], now=0.0)
    units = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    for _ in range(50):
        query = rng.standard_normal(dim).astype(np.float32)
        cosines = units @ (query / np.linalg.norm(query))
        mine = [i for i in range(n) if scopes[i] == "t1"]
        best = mine[int(np.argmax(cosines[mine]))]
        key, cosine = index.lookup(query, "t1")
        assert key == f"k{best}" and cosine == pytest.approx(cosines[best], abs=1e-5)


def test_a_full_index_drops_its_oldest_entry_to_add_one():
    index = SemanticIndex(dim=2, threshold=0.99, max_entries=3)
    angles = [0.0, 0.5, 1.0, 1.5]
    for i, a in enumerate(angles):
        index.add(np.array([math.cos(a), math.sin(a)]), f"k{i}", None, now=float(i))
    assert len(index) == 3 and index.evictions == 1
    assert "k0" not in index and index.lookup(np.array([1.0, 0.0]), None) is None
    assert index.lookup(np.array([math.cos(1.5), math.sin(1.5)]), None)[0] == "k3"
    index.add(np.array([0.0, -1.0]), "k4", None, now=4.0)
    assert "k1" not in index and len(index) == 3  # the next oldest


def test_adding_a_key_again_replaces_its_vector():
    index = SemanticIndex(dim=2, threshold=0.99, max_entries=2)
    index.add(np.array([1.0, 0.0]), "k", None, now=0.0)
    index.add(np.array([0.0, 1.0]), "k", None, now=1.0)
    assert len(index) == 1 and index.lookup(np.array([1.0, 0.0]), None) is None
    assert index.lookup(np.array([0.0, 1.0]), None)[0] == "k"


def test_entries_leave_by_key_by_endpoint_prefix_and_by_age():
    index = SemanticIndex(dim=2, threshold=-1.0, max_entries=10)
    for i, key in enumerate(("chat:a", "chat:b", "chat-big:a", "classify:a")):
        index.add(at_cosine(0.1 * i), key, None, now=float(i))
    assert index.remove("chat:a") and not index.remove("chat:a")
    assert index.purge("chat:") == 1 and "chat-big:a" in index
    assert index.expire(before=3.0) == 1  # chat-big:a, added at 2
    assert len(index) == 1
    # Freed slots are never answers, even at the lowest threshold.
    assert index.lookup(at_cosine(0.0), None)[0] == "classify:a"
    index.remove("classify:a")
    assert index.lookup(at_cosine(0.0), None) is None
    index.add(at_cosine(0.0), "again", "acme", now=9.0)  # a freed slot is reused
    assert index.lookup(at_cosine(0.0), "acme")[0] == "again"


def test_vectors_without_a_direction_or_of_the_wrong_size_are_refused():
    index = SemanticIndex(dim=3, threshold=0.9, max_entries=4)
    for bad in (np.zeros(3), np.array([1.0, np.nan, 0.0]), np.ones(4)):
        with pytest.raises(ValueError):
            index.add(bad, "k", None, now=0.0)
        with pytest.raises(ValueError):
            index.lookup(bad, None)
    with pytest.raises(ValueError):
        SemanticIndex(dim=3, threshold=1.5, max_entries=4)
