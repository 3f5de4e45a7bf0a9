"""Confidence cascades per row: confidence, judging a tier, reassembling the answer, and
a real two-model cascade on the digits data set."""

from __future__ import annotations

import numpy as np
import pytest

from surge.routing.cascade import (
    CascadePolicy,
    CascadeTier,
    confidence,
    judge,
    merge,
)

PROBS = np.array(
    [
        [0.70, 0.20, 0.10],
        [0.40, 0.35, 0.25],
        [0.05, 0.90, 0.05],
        [0.34, 0.33, 0.33],
    ],
    dtype=np.float32,
)

TWO_TIERS = CascadePolicy((CascadeTier("small", 0.6), CascadeTier("large", 0.8)))

# -- confidence ---------------------------------------------------------------------------


def test_max_probability_is_the_top_class_per_row():
    conf = confidence({"probabilities": PROBS}, "max_probability")
    assert conf.dtype == np.float64
    np.testing.assert_allclose(conf, [0.70, 0.40, 0.90, 0.34], rtol=1e-6)


def test_margin_is_top_one_minus_top_two_per_row():
    conf = confidence({"probabilities": PROBS}, "margin")
    np.testing.assert_allclose(conf, [0.50, 0.05, 0.85, 0.01], atol=1e-6)
    # ties at the top leave no margin, whatever their column
    tied = np.array([[0.1, 0.45, 0.45], [0.5, 0.0, 0.5]])
    np.testing.assert_allclose(confidence({"probabilities": tied}, "margin"), [0.0, 0.0])


def test_confidence_of_no_rows_is_empty():
    empty = {"probabilities": np.empty((0, 3))}
    assert confidence(empty, "max_probability").shape == (0,)
    assert confidence(empty, "margin").shape == (0,)


def test_unknown_methods_and_missing_tensors_say_what_to_fix():
    with pytest.raises(ValueError, match=r"unknown confidence method 'embedding_norm'.*margin"):
        confidence({"probabilities": PROBS}, "embedding_norm")
    with pytest.raises(ValueError, match=r"needs an output tensor 'probabilities'.*\['label'\]"):
        confidence({"label": np.array([1, 2])}, "max_probability")
    with pytest.raises(ValueError, match=r"\(rows, classes\)"):
        confidence({"probabilities": np.array([0.2, 0.9])}, "max_probability")
    with pytest.raises(ValueError, match="at least 2 classes"):
        confidence({"probabilities": np.array([[1.0], [1.0]])}, "margin")


# -- policy -------------------------------------------------------------------------------


def test_policy_is_validated():
    with pytest.raises(ValueError, match="at least one tier"):
        CascadePolicy(())
    for threshold in (-0.1, 1.01, float("nan")):
        with pytest.raises(ValueError, match=r"threshold must lie in \[0, 1\]"):
            CascadePolicy((CascadeTier("a", 0.5), CascadeTier("b", threshold)))
    with pytest.raises(ValueError, match="unknown confidence method"):
        CascadePolicy((CascadeTier("a", 0.5, confidence="entropy"),))
    with pytest.raises(ValueError, match="no target"):
        CascadePolicy((CascadeTier("", 0.5),))
    edges = CascadePolicy([CascadeTier("a", 0.0), CascadeTier("b", 1.0)])  # type: ignore[arg-type]
    assert isinstance(edges.tiers, tuple)


# -- judge --------------------------------------------------------------------------------


def test_a_middle_tier_accepts_the_sure_rows_and_escalates_the_rest():
    out = judge(TWO_TIERS, 0, {"probabilities": PROBS})
    assert out.tier == 0
    assert out.accepted.tolist() == [True, False, True, False]
    np.testing.assert_array_equal(out.escalate_rows, [1, 3])
    assert out.review_rows.size == 0


def test_the_threshold_itself_is_accepted():
    policy = CascadePolicy((CascadeTier("a", 0.5), CascadeTier("b", 0.5)))
    out = judge(policy, 0, {"probabilities": np.array([[0.5, 0.5], [0.49, 0.51]])})
    assert out.accepted.tolist() == [True, True]


def test_the_last_tier_flags_unsure_rows_for_review():
    out = judge(TWO_TIERS, 1, {"probabilities": PROBS})
    assert out.accepted.tolist() == [False, False, True, False]
    np.testing.assert_array_equal(out.review_rows, [0, 1, 3])
    assert out.escalate_rows.size == 0  # there is no tier above the last


def test_with_review_off_the_last_tier_accepts_everything():
    policy = CascadePolicy(TWO_TIERS.tiers, review=False)
    out = judge(policy, 1, {"probabilities": PROBS})
    assert out.accepted.all() and out.accepted.dtype == bool
    assert out.escalate_rows.size == 0 and out.review_rows.size == 0
    np.testing.assert_allclose(out.confidence, [0.70, 0.40, 0.90, 0.34], rtol=1e-6)


def test_a_row_with_broken_probabilities_escalates():
    probs = np.array([[np.nan, 0.5], [0.9, 0.1]])
    out = judge(TWO_TIERS, 0, {"probabilities": probs})
    np.testing.assert_array_equal(out.escalate_rows, [0])


def test_a_tier_outside_the_policy_is_refused():
    with pytest.raises(ValueError, match="tier 2 is outside"):
        judge(TWO_TIERS, 2, {"probabilities": PROBS})


def test_a_burst_mode_that_allows_one_tier_answers_the_unsure_rows_degraded_not_for_review():
    out = judge(TWO_TIERS, 0, {"probabilities": PROBS}, allowed_tiers=1)
    np.testing.assert_array_equal(out.degraded_rows, [1, 3])
    assert len(out.escalate_rows) == 0
    assert len(out.review_rows) == 0
    assert out.accepted.all()
    # With every tier allowed, the same rows escalate as usual.
    full = judge(TWO_TIERS, 0, {"probabilities": PROBS}, allowed_tiers=2)
    np.testing.assert_array_equal(full.escalate_rows, [1, 3])
    assert len(full.degraded_rows) == 0


# -- merge --------------------------------------------------------------------------------


def test_merge_puts_rows_back_in_order_with_later_tiers_overwriting():
    tier0 = {
        "label": np.array([10, 11, 12, 13, 14], dtype=np.int64),
        "probabilities": np.full((5, 2), 0.5, dtype=np.float32),
    }
    tier1_rows = np.array([3, 1])  # escalated rows, in whatever order tier 0 left them
    tier1 = {
        "label": np.array([23, 21], dtype=np.int64),
        "probabilities": np.array([[0.1, 0.9], [0.8, 0.2]], dtype=np.float32),
    }
    tier2_rows = np.array([3])
    tier2 = {
        "label": np.array([33], dtype=np.int64),
        "probabilities": np.array([[0.0, 1.0]], dtype=np.float32),
    }
    merged = merge(5, [(np.arange(5), tier0), (tier1_rows, tier1), (tier2_rows, tier2)])
    assert merged["label"].tolist() == [10, 21, 12, 33, 14]
    assert merged["label"].dtype == np.int64
    assert merged["probabilities"].dtype == np.float32
    assert merged["probabilities"].shape == (5, 2)
    np.testing.assert_allclose(merged["probabilities"][1], [0.8, 0.2])
    np.testing.assert_allclose(merged["probabilities"][3], [0.0, 1.0])
    np.testing.assert_allclose(merged["probabilities"][0], [0.5, 0.5])


def test_merge_keeps_bytes_tensors_and_promotes_mixed_dtypes():
    merged = merge(
        2,
        [
            (np.array([0, 1]), {"text": np.array([b"a", b"b"], dtype=object),
                                "score": np.array([0.5, 0.5], dtype=np.float32)}),
            (np.array([1]), {"text": np.array([b"B"], dtype=object),
                             "score": np.array([0.25], dtype=np.float64)}),
        ],
    )  # fmt: skip
    assert merged["text"].dtype == object and merged["text"].tolist() == [b"a", b"B"]
    assert merged["score"].dtype == np.float64 and merged["score"].tolist() == [0.5, 0.25]


def test_merge_refuses_answers_that_do_not_fit_together():
    rows = np.arange(2)
    ok = {"label": np.array([1, 2])}
    with pytest.raises(ValueError, match=r"no tier answered rows \[2\]"):
        merge(3, [(rows, ok)])
    with pytest.raises(ValueError, match="returned tensors"):
        merge(2, [(rows, ok), (np.array([0]), {"other": np.array([1])})])
    with pytest.raises(ValueError, match="has 2 rows for 1 row indices"):
        merge(2, [(rows, ok), (np.array([0]), ok)])
    with pytest.raises(ValueError, match=r"lie in \[0, 2\)"):
        merge(2, [(np.array([0, 2]), ok)])
    with pytest.raises(ValueError, match="repeat"):
        merge(2, [(np.array([1, 1]), ok)])
    with pytest.raises(ValueError, match="per-row shapes"):
        merge(2, [(rows, {"p": np.zeros((2, 3))}), (np.array([0]), {"p": np.zeros((1, 4))})])
    with pytest.raises(ValueError, match="at least one tier"):
        merge(2, [])


# -- a real cascade -------------------------------------------------------------------------


def run_cascade(policy: CascadePolicy, models: list, x: np.ndarray) -> tuple[dict, int]:
    """Drive the cascade as the serving layer would: each tier sees only escalated rows."""
    rows = np.arange(len(x))
    answered: list[tuple[np.ndarray, dict]] = []
    escalated = 0
    for tier, model in enumerate(models):
        outputs = {"label": model.predict(x[rows]), "probabilities": model.predict_proba(x[rows])}
        answered.append((rows, outputs))
        outcome = judge(policy, tier, outputs)
        rows = rows[outcome.escalate_rows]
        if tier == 0:
            escalated = len(rows)
        if not len(rows):
            break
    return merge(len(x), answered), escalated


def test_a_logistic_regression_then_mlp_cascade_matches_the_mlp_on_digits():
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier

    x, y = load_digits(return_X_y=True)
    x = x.astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.25, random_state=0, stratify=y
    )
    cheap = LogisticRegression(max_iter=1000).fit(x_train, y_train)  # lbfgs needs ~160 here
    costly = MLPClassifier(hidden_layer_sizes=(64,), max_iter=1000, random_state=0)
    costly.fit(x_train, y_train)

    policy = CascadePolicy((CascadeTier("logreg", 0.9), CascadeTier("mlp", 0.0)), review=False)
    answer, escalated = run_cascade(policy, [cheap, costly], x_test)

    assert answer["label"].shape == y_test.shape
    assert answer["probabilities"].shape == (len(y_test), 10)
    cascade_acc = float(np.mean(answer["label"] == y_test))
    mlp_acc = float(np.mean(costly.predict(x_test) == y_test))
    assert cascade_acc >= mlp_acc - 0.01, (cascade_acc, mlp_acc)
    assert escalated < len(y_test) / 2, (escalated, len(y_test))
