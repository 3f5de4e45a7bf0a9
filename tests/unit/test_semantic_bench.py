"""The semantic cache benchmark's arithmetic, on tiny hand-made sets (no model): precision
counts labelled paraphrases among the pairs at or above the threshold, recall the share
of paraphrases caught, hit rate the share of pairs hit; the recommended threshold is
the lowest reaching the target precision, and a sweep where none does says so. The
shipped paraphrase set is well formed."""

from __future__ import annotations

import pytest

from benchmarks.semantic_cache import (
    DATA,
    load_pairs,
    pair_metrics,
    pick_threshold,
    replay_metrics,
    sweep,
    wilson_lower,
)

# cosine, label: four paraphrases, four not, one hard negative at the very top
COSINES = [0.99, 0.95, 0.93, 0.91, 0.88, 0.86, 0.84, 0.70]
LABELS = [0, 1, 1, 1, 1, 0, 0, 0]


def test_precision_recall_and_hit_rate_at_one_threshold():
    m = pair_metrics(COSINES, LABELS, 0.90)
    assert (m["hits"], m["right"], m["wrong"]) == (4, 3, 1)
    assert m["precision"] == 0.75 and m["recall"] == 0.75 and m["hit_rate"] == 0.5
    at_edge = pair_metrics(COSINES, LABELS, 0.93)  # inclusive: 0.93 itself is a hit
    assert at_edge["hits"] == 3 and at_edge["precision"] == pytest.approx(2 / 3)


def test_no_hits_has_no_precision_rather_than_a_perfect_one():
    m = pair_metrics(COSINES, LABELS, 0.995)
    assert m["hits"] == 0 and m["precision"] is None and m["precision_low95"] is None
    assert m["recall"] == 0.0 and m["hit_rate"] == 0.0


def test_the_lowest_threshold_reaching_the_target_is_picked():
    # Precision is not monotone: 0.85 (4 of 6) < 0.87 (4 of 5) > 0.90 (3 of 4).
    rows = sweep(COSINES, LABELS, thresholds=(0.85, 0.87, 0.90, 0.92, 0.94, 0.96))
    assert [r["precision"] for r in rows[:3]] == [pytest.approx(4 / 6), 0.8, 0.75]
    pick = pick_threshold(rows, target=0.75)
    assert pick["met"] and pick["best"]["threshold"] == 0.87
    pick = pick_threshold(rows, target=0.8)
    assert pick["met"] and pick["best"]["threshold"] == 0.87 and pick["best"]["recall"] == 1.0


def test_a_sweep_where_no_threshold_reaches_the_target_says_so_and_names_the_most_precise():
    rows = sweep(COSINES, LABELS, thresholds=(0.80, 0.90, 0.96, 0.995))
    pick = pick_threshold(rows, target=0.95)
    assert not pick["met"]
    assert pick["best"]["threshold"] == 0.90  # 75 %; 0.96 has 0 %, 0.995 no hits at all
    assert pick_threshold(sweep([0.5], [1], thresholds=(0.9,)))["best"] is None


def test_the_wilson_bound_is_lower_for_fewer_hits():
    assert wilson_lower(0, 0) is None
    assert wilson_lower(10, 10) == pytest.approx(0.7225, abs=1e-3)
    assert wilson_lower(100, 100) == pytest.approx(0.963, abs=1e-3)
    assert wilson_lower(5, 10) < wilson_lower(50, 100) < 0.5


def test_replay_counts_hits_and_right_answers_per_query():
    matches = [(0.97, False), (0.93, True), (0.91, True), (0.80, True)]
    m = replay_metrics(matches, 0.9)
    assert (m["hits"], m["right"], m["hit_rate"]) == (3, 2, 0.75)
    assert m["precision"] == pytest.approx(2 / 3)
    assert replay_metrics(matches, 0.99)["precision"] is None


def test_pairs_load_from_tsv_and_a_malformed_line_is_refused(tmp_path):
    good = tmp_path / "pairs.tsv"
    good.write_text("text_a\ttext_b\tlabel\nHow?\tHow so?\t1\n\nA cat\tA dog\t0\n")
    assert [tuple(p) for p in load_pairs(good)] == [("How?", "How so?", 1), ("A cat", "A dog", 0)]
    bad = tmp_path / "bad.tsv"
    bad.write_text("one\ttwo\tmaybe\n")
    with pytest.raises(ValueError, match=r"bad\.tsv:1"):
        load_pairs(bad)


def test_the_shipped_set_is_large_balanced_and_free_of_duplicates():
    pairs = load_pairs(DATA)
    assert len(pairs) >= 150
    positives = sum(p.label for p in pairs)
    assert 0.3 < positives / len(pairs) < 0.7
    assert len({(p.text_a, p.text_b) for p in pairs}) == len(pairs)
    assert all(p.text_a.strip() and p.text_b.strip() and p.text_a != p.text_b for p in pairs)
