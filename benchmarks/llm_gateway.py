"""The chat gateway's cost: what `POST /v1/chat/completions` adds in front of an
OpenAI-compatible upstream, how many paced streams one process holds, tokens per core.

    python -m benchmarks.llm_gateway            # full run, about 4 minutes on 2 cores
    python -m benchmarks.llm_gateway --quick    # smoke version, about 2 minutes

Writes benchmarks/results/llm_gateway.json and .md (llm_gateway_quick for --quick, so a
smoke run never overwrites the full results; --out picks another stem) and prints the
markdown; the exit status is 1 when a target is missed.

Three kinds of process side by side on 127.0.0.1, none sharing a GIL or an event loop:
the fake upstream (`python -m tests.fake_llm`, one process per token timing, its
latencies fixed at start), `surge serve` with a config of only `llm:` (one chat model
per fake, its bounds raised past 1,000 streams), and the load client (this module with
`--client`: asyncio + aiohttp on uvloop, one process per load).

0. overhead: one-token answers from 8 closed-loop clients: surge's CPU per request, and
   how many upstream connections a request opens (keep-alive should make it ~0).
1. latency: 100 concurrent streams (closed loop), the upstream 20 ms to the first token
   and 20 ms between tokens, 32 tokens; direct to the upstream and through surge in
   alternating rounds. The client times each request from sending to the first content
   chunk (TTFT) and to the end of the body (total). Added = via surge - direct, each
   side's percentile over all its rounds' requests (targets: p50 <= 1 ms, p99 <= 5 ms).
   Then the same at 20 streams, a load surge carries with room to spare (reported).
2. streams: 1,000 streams opened over a ramp, each paced by the upstream at 20 tokens/s
   (50 ms to the first token and between tokens), all held at once; direct first, then
   through surge. Completed without error, held at once (first token to end, as the
   client saw them), tokens/s per stream (first to last token), surge's RSS before /
   peak / after and the CPU of surge, the upstream and the client.
3. throughput: the upstream at no latency (tokens as fast as it makes them), 64 closed-
   loop streams of 512 tokens: tokens relayed per second / surge's CPU seconds per
   second = tokens per surge CPU-second.
4. profile: py-spy (`--native`) samples surge for `profile_s` while it holds 150 streams
   at 20 tokens/s, in a run of its own so the sampling taxes none of the figures above;
   where the event loop's time goes, by component and by function.

Every load is bounded in requests and in time; a client process that outlives its bound
is killed. The machine's other load is recorded per run (`background_cores`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from benchmarks.report import Report
    from benchmarks.servers import ServerProcess

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS = REPO_ROOT / "benchmarks" / "results"
UPSTREAM_MODEL = "fake-model"
CHAT_PATH = "/v1/chat/completions"
# The upstream's fixed timings, one fake process each: (first token s, between tokens s).
UPSTREAMS = {"paced": (0.02, 0.02), "steady": (0.05, 0.05), "fast": (0.0, 0.0)}
# A content chunk, as both surge and the fake write it; the role chunk has no match
# (`"delta":{"role":...`), and the fake never sends an empty token.
CONTENT = b'"delta":{"content":"'
TAIL = len(CONTENT) - 1  # kept between reads: a match cut by a read boundary still counts
END_BYTES = 512  # the end of a body, kept to check its last events
DONE = b"data: [DONE]"
TARGET_ADDED_P50_MS = 1.0
TARGET_ADDED_P99_MS = 5.0
RSS_GROWTH_LIMIT_MB = 100.0  # as the serving core's overload benchmark
PROFILE_RATE_HZ = 100


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Plan:
    latency_streams: int  # the judged level
    light_streams: int  # a load surge carries with room to spare, for comparison
    latency_tokens: int
    latency_round_s: float
    latency_rounds: int  # direct and via surge alternate this many times
    warmup_s: float
    streams: int
    stream_tokens: int  # at 20 tokens/s: seconds each stream is held x 20
    ramp_s: float  # the streams open evenly over this
    fast_streams: int
    fast_tokens: int
    fast_s: float
    fast_rounds: int
    profile_streams: int  # held at 20 tokens/s while py-spy samples
    overhead_requests: int  # one-token answers, for the cost of a request
    profile_s: float
    quiet_wait_s: float  # longest wait for other processes to go quiet before a run


FULL = Plan(100, 20, 32, 6.0, 3, 2.0, 1000, 200, 3.0, 64, 512, 6.0, 2, 150, 1000, 10.0, 5.0)
QUICK = Plan(100, 20, 32, 2.0, 3, 1.0, 1000, 80, 2.0, 64, 512, 3.0, 1, 150, 300, 5.0, 0.0)


# -- pure helpers: statistics and the report ----------------------------------------------


def percentiles_ms(values_s: Iterable[float | None]) -> dict[str, float]:
    """p50/p90/p99/max/mean of seconds, in ms (nearest rank), and how many; {} if none."""
    ordered = sorted(v for v in values_s if v is not None)
    n = len(ordered)
    if not n:
        return {}

    def rank(q: float) -> float:
        return round(ordered[min(n - 1, max(0, math.ceil(q * n) - 1))] * 1000, 3)

    return {
        "p50": rank(0.50),
        "p90": rank(0.90),
        "p99": rank(0.99),
        "max": round(ordered[-1] * 1000, 3),
        "mean": round(sum(ordered) / n * 1000, 3),
        "n": n,
    }


def low_percentiles(values: Iterable[float | None]) -> dict[str, float]:
    """The low tail of a rate (where a slow stream shows): p50, p10, p1, min, mean."""
    ordered = sorted(v for v in values if v is not None)
    n = len(ordered)
    if not n:
        return {}

    def rank(q: float) -> float:
        return round(ordered[min(n - 1, max(0, math.ceil(q * n) - 1))], 3)

    return {
        "p50": rank(0.50),
        "p10": rank(0.10),
        "p1": rank(0.01),
        "min": round(ordered[0], 3),
        "mean": round(sum(ordered) / n, 3),
        "n": n,
    }


# One request as the client saw it: outcome ("ok", an HTTP status, "short", "no_done",
# "error_event", "connection_error", "timeout"), TTFT s, total s, content tokens,
# tokens/s from the first token to the last, the longest gap between two reads that
# carried tokens (s), when it was sent (s since the load began).
Record = Sequence[Any]


def peak_concurrency(intervals: Iterable[tuple[float, float]]) -> int:
    """The most intervals open at one instant (one that ends as another starts: not both)."""
    edges = sorted((t, delta) for start, end in intervals for t, delta in ((start, 1), (end, -1)))
    open_, peak = 0, 0
    for _, delta in edges:
        open_ += delta
        peak = max(peak, open_)
    return peak


def summarize(records: Sequence[Record]) -> dict[str, Any]:
    """A run's requests: outcomes, TTFT and total of the good ones, tokens, rates, gaps."""
    ok = [r for r in records if r[0] == "ok"]
    return {
        "requests": len(records),
        "ok": len(ok),
        "errors": len(records) - len(ok),
        "outcomes": dict(Counter(str(r[0]) for r in records)),
        "tokens": sum(int(r[3]) for r in records),
        "ttft_ms": percentiles_ms(r[1] for r in ok),
        "total_ms": percentiles_ms(r[2] for r in ok),
        "rate_tok_s": low_percentiles(r[4] for r in ok),
        "max_gap_ms": percentiles_ms(r[5] for r in ok),
        # Streams between their first token and their end at one instant, as the client saw.
        "peak_streaming": peak_concurrency(
            (r[6] + r[1], r[6] + r[2]) for r in records if len(r) > 6 and r[1] is not None
        ),
    }


def added_latency(direct: dict[str, Any], via: dict[str, Any]) -> dict[str, float | None]:
    """Via surge minus direct, per percentile of TTFT and total (two `summarize`s).

    A difference of percentiles, not a percentile of differences: the two sides are
    different requests, so no pairing exists."""
    out: dict[str, float | None] = {}
    for metric in ("ttft_ms", "total_ms"):
        for q in ("p50", "p99"):
            a, b = direct[metric].get(q), via[metric].get(q)
            out[f"{metric[:-3]}_{q}_ms"] = None if a is None or b is None else round(b - a, 3)
    return out


def outcome_of(status: int, tokens: int, expected: int, end: bytes) -> str:
    """How a streamed answer ended, from its status, its token count and its last bytes."""
    if status != 200:
        return str(status)
    if b'{"error":' in end:
        return "error_event"
    if tokens != expected:
        return "short"
    if not end.rstrip().endswith(DONE):
        return "no_done"
    return "ok"


def count_content(tail: bytes, chunk: bytes) -> tuple[int, bytes]:
    """Content chunks completed by `chunk` (what was read before ends with `tail`), and
    the tail to keep for the next read."""
    window = tail + chunk if tail else chunk
    return window.count(CONTENT), window[-TAIL:]


_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*)\)$")
# Python frames a sample's time is passed up through, to the first that says whose it is.
GLUE = ("asyncio/", "contextlib.py", "functools.py", "typing.py", "abc.py", "weakref.py",
        "_weakrefset.py", "<frozen")  # fmt: skip
BUCKETS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("logging", ("logging/",)),
    (
        "upstream HTTP client (aiohttp, yarl, multidict; httpx before)",
        (
            "aiohttp/",
            "yarl/",
            "multidict/",
            "aiosignal/",
            "httpx/",
            "httpcore/",
            "h11/",
            "anyio/",
            "sniffio/",
        ),
    ),
    (
        "upstream stream in surge: read timeouts, SSE parse, chunk JSON (provider.py, sse.py)",
        ("surge/llm/provider.py", "surge/llm/sse.py"),
    ),
    ("downstream HTTP server (uvicorn; its socket writes)", ("uvicorn/", "httptools/")),
    (
        "relay in surge: send_stream, SSE chunk writing",
        ("surge/api/inference_routes.py", "surge/llm/openai_chunks.py"),
    ),
    (
        "chat handler and answer bookkeeping (chat.py, answer.py, model.py, ...)",
        ("surge/api/chat.py", "surge/llm/", "surge/api/"),
    ),
    ("observability: receipts, metrics, traces", ("surge/observe/", "prometheus_client/")),
    ("other surge", ("surge/",)),
)
LOOP_ONLY = "event loop itself (uvloop: epoll, callbacks; no Python frame above)"
Sample = tuple[str, list[str], int]  # (thread name, frames root first, samples)


def parse_frame(frame: str) -> tuple[str, str]:
    """(function, file) of a py-spy frame `func (path/file.py)`."""
    found = _FRAME.match(frame)
    return (found["function"], found["file"]) if found else (frame, "")


def is_python(frame: str) -> bool:
    """A Python frame (else native: C in libc, libpython, uvloop... with --native)."""
    file = parse_frame(frame)[1]
    return file.endswith(".py") or file.startswith("<")


def bucket_of(stack: Sequence[str]) -> str:
    """Whose a sample is: the innermost Python frame that is not glue (asyncio,
    contextlib), by its file; C below it counts to it."""
    for frame in reversed(stack):
        file = parse_frame(frame)[1]
        if not is_python(frame) or file.startswith(GLUE):
            continue
        for name, prefixes in BUCKETS:
            if file.startswith(prefixes):
                return name
        return f"other: {file.split('/', 1)[0]}"
    return LOOP_ONLY


def parse_raw_profile(lines: Iterable[str]) -> list[Sample]:
    """py-spy's raw format with --threads: `thread (tid): name;frame;...;frame count`."""
    out = []
    for line in lines:
        stack, _, count = line.rstrip("\n").rpartition(" ")
        if not count.isdigit() or not stack:
            continue
        head, *frames = stack.split(";")
        thread = head.split(": ", 1)[1] if head.startswith("thread (") and ": " in head else head
        out.append((thread, frames, int(count)))
    return out


def profile_shares(samples: Sequence[Sample], thread: str = "MainThread", top: int = 15) -> dict:
    """Where one thread's sampled time goes, as shares of its samples: by component
    (`bucket_of`); by Python function inclusive (once per sample; frames under every
    sample, the process's root, left out) and self (the innermost Python frame, the C it
    calls included), with the callers of the top self frames; the native leaves (with
    py-spy --native: syscalls, the garbage collector); the share inside the collector."""
    mine = [(frames, n) for name, frames, n in samples if name == thread]
    total = sum(n for _, n in mine)
    out: dict[str, Any] = {"thread": thread, "samples": total,
                           "all_threads_samples": sum(n for _, _, n in samples)}  # fmt: skip
    if not total:
        return out
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    native: Counter[str] = Counter()
    buckets: Counter[str] = Counter()
    callers: dict[str, Counter[str]] = {}
    in_gc = 0
    for frames, n in mine:
        python = [f for f in frames if is_python(f)]
        for frame in set(python):
            inclusive[frame] += n
        if python:
            own[python[-1]] += n
            chain = " ← ".join(parse_frame(f)[0] for f in reversed(python[-4:-1]))
            callers.setdefault(python[-1], Counter())[chain] += n
        if frames and not is_python(frames[-1]):
            native[parse_frame(frames[-1])[0]] += n
        if any(parse_frame(f)[0].startswith("gc_collect") for f in frames):
            in_gc += n
        buckets[bucket_of(frames)] += n

    def shares(counter: Counter[str], k: int) -> list[list[Any]]:
        return [[name, round(n / total, 4)] for name, n in counter.most_common(k)]

    rooted = Counter({f: n for f, n in inclusive.items() if n < 0.99 * total})
    out.update(
        buckets=shares(buckets, len(buckets)),
        inclusive=shares(rooted, top),
        self=shares(own, top),
        callers={f: shares(callers[f], 2) for f, _ in own.most_common(6)},
        native_leaves=shares(native, 10),
        gc_share=round(in_gc / total, 4),
    )
    return out


def _fmt(value: object) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}"
    if isinstance(value, int) and abs(value) >= 10_000:
        return f"{value:,}"
    return str(value)


def _pct(share: float) -> str:
    return f"{share * 100:.1f} %"


def _ms(p: dict[str, Any], q: str) -> str:
    return _fmt(p.get(q)) if p else "n/a"


def render(doc: dict[str, Any]) -> str:
    """The markdown report of a run's JSON document (figures first, then each part)."""
    machine = doc.get("machine", {})
    plan = doc["plan"]
    mark = {True: "met", False: "**not met**", None: ""}
    git = machine.get("git", {})
    lines = [
        f"# {doc['title']}",
        "",
        f"{machine.get('date', '?')} · {machine.get('cpu_count', '?')} CPUs "
        f"({machine.get('cpu_model', '?')}) · Python {machine.get('python', '?')} · "
        f"load average at start {machine.get('load_average_at_start', '?')} · "
        f"commit {git.get('commit', '?')}"
        + (" (src/ modified)" if git.get("src_modified") else ""),
        "",
        "`python -m benchmarks.llm_gateway" + (" --quick`" if doc.get("quick") else "`")
        + ": the fake upstream (`tests/fake_llm.py`), `surge serve` (a config of only "
        "`llm:`) and an aiohttp client, each its own process on 127.0.0.1.",
        "",
        "| part | figure | value | target | result | notes |",
        "|---|---|---:|---|---|---|",
    ]  # fmt: skip
    for f in doc["figures"]:
        value = f"{_fmt(f['value'])} {f['unit']}".strip()
        lines.append(f"| {f['bench']} | {f['name']} | {value} | {f['target']} | "
                     f"{mark[f['met']]} | {f['note']} |")  # fmt: skip
    judged = [f for f in doc["figures"] if f["met"] is not None]
    lines += ["", f"{sum(1 for f in judged if f['met'])} of {len(judged)} targets met.", ""]
    details = doc.get("details", {})
    for key in ("latency", "latency_light"):
        if key in details:
            lines += _latency_section(details[key], plan)
    if "streams" in details:
        lines += _streams_section(details["streams"], plan)
    if "throughput" in details:
        lines += _throughput_section(details["throughput"], plan)
    if "profile" in details:
        lines += _profile_section(details["profile"])
    if details.get("errors"):
        lines += ["## Errors", ""]
        for part, trace in details["errors"].items():
            lines += [f"`{part}`:", "", "```", trace.strip()[-1500:], "```", ""]
    lines += _summary_section(doc) + NOTES
    return "\n".join(lines) + "\n"


def _latency_section(lat: dict[str, Any], plan: dict[str, Any]) -> list[str]:
    first, gap = UPSTREAMS["paced"]
    light = "" if lat["streams"] == plan["latency_streams"] else " (light load, for comparison)"
    lines = [
        f"## 1. Added latency: {lat['streams']} concurrent streams{light}",
        "",
        f"Closed loop, {lat['streams']} clients, upstream {first * 1000:g} ms to "
        f"the first token then {gap * 1000:g} ms between tokens, {plan['latency_tokens']} "
        f"tokens; {plan['latency_rounds']} rounds of {plan['latency_round_s']:g} s per side, "
        "alternating. TTFT: send to the first content chunk; total: send to the end of "
        "the body. Percentiles over every round's requests of a side.",
        "",
        "| side | requests | errors | TTFT p50 ms | TTFT p99 ms | total p50 ms | total p99 ms |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for side in ("direct", "surge"):
        s = lat["pooled"][side]
        lines.append(f"| {side} | {s['requests']} | {s['errors']} | {_ms(s['ttft_ms'], 'p50')} | "
                     f"{_ms(s['ttft_ms'], 'p99')} | {_ms(s['total_ms'], 'p50')} | "
                     f"{_ms(s['total_ms'], 'p99')} |")  # fmt: skip
    a = lat["added"]
    lines += [f"| **added by surge** | | | **{_fmt(a['ttft_p50_ms'])}** | "
              f"**{_fmt(a['ttft_p99_ms'])}** | **{_fmt(a['total_p50_ms'])}** | "
              f"**{_fmt(a['total_p99_ms'])}** |", ""]  # fmt: skip
    lines += [
        "Per round (added = that round's surge run minus its direct run):",
        "",
        "| round | TTFT p50 direct / surge / added | TTFT p99 direct / surge / added "
        "| surge cores | background cores |",
        "|---:|---|---|---:|---:|",
    ]
    for i, (d, s) in enumerate(zip(lat["runs"]["direct"], lat["runs"]["surge"], strict=True)):
        dt, st = d["summary"]["ttft_ms"], s["summary"]["ttft_ms"]

        def trio(q: str, dt: dict = dt, st: dict = st) -> str:
            if not dt or not st:
                return "n/a"
            return f"{_fmt(dt[q])} / {_fmt(st[q])} / {_fmt(round(st[q] - dt[q], 3))}"

        lines.append(f"| {i + 1} | {trio('p50')} | {trio('p99')} | "
                     f"{_fmt(s['cpu']['surge']['cores'])} | "
                     f"{_fmt(max(d['background_cores'], s['background_cores']))} |")  # fmt: skip
    return [*lines, ""]


def _streams_section(st: dict[str, Any], plan: dict[str, Any]) -> list[str]:
    first, gap = UPSTREAMS["steady"]
    lines = [
        f"## 2. {plan['streams']:,} streams at 20 tokens/s held by one process",
        "",
        f"{plan['streams']:,} streams opened evenly over {plan['ramp_s']:g} s, each "
        f"{plan['stream_tokens']} tokens paced by the upstream ({first * 1000:g} ms to the "
        f"first, {gap * 1000:g} ms between: {plan['stream_tokens'] * gap:g} s a stream). "
        "Rate: a stream's tokens after the first / time from its first to its last.",
        "",
        "| side | ok / opened | held at once (peak) | tokens/s per stream p50 / p10 / min "
        "| TTFT p50 / p99 ms | longest token gap p99 ms | surge CPU s | upstream CPU s "
        "| client CPU s | background cores |",
        "|---|---|---:|---|---|---:|---:|---:|---:|---:|",
    ]
    for side in ("direct", "surge"):
        run = st.get(side)
        if not run:
            continue
        s, cpu = run["summary"], run["cpu"]
        r = s["rate_tok_s"]
        rates = f"{_fmt(r.get('p50'))} / {_fmt(r.get('p10'))} / {_fmt(r.get('min'))}"
        lines.append(
            f"| {side} | {s['ok']} / {s['requests']} | {s.get('peak_streaming')} | {rates} | "
            f"{_ms(s['ttft_ms'], 'p50')} / {_ms(s['ttft_ms'], 'p99')} | "
            f"{_ms(s['max_gap_ms'], 'p99')} | {_fmt(cpu['surge']['cpu_s'])} | "
            f"{_fmt(cpu['upstream']['cpu_s'])} | {_fmt(cpu['client']['cpu_s'])} | "
            f"{_fmt(run['background_cores'])} |"
        )
    via = st.get("surge")
    if via:
        m = via["memory"]
        lines += [
            "",
            f"surge's RSS: {_fmt(m['rss_before_mb'])} MB before, {_fmt(m['rss_peak_mb'])} MB "
            f"at peak, {_fmt(m['rss_after_mb'])} MB {m['after_wait_s']:g} s after "
            f"({_fmt(m['per_stream_kb'])} kB a stream: (peak - before) / streams open at "
            "peak); streams open "
            f"in surge at peak (its `surge_llm_streams_open` gauge, sampled twice a second): "
            f"{_fmt(via.get('peak_open_streams'))}; surge's CPU over the run: "
            f"{_fmt(via['cpu']['surge']['cores'])} cores, "
            f"{_fmt(via.get('surge_cpu_us_per_token'))} µs per token relayed.",
        ]
    return [*lines, ""]


def _throughput_section(tp: dict[str, Any], plan: dict[str, Any]) -> list[str]:
    lines = [
        "## 3. Relayed tokens per surge CPU-second",
        "",
        f"The upstream at no latency, {plan['fast_streams']} closed-loop streams of "
        f"{plan['fast_tokens']} tokens, {plan['fast_s']:g} s a run. Direct runs show what "
        "the upstream and the client manage without surge on the same 2 cores.",
        "",
        "| round | side | tokens/s | surge cores | tokens per surge CPU-s | surge µs per token "
        "| upstream cores | client cores | background cores |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for i, pair in enumerate(tp["runs"]):
        for side in ("direct", "surge"):
            run = pair.get(side)
            if not run:
                continue
            cpu = run["cpu"]
            lines.append(
                f"| {i + 1} | {side} | {_fmt(run['tokens_per_s'])} | "
                f"{_fmt(cpu['surge']['cores']) if side == 'surge' else '-'} | "
                f"{_fmt(run.get('tokens_per_surge_cpu_s')) if side == 'surge' else '-'} | "
                f"{_fmt(run.get('surge_cpu_us_per_token')) if side == 'surge' else '-'} | "
                f"{_fmt(cpu['upstream']['cores'])} | {_fmt(cpu['client']['cores'])} | "
                f"{_fmt(run['background_cores'])} |"
            )
    return [*lines, ""]


def _profile_section(prof: dict[str, Any]) -> list[str]:
    if prof.get("skipped"):
        return ["## 4. Where surge's time goes", "", f"Not profiled: {prof['skipped']}", ""]
    main = prof["main"]

    def table(head: str, rows: list[list[Any]], code: bool = True) -> list[str]:
        q = "`" if code else ""
        return [f"| {head} | share |", "|---|---:|",
                *[f"| {q}{name}{q} | {_pct(share)} |" for name, share in rows], ""]  # fmt: skip

    lines = [
        "## 4. Where surge's time goes (py-spy)",
        "",
        f"{prof['load']}. py-spy {prof['py_spy']} sampled surge at {PROFILE_RATE_HZ} Hz for "
        f"{prof['duration_s']:g} s with `--native` (idle samples left out): "
        f"{main['samples']} samples of the event loop's thread (busy "
        f"{_pct(prof.get('loop_busy_share') or 0)} of the time, waiting for a core included), "
        f"{main['all_threads_samples'] - main['samples']} of other threads. Shares are of "
        "the event loop's samples.",
        "",
        "By component (each sample counts to the innermost Python frame that is not "
        "asyncio/contextlib glue, by its file; the C it calls counts with it):",
        "",
        *table("component", main["buckets"], code=False),
        f"Inside the garbage collector: {_pct(main['gc_share'])} of the samples. "
        "Native leaves (C functions at the top of the stack; `write`/`read` are the "
        "socket syscalls, `getpid` is Python 3.11's `asyncio.get_running_loop()` checking "
        "for a fork on every call):",
        "",
        *table("native function", main["native_leaves"]),
        "Top Python functions, self (the innermost Python frame, with the C it calls):",
        "",
        *table("function (file)", main["self"]),
        "Their callers (innermost first):",
        "",
    ]
    for frame, rows in main["callers"].items():
        chains = "; ".join(f"{chain} ({_pct(share)})" for chain, share in rows)
        lines.append(f"- `{parse_frame(frame)[0]}` ← {chains}")
    lines += ["", "Top Python functions, inclusive (the function and all it calls):", ""]
    return lines + table("function (file)", main["inclusive"])


NOTES = [
    "## Reading the numbers",
    "",
    "- All three processes share the machine's cores: the upstream's and the client's CPU "
    "are listed next to surge's, and `background cores` is what other processes used "
    "(the machine's busy time less ours). Compare runs only where that is low.",
    "- Added latency is a difference of two percentiles over different requests (no "
    "request goes both ways). On a shared 2-core machine a p99 moves by a few ms between "
    "runs of the same side; the per-round table shows that spread.",
    "- TTFT is measured to the first content chunk: the upstream sends its role chunk at "
    "once, surge sends its own only with the first token, so neither side's TTFT counts "
    "the role chunk.",
    "- surge is configured as shipped (receipts, metrics, INFO logs) except the chat "
    "bounds raised past 1,000 streams: the provider's `max_connections` (default 64) and "
    "`max_concurrent_requests` (256), the model's `max_concurrent_streams` (256) and "
    "`llm.max_open_streams` (2048). A stream holds its upstream connection for its whole "
    "answer, so with the defaults the 65th concurrent stream to one provider waits in "
    "the HTTP client's pool for another to end (no 429).",
    "- py-spy counts a thread busy while it is runnable, waiting for a core included: on a "
    "busy machine that time lands where the thread was preempted, most often right after a "
    "syscall that woke another process (`write`). Read the shares with the run's "
    "background cores.",
    "",
]


def _summary_section(doc: dict[str, Any]) -> list[str]:
    """What the parts say together: surge's CPU per token, what one core holds, where
    the time goes (only the figures this run measured)."""
    details, lines = doc.get("details", {}), []
    over = details.get("overhead")
    if over:
        n = max(over["summary"]["requests"], 1)
        lines.append(
            f"- A request costs surge {_fmt(over['surge_cpu_us_per_request'])} µs of CPU before "
            f"its tokens, and {_fmt(round(over['upstream_connections_closed'] / n, 3))} upstream "
            "connections opened per request (TIME_WAITs over requests; 1 = no keep-alive)."
        )
    via = details.get("streams", {}).get("surge")
    if via and via.get("surge_cpu_us_per_token"):
        us, s = via["surge_cpu_us_per_token"], via["summary"]
        held = f"it held all {s['peak_streaming']} at once"
        if s["peak_streaming"] < s["requests"]:
            ttft = _fmt(s["ttft_ms"].get("p50"))
            held = (f"it held {s['peak_streaming']} of {s['requests']} at once, and the others "
                    f"waited for their first token (TTFT p50 {ttft} ms)")  # fmt: skip
        lines.append(
            f"- surge spends {_fmt(us)} µs of CPU per token relayed at 20 tokens/s a stream "
            f"(one token a read and a write): one core relays about {_fmt(1e6 / us)} tokens/s, "
            f"{_fmt(1e6 / us / 20)} such streams; {held}."
        )
    fast = [pair["surge"] for pair in details.get("throughput", {}).get("runs", [])]
    if fast:
        best = max(fast, key=lambda r: r["tokens_per_surge_cpu_s"])
        lines.append(
            f"- With the upstream at full speed (several tokens a read) it is "
            f"{_fmt(best['surge_cpu_us_per_token'])} µs per token, "
            f"{_fmt(best['tokens_per_surge_cpu_s'])} tokens per CPU-second."
        )
    lat = details.get("latency")
    if lat:
        cores = [r["cpu"]["surge"]["cores"] for r in lat["runs"]["surge"]]
        tokens = lat["pooled"]["surge"]["tokens"]
        seconds = sum(r["client_wall_s"] for r in lat["runs"]["surge"])
        line = (
            f"- At {lat['streams']} streams the upstream offers about "
            f"{_fmt(lat['streams'] / UPSTREAMS['paced'][1])} tokens/s; surge relayed "
            f"{_fmt(tokens / max(seconds, 1e-9))} tokens/s at {_fmt(max(cores))} cores."
        )
        if max(cores) >= 0.85:
            line += (" Its event loop is one thread: near one core it is saturated, and the "
                     "latency it adds there is mostly queueing.")  # fmt: skip
        light = details.get("latency_light")
        if light:
            a = light["added"]
            line += (f" At {light['streams']} streams, with cores to spare, it adds "
                     f"{_fmt(a['ttft_p50_ms'])} ms to TTFT at p50 and {_fmt(a['ttft_p99_ms'])} "
                     "ms at p99.")  # fmt: skip
        lines.append(line)
    main = details.get("profile", {}).get("main")
    if main and main.get("samples"):
        native = dict(main.get("native_leaves", []))
        top = "; ".join(f"{name} {_pct(share)}" for name, share in main["buckets"][:3])
        lines.append(
            f"- Where the event loop's time goes (part 4): {top}. Socket writes "
            f"(`write`, one per token relayed) {_pct(native.get('write', 0.0))}; `getpid` "
            f"{_pct(native.get('getpid', 0.0))} (Python 3.11 checks the pid in every "
            "`asyncio.get_running_loop()`, which `asyncio.timeout`, `current_task` and anyio's "
            "cancel scopes call per read; 3.12 dropped the check, cpython#100363); the "
            f"garbage collector {_pct(main.get('gc_share', 0.0))}."
        )
    logs = details.get("surge_log")
    if logs and logs.get("requests"):
        lines.append(
            f"- surge's log at INFO: {logs['client_lines']} lines from the upstream HTTP "
            f"client's loggers (`aiohttp`, `httpx`) for {logs['requests']} chat requests "
            "(a line per request would be a log flood under load)."
        )
    return ["## What this says", "", *lines, ""] if lines else []


# -- the load client (its own process) ----------------------------------------------------


async def _stream_one(
    session: Any, url: str, body: bytes, expected: int, origin: float
) -> list[Any]:
    import aiohttp

    sent = time.perf_counter()
    first = last = None
    tokens, max_gap, status = 0, 0.0, 0
    tail = end = b""
    try:
        async with session.post(url, data=body) as response:
            status = response.status
            if status != 200:
                await response.read()
            else:
                async for chunk in response.content.iter_any():
                    now = time.perf_counter()
                    found, tail = count_content(tail, chunk)
                    if found:
                        if first is None:
                            first = now
                        else:
                            max_gap = max(max_gap, now - last)  # type: ignore[operator]
                        last = now
                        tokens += found
                    end = (end + chunk)[-END_BYTES:]
        outcome = outcome_of(status, tokens, expected, end)
    except aiohttp.ClientError:
        outcome = "connection_error"
    except TimeoutError:
        outcome = "timeout"
    done = time.perf_counter()
    rate = (tokens - 1) / (last - first) if tokens > 1 and last > first else None  # type: ignore[operator]
    ttft = None if first is None else round(first - sent, 6)
    return [outcome, ttft, round(done - sent, 6), tokens, rate, round(max_gap, 6),
            round(sent - origin, 6)]  # fmt: skip


async def _closed(session: Any, spec: dict[str, Any], body: bytes, out: list[Any]) -> None:
    n, budget = spec["concurrency"], [spec["max_requests"]]
    origin = time.perf_counter()
    end = origin + spec["duration_s"]

    async def client(i: int) -> None:
        await asyncio.sleep(spec["stagger_s"] * i / n)  # arrivals spread, not in lockstep
        while time.perf_counter() < end and budget[0] > 0:
            budget[0] -= 1
            out.append(await _stream_one(session, spec["url"], body, spec["tokens"], origin))

    await asyncio.gather(*(client(i) for i in range(n)))


async def _burst(session: Any, spec: dict[str, Any], body: bytes, out: list[Any]) -> None:
    n, ramp = spec["streams"], spec["ramp_s"]
    start = time.perf_counter()
    tasks = []
    for i in range(n):
        delay = start + ramp * i / n - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        one = _stream_one(session, spec["url"], body, spec["tokens"], start)
        tasks.append(asyncio.create_task(one))
    out.extend(await asyncio.gather(*tasks))


async def run_client(spec: dict[str, Any]) -> dict[str, Any]:
    import aiohttp

    if not spec["url"].startswith("http://127.0.0.1:"):
        raise ValueError(f"benchmarks only target 127.0.0.1, not {spec['url']}")
    body = json.dumps(
        {
            "model": spec["model"],
            "messages": [{"role": "user", "content": f"bench tokens={spec['tokens']}"}],
            "max_tokens": spec["tokens"],
            "stream": True,
        }
    ).encode()
    records: list[Any] = []
    connector = aiohttp.TCPConnector(limit=0)  # our own concurrency is the bound
    timeout = aiohttp.ClientTimeout(total=spec["request_timeout_s"], connect=10)
    headers = {"Content-Type": "application/json"}
    async with aiohttp.ClientSession(connector=connector, timeout=timeout,
                                     headers=headers) as session:  # fmt: skip
        cpu_before = resource.getrusage(resource.RUSAGE_SELF)
        started = time.perf_counter()
        if spec["mode"] == "closed":
            await _closed(session, spec, body, records)
        else:
            await _burst(session, spec, body, records)
        wall = time.perf_counter() - started
        cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    return {"records": records, "wall_s": round(wall, 4), "cpu_s": round(cpu, 4)}


def client_main() -> None:
    """`--client`: read a load's spec on stdin, run it, write the result to spec["out"]."""
    spec = json.load(sys.stdin)
    try:
        import uvloop
    except ImportError:
        result = asyncio.run(run_client(spec))
    else:
        result = uvloop.run(run_client(spec))
    Path(spec["out"]).write_text(json.dumps(result))


# -- the orchestrator ----------------------------------------------------------------------


def surge_config(port: int, workdir: Path, upstream_urls: dict[str, str]) -> dict[str, Any]:
    """`surge serve` with only `llm:`: one chat model per fake upstream, named after it,
    every bound raised past the streams the benchmark opens."""
    return {
        "server": {"host": "127.0.0.1", "port": port, "log_level": "info"},
        "registry_url": f"sqlite:///{workdir / 'registry.db'}",
        "llm": {
            "max_open_streams": 4096,
            "providers": {
                name: {"url": url, "max_connections": 2048, "max_concurrent_requests": 4096}
                for name, url in upstream_urls.items()
            },
            "models": {
                name: {
                    "backends": [{"provider": name, "model": UPSTREAM_MODEL}],
                    "max_concurrent_streams": 4096,
                }
                for name in upstream_urls
            },
        },
    }


class GatewayBench:
    def __init__(self, plan: Plan, workdir: Path, result: Report) -> None:
        self.plan, self.workdir, self.r = plan, workdir, result
        self.upstreams: dict[str, ServerProcess] = {}
        self.surge: ServerProcess | None = None
        self.loads = 0
        self.surge_requests = 0  # chat requests sent through surge, all loads together
        self.profile_out: Path | None = None  # where to keep py-spy's raw profile

    @contextlib.contextmanager
    def processes(self) -> Iterator[None]:
        import yaml

        from benchmarks.servers import free_port, run_process

        with contextlib.ExitStack() as stack:
            for name, (first_s, gap_s) in UPSTREAMS.items():
                port = free_port()
                argv = [sys.executable, "-m", "tests.fake_llm", "--port", str(port),
                        "--first-token-latency-s", str(first_s), "--token-latency-s", str(gap_s),
                        "--tokens", "32"]  # fmt: skip
                self.upstreams[name] = stack.enter_context(
                    run_process(f"upstream-{name}", argv, port, self.workdir, "/v1/models")
                )
            port = free_port()
            urls = {name: u.url + "/v1" for name, u in self.upstreams.items()}
            config = surge_config(port, self.workdir, urls)
            path = self.workdir / f"surge-{port}.yaml"
            path.write_text(yaml.safe_dump(config, sort_keys=False))
            argv = [sys.executable, "-m", "surge", "serve", "--config", str(path)]
            self.surge = stack.enter_context(
                run_process("surge", argv, port, self.workdir, "/v2/health/ready")
            )
            self.surge.notes["config"] = config
            log(f"upstreams and surge up (surge started in {self.surge.startup_s:.1f} s)")
            yield

    def spec(self, side: str, upstream: str, **load: Any) -> dict[str, Any]:
        if side == "direct":
            url, model = self.upstreams[upstream].url + CHAT_PATH, UPSTREAM_MODEL
        else:
            assert self.surge is not None
            url, model = self.surge.url + CHAT_PATH, upstream
        return {"url": url, "model": model, **load}

    def load(
        self,
        spec: dict[str, Any],
        bound_s: float,
        watch_memory: bool = False,
        hooks: Sequence[tuple[float, Callable[[], None]]] = (),
        quiet: bool = True,
        records: list[Any] | None = None,
    ) -> dict[str, Any]:
        """Run one load in a client process, measuring every process's CPU over it (and
        surge's RSS and open streams, with `watch_memory`); kill it past `bound_s`. Each
        hook runs once, that many seconds into the load; the requests' records are added
        to `records` (the result keeps only their summary)."""
        from benchmarks.servers import machine_busy, scrape_metrics, wait_for_quiet

        assert self.surge is not None
        surge = self.surge
        wait_s = self.plan.quiet_wait_s
        background_before = (
            wait_for_quiet(log, window_s=1.0, max_wait_s=wait_s) if quiet and wait_s else None
        )
        self.loads += 1
        out = self.workdir / f"client-{self.loads}.json"
        client_log = self.workdir / f"client-{self.loads}.log"
        procs = {"surge": surge, **{f"upstream-{n}": u for n, u in self.upstreams.items()}}
        before = {name: p.cpu() for name, p in procs.items()}
        busy_before, started = machine_busy(), time.monotonic()
        rss_before = surge.rss_mb()
        peak_rss, peak_open, next_scrape = rss_before, 0.0, started
        pending = sorted(hooks, key=lambda h: h[0])
        gauge = f'surge_llm_streams_open{{model="{spec["model"]}"}}'
        with client_log.open("wb") as sink:
            client = subprocess.Popen(
                [sys.executable, "-m", "benchmarks.llm_gateway", "--client"],
                stdin=subprocess.PIPE, stdout=sink, stderr=subprocess.STDOUT, cwd=REPO_ROOT,
            )  # fmt: skip
        assert client.stdin is not None
        client.stdin.write(json.dumps({**spec, "out": str(out)}).encode())
        client.stdin.close()
        while client.poll() is None:
            now = time.monotonic()
            if now - started > bound_s:
                client.kill()
                client.wait(10)
                raise RuntimeError(f"the load client ran past {bound_s:g} s; killed")
            while pending and now - started >= pending[0][0]:
                pending.pop(0)[1]()
            if watch_memory:
                peak_rss = max(peak_rss, surge.rss_mb())
                if now >= next_scrape:
                    next_scrape = now + 0.5
                    peak_open = max(peak_open, scrape_metrics(surge.url).get(gauge, 0.0))
            time.sleep(0.1)
        wall = max(time.monotonic() - started, 1e-9)
        after = {name: p.cpu() for name, p in procs.items()}
        busy = machine_busy() - busy_before
        if client.returncode != 0 or not out.exists():
            raise RuntimeError(f"load client failed ({client.returncode}): "
                               f"{client_log.read_text(errors='replace')[-2000:]}")  # fmt: skip
        result = json.loads(out.read_text())
        if spec["url"].startswith(surge.url):
            self.surge_requests += len(result["records"])
        if records is not None:
            records.extend(result["records"])
        # Cores over the load's own time (the window adds the client's start, when nothing
        # else runs); the machine's other load over the whole window.
        load_s = max(result["wall_s"], 1e-9)
        used = {name: after[name].since(before[name])["cpu_s"] for name in procs}
        used["upstream"] = sum(v for k, v in used.items() if k.startswith("upstream-"))
        used["client"] = result["cpu_s"]
        cpu = {k: {"cpu_s": round(v, 3), "cores": round(v / load_s, 3)} for k, v in used.items()}
        ours = used["surge"] + used["upstream"] + used["client"]
        run = {
            "spec": {k: v for k, v in spec.items() if k != "out"},
            "summary": summarize(result["records"]),
            "client_wall_s": result["wall_s"],
            "window_s": round(wall, 3),
            "cpu": cpu,
            "machine_busy_cores": round(busy / wall, 3),
            "background_cores": round(max(0.0, busy - ours) / wall, 3),
            "background_cores_before": background_before,
        }
        if watch_memory:
            run["rss_before_mb"] = round(rss_before, 1)
            run["rss_peak_mb"] = round(peak_rss, 1)
            run["peak_open_streams"] = int(peak_open)
        return run

    # -- (0) what one request costs

    def overhead(self) -> None:
        """Short answers (one token) from 8 closed-loop clients: surge's CPU per request,
        and the upstream connections opened per request (keep-alive should make it ~0)."""
        p = self.plan
        port = int(self.upstreams["paced"].url.rsplit(":", 1)[1])
        spec = {"mode": "closed", "concurrency": 8, "tokens": 1, "duration_s": 20,
                "stagger_s": 0.02, "request_timeout_s": 30,
                "max_requests": p.overhead_requests}  # fmt: skip
        self.load(self.spec("surge", "paced", **{**spec, "max_requests": 50}), 60, quiet=False)
        closed_before = _closed_connections(port)
        run = self.load(self.spec("surge", "paced", **spec), 60)
        opened = _closed_connections(port) - closed_before
        s = run["summary"]
        answered = max(s["requests"], 1)
        run["surge_cpu_us_per_request"] = round(run["cpu"]["surge"]["cpu_s"] / answered * 1e6)
        run["upstream_connections_closed"] = opened
        self.r.details["overhead"] = run
        log(f"overhead: {s['requests']} requests, {run['surge_cpu_us_per_request']} µs surge CPU "
            f"each, {opened} upstream connections closed")  # fmt: skip
        self.r.add("overhead", "surge CPU per chat request (1-token answers)",
                   run["surge_cpu_us_per_request"], "µs", f"{s['requests']} requests, 8 clients; "
                   f"TTFT p50 {s['ttft_ms'].get('p50')} ms (upstream: 20 ms)")  # fmt: skip
        self.r.judge("overhead", "upstream connections opened per chat request",
                     round(opened / answered, 3), "<=", 0.05, "",
                     "connections to the upstream that ended in TIME_WAIT during the run / "
                     "requests; keep-alive reuses them", 7)  # fmt: skip

    # -- (1) added latency

    def latency(self) -> None:
        """At the issue's 100 streams (judged), then at a light load (reported): what surge
        adds when its loop has time to spare, apart from what saturation adds."""
        self._latency(self.plan.latency_streams, "latency", judged=True)
        self._latency(self.plan.light_streams, "latency_light", judged=False)

    def _latency(self, streams: int, key: str, judged: bool) -> None:
        p = self.plan
        first, gap = UPSTREAMS["paced"]
        expected_s = first + gap * (p.latency_tokens - 1)
        bound = p.latency_round_s + expected_s + 60

        def spec(side: str, seconds: float) -> dict[str, Any]:
            return self.spec(side, "paced", mode="closed", tokens=p.latency_tokens,
                             concurrency=streams, duration_s=seconds,
                             max_requests=int(streams * (seconds / expected_s + 2)),
                             stagger_s=expected_s, request_timeout_s=30)  # fmt: skip

        for side in ("direct", "surge"):
            self.load(spec(side, p.warmup_s), bound, quiet=False)  # connections, code paths
        runs: dict[str, list[dict[str, Any]]] = {"direct": [], "surge": []}
        records: dict[str, list[Any]] = {"direct": [], "surge": []}
        for i in range(p.latency_rounds):
            for side in ("direct", "surge") if i % 2 == 0 else ("surge", "direct"):
                run = self.load(spec(side, p.latency_round_s), bound, records=records[side])
                runs[side].append(run)
                s = run["summary"]
                log(f"latency {streams} streams, round {i + 1} {side}: {s['ok']}/"
                    f"{s['requests']} ok, TTFT p50 {s['ttft_ms'].get('p50')} p99 "
                    f"{s['ttft_ms'].get('p99')} ms, surge {run['cpu']['surge']['cores']} "
                    "cores")  # fmt: skip
        pooled = {side: summarize(records[side]) for side in runs}  # every round's requests
        added = added_latency(pooled["direct"], pooled["surge"])
        self.r.details[key] = {"streams": streams, "runs": runs, "pooled": pooled,
                               "added": added}  # fmt: skip
        for metric, q, limit, headline in (("ttft", "p50", TARGET_ADDED_P50_MS, 1),
                                           ("ttft", "p99", TARGET_ADDED_P99_MS, 2),
                                           ("total", "p50", TARGET_ADDED_P50_MS, 3),
                                           ("total", "p99", TARGET_ADDED_P99_MS, 4)):  # fmt: skip
            d = pooled["direct"][f"{metric}_ms"].get(q)
            s = pooled["surge"][f"{metric}_ms"].get(q)
            name = f"added {'TTFT' if metric == 'ttft' else 'total time'} {q}, {streams} streams"
            note = (
                f"direct {d} vs surge {s} ms; {p.latency_rounds} x {p.latency_round_s:g} s a side"
            )
            value = added[f"{metric}_{q}_ms"]
            if judged:
                self.r.judge("latency", name, value, "<=", limit, "ms", note, headline)
            else:
                self.r.add("latency", name, value, "ms", note)
        errors = pooled["direct"]["errors"] + pooled["surge"]["errors"]
        self.r.judge("latency", f"failed streams, {streams} streams (both sides)", errors, "==",
                     0, "", f"{pooled['surge']['requests']} via surge, "
                     f"{pooled['direct']['requests']} direct")  # fmt: skip

    # -- (2) many paced streams

    def streams(self) -> None:
        from benchmarks.servers import scrape_metrics

        p = self.plan
        assert self.surge is not None
        first, gap = UPSTREAMS["steady"]
        stream_s = first + gap * (p.stream_tokens - 1)
        spec = {"mode": "burst", "streams": p.streams, "ramp_s": p.ramp_s,
                "tokens": p.stream_tokens, "request_timeout_s": stream_s * 3 + 30}  # fmt: skip
        bound = p.ramp_s + stream_s * 3 + 90
        out: dict[str, Any] = {}
        out["direct"] = self.load(self.spec("direct", "steady", **spec), bound)
        rss_idle = self.surge.rss_mb()
        out["surge"] = run = self.load(self.spec("surge", "steady", **spec), bound, True)
        wait_s = 3.0
        time.sleep(wait_s)  # the streams' books close, their buffers go back
        rss_after = self.surge.rss_mb()
        open_after = scrape_metrics(self.surge.url).get('surge_llm_streams_open{model="steady"}')
        ok = run["summary"]["ok"]
        before, peak = run["rss_before_mb"], run["rss_peak_mb"]
        held = run["peak_open_streams"] or run["summary"]["peak_streaming"]
        run["memory"] = {
            "rss_idle_before_quiet_wait_mb": round(rss_idle, 1),
            "rss_before_mb": before,
            "rss_peak_mb": peak,
            "rss_after_mb": round(rss_after, 1),
            "after_wait_s": wait_s,
            "per_stream_kb": round((peak - before) * 1024 / max(held, 1), 1),
            "streams_open_after": open_after,
        }
        tokens = run["summary"]["tokens"]
        run["surge_cpu_us_per_token"] = round(
            run["cpu"]["surge"]["cpu_s"] / max(tokens, 1) * 1e6, 2
        )
        self.r.details["streams"] = out
        for side in ("direct", "surge"):
            s = out[side]["summary"]
            rate = s["rate_tok_s"]
            log(f"streams {side}: {s['ok']}/{s['requests']} ok, rate p50 "
                f"{rate.get('p50')} tok/s, min {rate.get('min')}")  # fmt: skip
        d_rate = out["direct"]["summary"]["rate_tok_s"]
        s_rate = run["summary"]["rate_tok_s"]
        self.r.judge("streams", f"streams completed without error, of {p.streams:,}", ok, ">=",
                     p.streams, "", f"outcomes {run['summary']['outcomes']}", 5)  # fmt: skip
        direct_peak = out["direct"]["summary"]["peak_streaming"]
        self.r.judge("streams", "streams held at once through surge (peak)",
                     run["summary"]["peak_streaming"], ">=", min(p.streams, direct_peak), "",
                     f"between first token and end, as the client saw them; direct "
                     f"{direct_peak}; surge's own gauge {run['peak_open_streams']}", 6)  # fmt: skip
        self.r.add("streams", "tokens/s per stream via surge, p50", s_rate.get("p50"), "tok/s",
                   f"p10 {s_rate.get('p10')}, min {s_rate.get('min')}; direct p50 "
                   f"{d_rate.get('p50')}, min {d_rate.get('min')}")  # fmt: skip
        ratio = (round(s_rate["p50"] / d_rate["p50"], 3)
                 if s_rate.get("p50") and d_rate.get("p50") else None)  # fmt: skip
        self.r.judge("streams", "tokens/s per stream p50, surge / direct", ratio, ">=", 0.95, "x",
                     "the upstream paces 20 tokens/s; surge should not slow a stream")  # fmt: skip
        self.r.add("streams", "surge RSS before / peak / after", f"{before} / {peak} / "
                   f"{round(rss_after, 1)}", "MB", f"{run['memory']['per_stream_kb']} kB per "
                   f"stream at peak; after = {wait_s:g} s after the last stream")  # fmt: skip
        self.r.judge("streams", "surge RSS after - before", round(rss_after - before, 1), "<",
                     RSS_GROWTH_LIMIT_MB, "MB", "the streams' memory goes back")  # fmt: skip
        cpu = run["cpu"]
        self.r.add("streams", "surge CPU over the run", cpu["surge"]["cpu_s"], "s",
                   f"{cpu['surge']['cores']} cores over {run['window_s']} s; "
                   f"{run['surge_cpu_us_per_token']} µs per token")  # fmt: skip
        self.r.add("streams", "upstream / client CPU over the run",
                   f"{cpu['upstream']['cpu_s']} / {cpu['client']['cpu_s']}", "s",
                   f"{cpu['upstream']['cores']} / {cpu['client']['cores']} cores; background "
                   f"{run['background_cores']} cores")  # fmt: skip

    # -- (3) tokens per core

    def throughput(self) -> None:
        p = self.plan
        spec = {"mode": "closed", "tokens": p.fast_tokens, "concurrency": p.fast_streams,
                "duration_s": p.fast_s, "stagger_s": 0.05, "request_timeout_s": 60,
                "max_requests": 100_000}  # fmt: skip
        bound = p.fast_s + 90
        self.load(self.spec("surge", "fast", **{**spec, "duration_s": p.warmup_s}), bound,
                  quiet=False)  # fmt: skip
        pairs = []
        for _ in range(p.fast_rounds):
            pair = {}
            for side in ("direct", "surge"):
                run = self.load(self.spec(side, "fast", **spec), bound)
                tokens = run["summary"]["tokens"]
                run["tokens_per_s"] = round(tokens / run["client_wall_s"], 1)
                if side == "surge":
                    surge_s = run["cpu"]["surge"]["cpu_s"]
                    run["tokens_per_surge_cpu_s"] = round(tokens / max(surge_s, 1e-9), 1)
                    run["surge_cpu_us_per_token"] = round(surge_s / max(tokens, 1) * 1e6, 2)
                pair[side] = run
                log(f"throughput {side}: {run['tokens_per_s']} tokens/s"
                    + (f", {run.get('tokens_per_surge_cpu_s')} per surge CPU-s"
                       if side == "surge" else ""))  # fmt: skip
            pairs.append(pair)
        self.r.details["throughput"] = {"runs": pairs}
        best = max((pair["surge"] for pair in pairs), key=lambda r: r["tokens_per_surge_cpu_s"])
        direct = max(pair["direct"]["tokens_per_s"] for pair in pairs)
        self.r.add("throughput", "tokens relayed per surge CPU-second",
                   best["tokens_per_surge_cpu_s"], "tok/CPU-s",
                   f"{best['tokens_per_s']} tokens/s at {best['cpu']['surge']['cores']} surge "
                   f"cores; {best['surge_cpu_us_per_token']} µs per token; "
                   f"best of {p.fast_rounds}")  # fmt: skip
        self.r.add("throughput", "tokens/s direct (upstream + client alone)", direct, "tok/s",
                   f"{p.fast_streams} streams of {p.fast_tokens} tokens")  # fmt: skip
        self.r.judge("throughput", "failed streams", sum(pair[s]["summary"]["errors"]
                     for pair in pairs for s in pair), "==", 0)  # fmt: skip

    # -- (4) profile

    def profile(self) -> None:
        p = self.plan
        assert self.surge is not None
        py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        if not Path(py_spy).exists():
            self.r.details["profile"] = {"skipped": "py-spy is not installed "
                                         "(`.venv/bin/pip install py-spy`)"}  # fmt: skip
            return
        version = subprocess.run([py_spy, "--version"], capture_output=True, text=True,
                                 timeout=30, check=False).stdout.strip()  # fmt: skip
        raw, spy_log = self.workdir / "surge-profile.txt", self.workdir / "py-spy.log"
        spy: list[subprocess.Popen[bytes]] = []
        argv = [py_spy, "record", "--pid", str(self.surge.pid), "--duration", str(int(p.profile_s)),
                "--rate", str(PROFILE_RATE_HZ), "--format", "raw", "--nolineno", "--threads",
                "--native", "--output", str(raw)]  # fmt: skip

        def start() -> None:
            with spy_log.open("wb") as sink:
                spy.append(subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT))

        # Long streams, opened over `ramp`, all still running while py-spy samples: the
        # steady state of relaying tokens, not the setup of requests.
        ramp, gap = 2.0, UPSTREAMS["steady"][1]
        tokens = int((ramp + p.profile_s + 2) / gap)
        spec = {"mode": "burst", "streams": p.profile_streams, "ramp_s": ramp, "tokens": tokens,
                "request_timeout_s": tokens * gap * 3 + 30}  # fmt: skip
        run = self.load(self.spec("surge", "steady", **spec), tokens * gap * 3 + 90,
                        hooks=[(ramp + 0.5, start)])  # fmt: skip
        if not spy:
            raise RuntimeError("py-spy never started: the load ended before its time")
        spy[0].wait(p.profile_s + 60)
        if spy[0].returncode != 0 or not raw.exists():
            raise RuntimeError(f"py-spy failed: {spy_log.read_text(errors='replace')[-2000:]}")
        if self.profile_out is not None:
            shutil.copyfile(raw, self.profile_out)
        samples = parse_raw_profile(raw.read_text().splitlines())
        main = profile_shares(samples)
        s = run["summary"]
        busy = round(main["samples"] / (p.profile_s * PROFILE_RATE_HZ), 3)
        self.r.details["profile"] = {
            "load": f"{p.profile_streams} streams of {tokens} tokens at 20 tokens/s through "
                    f"surge, opened over {ramp:g} s ({s['ok']} of {s['requests']} ok; TTFT p50 "
                    f"{s['ttft_ms'].get('p50')} ms; surge at {run['cpu']['surge']['cores']} cores,"
                    f" background {run['background_cores']} cores)",
            "py_spy": version.split()[-1] if version else "?",
            "duration_s": p.profile_s,
            "loop_busy_share": busy,
            "outcomes": s["outcomes"],
            "main": main,
            "samples_by_thread": dict(_by_thread(samples)),
        }  # fmt: skip
        top = ", ".join(f"{name} {_pct(share)}" for name, share in main.get("buckets", [])[:3])
        self.r.add("profile", "event loop busy while sampled", busy, "", f"{main['samples']} "
                   f"samples; GC {_pct(main.get('gc_share', 0))}; top: {top}")  # fmt: skip


def _closed_connections(port: int) -> int:
    """TCP connections to or from `port` in TIME_WAIT now (each one a connection that was
    closed in the last minute): how many upstream connections a run went through."""
    import psutil

    return sum(
        1
        for c in psutil.net_connections(kind="tcp")
        if c.status == psutil.CONN_TIME_WAIT
        and port in (c.laddr.port if c.laddr else None, c.raddr.port if c.raddr else None)
    )


def _by_thread(samples: Sequence[tuple[str, list[str], int]]) -> Counter[str]:
    counts: Counter[str] = Counter()
    for name, _, n in samples:
        counts[name] += n
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.llm_gateway",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="short smoke version")
    parser.add_argument("--out", help="results file stem under benchmarks/results/")
    parser.add_argument(
        "--only", help="comma-separated: overhead,latency,streams,throughput,profile"
    )
    parser.add_argument("--profile-out", type=Path, help="keep py-spy's raw profile here")
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.client:
        client_main()
        return 0
    from benchmarks import report

    parts = ("overhead", "latency", "streams", "throughput", "profile")
    selected = [s.strip() for s in args.only.split(",")] if args.only else list(parts)
    unknown = sorted(set(selected) - set(parts))
    if unknown:
        raise SystemExit(f"unknown part(s) {unknown}; choose from {', '.join(parts)}")
    plan = QUICK if args.quick else FULL
    stem = args.out or ("llm_gateway_quick" if args.quick else "llm_gateway")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 16384:  # 1,000 streams: a socket each at the client, two at surge
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 16384), hard))
    machine = report.machine_facts()
    started = time.perf_counter()
    result = report.Report()
    log(f"llm gateway: {', '.join(selected)} ({'quick' if args.quick else 'full'})")
    with tempfile.TemporaryDirectory(prefix="surge-bench-llm-") as tmp:
        bench = GatewayBench(plan, Path(tmp), result)
        bench.profile_out = args.profile_out
        with bench.processes():
            assert bench.surge is not None
            result.details["surge_rss_at_start_mb"] = round(bench.surge.rss_mb(), 1)
            result.details["surge_startup_s"] = round(bench.surge.startup_s, 2)
            for part in parts:
                if part in selected:
                    log(f"llm gateway: {part}")
                    result.guarded(part, getattr(bench, part), log)
            text = bench.surge.log_path.read_text(errors="replace")
            result.details["surge_log"] = {
                "requests": bench.surge_requests,
                "lines": text.count("\n"),
                "client_lines": sum(
                    text.count(f'"logger": "{name}') for name in ("httpx", "aiohttp")
                ),
                "tail": bench.surge.log_tail(3),
            }
    result.sort(list(parts))
    doc = {
        "title": "surge chat gateway: added latency, streams held, tokens per core"
        + (" (quick)" if args.quick else ""),
        "quick": args.quick,
        "machine": machine,
        "plan": asdict(plan),
        "upstreams_s": {k: list(v) for k, v in UPSTREAMS.items()},
        "elapsed_s": round(time.perf_counter() - started, 1),
        "figures": [asdict(f) for f in result.figures],
        "details": result.details,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    text = render(doc)
    (RESULTS / f"{stem}.json").write_text(json.dumps(doc, indent=1, default=str) + "\n")
    (RESULTS / f"{stem}.md").write_text(text)
    print(text)
    log(f"wrote benchmarks/results/{stem}.json and .md in {doc['elapsed_s']:.0f} s")
    return 0 if all(f.met is not False for f in result.figures) else 1


if __name__ == "__main__":
    sys.exit(main())
