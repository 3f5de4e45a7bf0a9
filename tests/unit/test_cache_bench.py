"""The cache benchmark's pure parts: its workload (distinct sentences, the Zipf sampler,
the hit rate an unbounded cache would reach), its wrk scripts, the py-spy summary and
the report's tables. The load itself is `python -m benchmarks.cache`."""

from __future__ import annotations

import itertools
import math
from collections import Counter
from pathlib import Path

import pytest

from benchmarks.cache import (
    OTHER_PART,
    ZipfSampler,
    cache_results,
    distinct_sentences,
    frame_name,
    hit_share,
    parse_collapsed,
    part_of,
    profile_markdown,
    rounds_markdown,
    sequence_script,
    summarise_profile,
    unbounded_hit_rate,
    unique_script,
)


def test_sentences_are_distinct_and_the_same_every_run() -> None:
    sentences = distinct_sentences(10_000, seed=16)
    assert len(set(sentences)) == 10_000
    assert sentences == distinct_sentences(10_000, seed=16)
    assert sentences != distinct_sentences(10_000, seed=17)
    assert all(s[0].isupper() and s.endswith(".") and "\n" not in s for s in sentences)


def test_asking_for_more_sentences_than_the_word_lists_make_is_refused() -> None:
    with pytest.raises(ValueError, match="sentences"):
        distinct_sentences(10**9)


def test_zipf_probabilities_follow_the_power_law() -> None:
    sampler = ZipfSampler(10_000, 1.1, seed=0)
    p = sampler.probabilities
    assert math.isclose(sum(p), 1.0, rel_tol=1e-12)
    assert math.isclose(p[0] / p[1], 2**1.1, rel_tol=1e-12)
    assert math.isclose(p[9] / p[99], 10**1.1, rel_tol=1e-12)
    assert all(a > b for a, b in itertools.pairwise(p))


def test_zipf_draws_match_their_probabilities() -> None:
    sampler = ZipfSampler(10_000, 1.1, seed=1)
    n = 200_000
    draws = sampler.sample(n)
    assert min(draws) >= 0 and max(draws) < 10_000
    counts = Counter(draws)
    for rank in (0, 1, 4, 49):  # each within 5 standard deviations of its expectation
        expected = n * sampler.probabilities[rank]
        sd = math.sqrt(expected * (1 - sampler.probabilities[rank]))
        assert abs(counts[rank] - expected) < 5 * sd, rank
    head = sum(counts[k] for k in range(100)) / n
    assert head == pytest.approx(sum(sampler.probabilities[:100]), abs=0.01)


def test_zipf_draws_are_reproducible_from_the_seed() -> None:
    assert ZipfSampler(100, 1.1, seed=3).sample(50) == ZipfSampler(100, 1.1, seed=3).sample(50)
    assert ZipfSampler(100, 1.1, seed=3).sample(50) != ZipfSampler(100, 1.1, seed=4).sample(50)


def test_a_single_rank_is_always_drawn() -> None:
    assert ZipfSampler(1, 1.1, seed=0).sample(10) == [0] * 10
    with pytest.raises(ValueError):
        ZipfSampler(0, 1.1, seed=0)


def test_unbounded_hit_rate_counts_draws_seen_before_in_the_sequence() -> None:
    sequence = [1, 2, 1, 3, 2, 4, 1]
    assert unbounded_hit_rate(sequence, 0, 7) == pytest.approx(3 / 7)  # 1, 2, 1 repeat
    # From index 3 on, 1 and 2 were already sent in the warm-up: 2 and 1 hit, 3 and 4 miss.
    assert unbounded_hit_rate(sequence, 3, 7) == pytest.approx(2 / 4)
    assert unbounded_hit_rate(sequence, 3, 100) == pytest.approx(2 / 4)  # clipped
    assert unbounded_hit_rate(sequence, 5, 5) == 0.0


def test_the_hit_rate_of_a_zipf_stream_grows_with_the_warm_up() -> None:
    sequence = ZipfSampler(10_000, 1.1, seed=2).sample(60_000)
    cold = unbounded_hit_rate(sequence, 0, 10_000)
    warm = unbounded_hit_rate(sequence, 50_000, 60_000)
    assert 0.5 < cold < warm < 1.0


def test_the_server_s_cache_counters_give_the_hit_share() -> None:
    delta = {
        'surge_cache_requests_total{endpoint="embed",result="hit"}': 80.0,
        'surge_cache_requests_total{endpoint="embed",result="miss"}': 15.0,
        'surge_cache_requests_total{endpoint="embed",result="coalesced"}': 5.0,
        'surge_cache_requests_total{endpoint="embed_plain",result="hit"}': 7.0,
        'surge_batch_size_rows_count{endpoint="embed"}': 3.0,
    }
    results = cache_results(delta, "embed")
    assert results == {"hit": 80.0, "miss": 15.0, "coalesced": 5.0}
    assert hit_share(results) == 0.8
    assert hit_share(cache_results(delta, "nothing")) is None


def test_the_sequence_script_reads_its_files_and_goes_on_from_start() -> None:
    lua = sequence_script(Path("/tmp/b.txt"), Path("/tmp/o.txt"), start=120, cap=999)
    assert "io.lines([==[/tmp/b.txt]==])" in lua and "io.lines([==[/tmp/o.txt]==])" in lua
    assert "local start, sent, count, cap = 120, 0, 0, 999" in lua
    assert "% #order" in lua and "WRKJSON " in lua  # wraps round; prints wrk's JSON line


def test_the_unique_script_salts_every_body_and_keeps_floats_exact() -> None:
    lua = unique_script(7, cap=100)
    assert "local salt, sent, count, cap = 7, 0, 0, 100" in lua
    assert '"data": [%d.5, %d.5' in lua
    with pytest.raises(ValueError):
        unique_script(2**21, cap=100)


PROFILE = """\
<module> (surge/__main__.py:3);serve (uvicorn/server.py:68);infer (surge/api/v2.py:40) 50
<module> (surge/__main__.py:3);infer (surge/api/v2.py:40);run (/x/src/surge/serving/response_cache.py:117);row_keys (/x/src/surge/cache/keys.py:190) 20
<module> (surge/__main__.py:3);infer (surge/api/v2.py:40);run (/x/src/surge/serving/response_cache.py:117);_store (/x/src/surge/serving/response_cache.py:280);put (surge/cache/memory.py:90) 10
<module> (surge/__main__.py:3);infer (surge/api/v2.py:40);run (/x/src/surge/serving/response_cache.py:117);infer (/x/src/surge/serving/deployment.py:300);submit (surge/serving/batcher.py:50) 15
_worker (concurrent/futures/thread.py:83);put_many (surge/cache/redis_cache.py:170);execute (redis/asyncio/client.py:600) 5
<module> (surge/__main__.py:3);run (surge/serving/response_cache.py:117);SingleFlight.run (surge/cache/coalesce.py:99);ensure_future (asyncio/tasks.py:600) 4
"""  # noqa: E501


def test_collapsed_stacks_parse_into_frames_and_counts() -> None:
    stacks = parse_collapsed(PROFILE + "garbage line without a count\n")
    assert len(stacks) == 6
    assert stacks[0] == (
        ["<module> (surge/__main__.py:3)", "serve (uvicorn/server.py:68)",
         "infer (surge/api/v2.py:40)"], 50,
    )  # fmt: skip
    assert frame_name("run (/x/src/surge/serving/response_cache.py:117)") == (
        "run (surge/serving/response_cache.py)"
    )
    assert frame_name("execute (/v/lib/python3.11/site-packages/redis/asyncio/client.py:600)") == (
        "execute (redis/asyncio/client.py)"
    )
    assert (
        frame_name("execute (redis/asyncio/client.py:600)") == "execute (redis/asyncio/client.py)"
    )
    assert frame_name("f (/opt/tools/lib/x.py:1)") == "f (lib/x.py)"


def test_the_profile_summary_keeps_the_model_path_out_of_the_cache_s_time() -> None:
    summary = summarise_profile(parse_collapsed(PROFILE))
    assert summary["samples"] == 104
    # row_keys 20 + _store/put 10 + the background Redis write 5 + single flight 4; the
    # 15 samples of deployment.infer under the cache are the model's path, not the cache's.
    assert summary["cache_samples"] == 39
    assert summary["cache_share"] == 0.375
    assert summary["model_path_under_cache_samples"] == 15
    inclusive = {row["frame"]: row["samples"] for row in summary["inclusive"]}
    assert inclusive["run (surge/serving/response_cache.py)"] == 34
    assert inclusive["_store (surge/serving/response_cache.py)"] == 10
    assert inclusive["put_many (surge/cache/redis_cache.py)"] == 5
    leaves = {row["frame"]: row["samples"] for row in summary["self"]}
    assert leaves == {"row_keys (surge/cache/keys.py)": 20, "put (surge/cache/memory.py)": 10,
                      "execute (redis/asyncio/client.py)": 5,
                      "ensure_future (asyncio/tasks.py)": 4}  # fmt: skip
    parts = {row["part"].split(":")[0]: row["samples"] for row in summary["parts"]}
    assert parts == {"keys": 20, "store": 10, "Redis": 5, "miss wrapper": 4}


def test_each_cache_sample_belongs_to_the_innermost_part_it_reached() -> None:
    def part(*frames: str) -> str:
        return part_of([f"{f}:1)" for f in frames])

    run = "EndpointCache.run (surge/serving/response_cache.py"
    lookup = "EndpointCache._look_up (surge/serving/response_cache.py"
    assert part(run, lookup, "get_many (surge/cache/redis_cache.py",
                "execute (redis/asyncio/client.py").startswith("Redis")  # fmt: skip
    assert part(run, lookup, "MemoryCache.get (surge/cache/memory.py").startswith("look-up")
    leader = "EndpointCache._compute.<locals>.leader (surge/serving/response_cache.py"
    store = "EndpointCache._store (surge/serving/response_cache.py"
    assert part(leader, store, "encode_rows (surge/cache/codec.py").startswith("store")
    assert part(leader).startswith("miss wrapper")
    assert part(run, "EndpointCache._assemble (surge/serving/response_cache.py",
                "decode (surge/cache/codec.py").startswith("hits")  # fmt: skip
    assert part(run) == OTHER_PART


def test_an_empty_profile_summarises_to_zero() -> None:
    summary = summarise_profile([])
    assert summary["samples"] == 0 and summary["cache_share"] == 0.0
    assert summary["inclusive"] == [] and summary["self"] == [] and summary["parts"] == []


def test_the_profile_table_lists_both_views_side_by_side() -> None:
    lines = profile_markdown("noop_memory", summarise_profile(parse_collapsed(PROFILE)))
    assert lines[0] == "### noop_memory: 39 of 104 samples (37.5%) in the cache's own code"
    assert "| keys: row keys, flight key | 19.2% |" in lines
    rows = [ln for ln in lines if ln.startswith("| `")]
    assert len(rows) == len(summarise_profile(parse_collapsed(PROFILE))["inclusive"])
    assert rows[0].startswith("| `run (surge/serving/response_cache.py)` | 32.7% | | ")
    assert all(row.count("|") == 6 for row in rows)  # five columns, short lists padded


def test_round_tables_format_numbers_like_the_report() -> None:
    lines = rounds_markdown(["round", "req/s", "hit rate"], [[1, 2194.2, 0.7588], [2, 12.0, None]])
    assert lines == [
        "| round | req/s | hit rate |",
        "|---|---|---|",
        "| 1 | 2,194 | 0.759 |",
        "| 2 | 12.0 | n/a |",
        "",
    ]
