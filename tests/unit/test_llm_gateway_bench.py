"""The chat gateway benchmark's pure parts: its statistics, how it reads a stream's bytes
and a py-spy profile, and the report it writes (benchmarks/llm_gateway.py). The load
itself runs only from the command line."""

from __future__ import annotations

import pytest

from benchmarks.llm_gateway import (
    CONTENT,
    LOOP_ONLY,
    QUICK,
    added_latency,
    bucket_of,
    count_content,
    low_percentiles,
    outcome_of,
    parse_raw_profile,
    peak_concurrency,
    percentiles_ms,
    profile_shares,
    render,
    summarize,
)


def test_percentiles_are_nearest_rank_in_ms() -> None:
    values = [i / 1000 for i in range(1, 101)]  # 1 .. 100 ms
    p = percentiles_ms([*values, None])
    assert (p["p50"], p["p90"], p["p99"], p["max"], p["n"]) == (50.0, 90.0, 99.0, 100.0, 100)
    assert p["mean"] == pytest.approx(50.5)
    assert percentiles_ms([]) == {}
    assert percentiles_ms([0.25])["p99"] == 250.0


def test_a_rates_low_tail() -> None:
    rates = [float(r) for r in range(1, 101)]
    low = low_percentiles(rates)
    assert (low["p50"], low["p10"], low["p1"], low["min"]) == (50.0, 10.0, 1.0, 1.0)
    assert low_percentiles([None]) == {}


def record(
    outcome: str, ttft: float | None, total: float, tokens: int = 32, sent: float = 0.0
) -> list:
    return [outcome, ttft, total, tokens, 19.5 if tokens > 1 else None, 0.06, sent]


def test_summarize_counts_failures_but_times_only_good_answers() -> None:
    records = [record("ok", 0.020 + i / 10_000, 0.660) for i in range(99)]
    records.append(record("short", 5.0, 9.0, tokens=3))
    s = summarize(records)
    assert (s["requests"], s["ok"], s["errors"]) == (100, 99, 1)
    assert s["outcomes"] == {"ok": 99, "short": 1}
    assert s["tokens"] == 99 * 32 + 3
    assert s["ttft_ms"]["max"] < 30  # the failed one's 5 s is not in the good ones' TTFT
    assert s["rate_tok_s"]["p50"] == 19.5
    assert (
        s["peak_streaming"] == 99
    )  # sent at 0, the good ones stream at once (the short one later)


def test_peak_concurrency_of_streams() -> None:
    assert peak_concurrency([]) == 0
    assert peak_concurrency([(0, 1), (1, 2), (2, 3)]) == 1  # one ends as the next starts
    assert peak_concurrency([(0, 10), (1, 2), (1.5, 3), (5, 6)]) == 3
    # Sent one after another, each streaming 3 s: three at once at most.
    records = [record("ok", 0.05, 3.05, sent=float(i)) for i in range(10)]
    assert summarize(records)["peak_streaming"] == 3


def test_added_latency_is_via_minus_direct_per_percentile() -> None:
    direct = {"ttft_ms": {"p50": 20.0, "p99": 25.0}, "total_ms": {"p50": 640.0, "p99": 660.0}}
    via = {"ttft_ms": {"p50": 20.6, "p99": 29.0}, "total_ms": {"p50": 641.0, "p99": 659.0}}
    assert added_latency(direct, via) == {
        "ttft_p50_ms": 0.6,
        "ttft_p99_ms": 4.0,
        "total_p50_ms": 1.0,
        "total_p99_ms": -1.0,
    }
    assert added_latency(direct, {"ttft_ms": {}, "total_ms": {}})["ttft_p50_ms"] is None


def test_content_chunks_are_counted_across_read_boundaries() -> None:
    role = b'data: {"choices":[{"delta":{"role":"assistant","content":""}}]}\n\n'
    token = b'data: {"choices":[{"index":0,"delta":{"content":"tok"}}]}\n\n'
    body = role + token * 5 + b"data: [DONE]\n\n"
    for size in (1, 3, 7, 19, len(body)):  # every way the network may cut it
        tail, total = b"", 0
        for i in range(0, len(body), size):
            found, tail = count_content(tail, body[i : i + size])
            total += found
        assert total == 5, size
    assert count_content(b"", role)[0] == 0  # the role chunk carries no token
    assert len(count_content(b"", token)[1]) == len(CONTENT) - 1


def test_outcome_of_a_stream() -> None:
    done = b'...finish_reason":"stop"}]}\n\ndata: [DONE]\n\n'
    assert outcome_of(200, 32, 32, done) == "ok"
    assert outcome_of(429, 0, 32, b"") == "429"
    assert outcome_of(200, 31, 32, done) == "short"
    assert outcome_of(200, 32, 32, b'data: {"choices":[]}\n\n') == "no_done"
    error = b'"finish_reason":"error"}]}\n\ndata: {"error":{"message":"x"}}\n\n'
    assert outcome_of(200, 10, 32, error) == "error_event"


ROOT = "_run_module_as_main (<frozen runpy>);Runner.run (asyncio/runners.py)"
PUMP = f"{ROOT};pump (surge/api/inference_routes.py)"
SEND = "RequestResponseCycle.send (uvicorn/protocols/http/httptools_impl.py)"
RAW = "\n".join(  # py-spy --native --threads --format raw: a stack and its samples a line
    [
        f"thread (100): MainThread;{PUMP};{SEND};write (libc.so.6) 30",
        f"thread (100): MainThread;{PUMP};ProviderBackend._read (surge/llm/provider.py);"
        "timeout (asyncio/timeouts.py);getpid (libc.so.6) 10",
        f"thread (100): MainThread;{PUMP};AnyIOStream.read (httpcore/_backends/anyio.py);"
        "current_task (asyncio/tasks.py);gc_collect_main (libpython3.11.so.1.0) 20",
        f"thread (100): MainThread;{ROOT} 40",
        "thread (101): receipt-sink;Thread.run (threading.py);"
        "SinkClient._read_replies (surge/observe/sink_client.py) 5",
    ]
)


def test_a_raw_profile_is_read_per_thread_and_frame() -> None:
    samples = parse_raw_profile(RAW.splitlines())
    assert len(samples) == 5
    thread, frames, count = samples[0]
    assert (thread, count, frames[-1]) == ("MainThread", 30, "write (libc.so.6)")
    assert samples[-1][0] == "receipt-sink"


def test_each_sample_counts_to_the_innermost_python_frame_that_is_not_glue() -> None:
    samples = parse_raw_profile(RAW.splitlines())
    assert bucket_of(samples[0][1]).startswith("downstream HTTP server (uvicorn")
    assert bucket_of(samples[1][1]).startswith("upstream stream in surge")  # asyncio is glue
    assert bucket_of(samples[2][1]).startswith("upstream HTTP client")
    assert bucket_of(samples[3][1]) == LOOP_ONLY


def test_profile_shares_of_the_event_loop() -> None:
    shares = profile_shares(parse_raw_profile(RAW.splitlines()))
    assert (shares["samples"], shares["all_threads_samples"]) == (100, 105)
    buckets = dict(shares["buckets"])
    assert buckets[LOOP_ONLY] == 0.4 and sum(buckets.values()) == pytest.approx(1.0)
    assert dict(shares["native_leaves"]) == {"write": 0.3, "gc_collect_main": 0.2, "getpid": 0.1}
    assert shares["gc_share"] == 0.2
    top_self = shares["self"][0]
    assert top_self == ["Runner.run (asyncio/runners.py)", 0.4]
    # Frames under every sample (the process's root) say nothing: left out of inclusive.
    inclusive = dict(shares["inclusive"])
    assert "Runner.run (asyncio/runners.py)" not in inclusive
    assert inclusive["pump (surge/api/inference_routes.py)"] == 0.6
    assert shares["callers"][SEND] == [["pump ← Runner.run ← _run_module_as_main", 0.3]]
    assert profile_shares([], thread="MainThread")["samples"] == 0


def run_doc() -> dict:
    summary = summarize([record("ok", 0.021, 0.650)] * 10)
    via = summarize([record("ok", 0.022, 0.652)] * 10)
    cpu = {k: {"cpu_s": 1.0, "cores": 0.5} for k in ("surge", "upstream", "client")}
    run = {"summary": summary, "cpu": cpu, "background_cores": 0.1, "client_wall_s": 2.0}
    latency = {
        "streams": 100,
        "runs": {"direct": [run], "surge": [{**run, "summary": via}]},
        "pooled": {"direct": summary, "surge": via},
        "added": added_latency(summary, via),
    }
    memory = {"rss_before_mb": 90.0, "rss_peak_mb": 120.0, "rss_after_mb": 95.0,
              "after_wait_s": 3.0, "per_stream_kb": 30.7}  # fmt: skip
    streams = {"direct": run, "surge": {**run, "memory": memory, "peak_open_streams": 1000,
                                        "surge_cpu_us_per_token": 50.0}}  # fmt: skip
    fast = {**run, "tokens_per_s": 40_000.0, "tokens_per_surge_cpu_s": 20_000.0,
            "surge_cpu_us_per_token": 50.0}  # fmt: skip
    profile = {"load": "a load", "py_spy": "0.4.3", "duration_s": 5, "loop_busy_share": 0.9,
               "main": profile_shares(parse_raw_profile(RAW.splitlines()))}  # fmt: skip
    figure = {"bench": "latency", "name": "added TTFT p50, 100 streams", "value": 1.0,
              "unit": "ms", "target": "≤ 1 ms", "met": True, "note": "", "headline": 1}  # fmt: skip
    return {
        "title": "surge chat gateway",
        "quick": True,
        "machine": {"date": "today", "cpu_count": 2, "git": {"commit": "abc1234"}},
        "plan": {**QUICK.__dict__},
        "figures": [figure, {**figure, "name": "failed", "value": 3, "met": False}],
        "details": {
            "latency": latency,
            "streams": streams,
            "throughput": {"runs": [{"direct": {**run, "tokens_per_s": 42e3}, "surge": fast}]},
            "profile": profile,
            "surge_log": {"requests": 10, "client_lines": 10},
        },
    }


def test_the_report_has_every_part_and_says_what_missed() -> None:
    text = render(run_doc())
    assert text.startswith("# surge chat gateway")
    assert "| latency | added TTFT p50, 100 streams | 1.00 ms | ≤ 1 ms | met |" in text
    assert "**not met**" in text and "1 of 2 targets met." in text
    for heading in ("## 1. Added latency: 100 concurrent streams", "## 2. 1,000 streams",
                    "## 3. Relayed tokens per surge CPU-second", "## 4. Where surge's time goes",
                    "## Reading the numbers"):  # fmt: skip
        assert heading in text
    assert "| **added by surge** | | | **1.00** |" in text  # TTFT p50: 22 - 21 ms
    assert "90.0 MB before, 120 MB at peak, 95.0 MB" in text
    assert "| 1 | surge | 40,000 | 0.5 | 20,000 | 50.0 |" in text
    assert "| `write` | 30.0 % |" in text and "garbage collector: 20.0 %" in text
    assert "- surge spends 50.0 µs of CPU per token relayed" in text
    assert "one core relays about 20,000 tokens/s, 1,000 such streams" in text
    assert "10 lines from the upstream HTTP client's loggers" in text
    skipped = run_doc()
    skipped["details"] = {"profile": {"skipped": "py-spy is not installed"}}
    assert "Not profiled: py-spy is not installed" in render(skipped)
