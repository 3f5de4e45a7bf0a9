"""Shadow agreement, per-version windows and admin keys: the pure pieces rollouts use."""

from __future__ import annotations

import numpy as np
import pytest

from surge.config import AdminKey, hash_admin_key
from surge.core.errors import SurgeError
from surge.routing.agreement import agreement
from surge.security.admin_keys import AdminAuth
from surge.serving.version_stats import VersionStats


def test_classifier_agreement_is_the_share_of_matching_labels():
    live = {"label": np.array([1, 2, 3, 4]), "probabilities": np.zeros((4, 10))}
    shadow = {"label": np.array([1, 2, 0, 4]), "probabilities": np.ones((4, 10))}
    assert agreement(live, shadow) == 0.75


def test_embedding_agreement_is_the_mean_cosine():
    a = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    b = np.array([[1.0, 0.0], [1.0, 0.0]], dtype=np.float32)
    assert agreement({"embedding": a}, {"embedding": b}) == pytest.approx(0.5)


def test_other_outputs_agree_within_tolerance():
    assert agreement({"y": np.array([1.0, 2.0])}, {"y": np.array([1.0, 2.5])}) == 0.5
    assert agreement({"y": np.array([1.0])}, {"z": np.array([1.0])}) == 0.0


def test_version_window_counts_since_reset_and_p99_ignores_errors():
    stats = VersionStats()
    for _ in range(99):
        stats.record(0.010, ok=True)
    stats.record(0.500, ok=True)
    stats.record(9.0, ok=False)
    window = stats.window()
    assert (window.requests, window.errors, window.latency_samples) == (101, 1, 100)
    assert 0.010 < window.p99_s <= 0.5
    stats.reset_window()
    assert stats.window().requests == 0 and stats.window().p99_s is None
    assert (stats.requests_total, stats.errors_total) == (101, 1)  # cumulative stays


def test_shadow_agreement_is_per_window_and_latency_delta_lifetime():
    stats = VersionStats()
    stats.record_shadow(1.0, 0.004)
    stats.record_shadow(0.5, 0.002)
    assert stats.shadow_agreement == 0.75
    assert stats.shadow_latency_delta_s == pytest.approx(0.003)
    stats.reset_window()
    assert stats.shadow_agreement is None and stats.shadow_compared_total == 2


def test_admin_keys_are_checked_against_their_hashes():
    auth = AdminAuth([AdminKey(name="alice", sha256=hash_admin_key("s3cret"))])
    assert auth.authenticate("Bearer s3cret", None) == "alice"
    assert auth.authenticate(None, "s3cret") == "alice"
    for authorization, key in ((None, None), ("Bearer nope", None), ("Basic s3cret", None)):
        with pytest.raises(SurgeError) as refused:
            auth.authenticate(authorization, key)
        assert refused.value.status == 401
    with pytest.raises(SurgeError) as disabled:
        AdminAuth([]).authenticate("Bearer s3cret", None)
    assert disabled.value.status == 403 and "SURGE_ADMIN_KEY" in disabled.value.message
