"""What the response cache buys, and what it costs when it cannot help.

    python -m benchmarks.cache            # full run, about 5 minutes on 2 cores
    python -m benchmarks.cache --quick    # smoke version, about a minute

Writes benchmarks/results/cache.json and .md (cache_quick for --quick) and prints the
markdown; the exit status is 1 when a target is missed.

1. zipf: one server, two endpoints of the demo's embed model: `embed` with a cache
   (memory only) and `embed_plain` without. Clients send one sentence per request
   (`POST /v1/embeddings`), drawn Zipf(s=1.1) from 10,000 distinct sentences in one
   fixed sequence, 32 closed-loop connections (wrk, whose Lua reads the sequence from a
   file, so every connection takes the next draw). Per round and side: the cache is
   purged, a warm-up plays the start of the sequence, then the measured run goes on
   from where the warm-up stopped. Sides alternate; the best run of each is compared:
   throughput on/off (target >= 3x), p50 on/off (target <= 1/3), the hit rate the
   server counted, and the hit rate an unbounded cache would reach on the same stretch
   of the sequence.
2. spike: 1,000 requests of one new sentence from 64 concurrent clients (aiohttp), on
   `embed` (coalescing on) and `embed_nocoalesce` (the same cache, coalescing off), in
   alternating rounds, each with a sentence never sent before: model runs (batches) and
   rows computed per 1,000 requests from /metrics, and from the receipts how many
   requests computed (miss), waited for another's answer (coalesced) or found it stored
   (hit). Without coalescing the requests sent before the first answer was stored all
   compute; the later ones hit.
3. miss: the `noop` model (the cheapest) behind three endpoints of one server: no
   cache, a memory cache and a memory + Redis cache (coalescing on: the defaults),
   every request a new input (0 % hits), wrk 32 connections, alternating rounds:
   throughput cached / uncached (target >= 0.95x), server and redis-server CPU per
   request, how often the cache's Redis was marked down (its log line) and how many of
   the computed rows reached Redis. Then py-spy (`--gil`) samples the server under the
   same load on each cached endpoint and the report lists where the cache's own time
   goes (its frames, not the model's path it wraps), by part and by frame. The Redis
   keys of the run's namespace (a fresh `registry_namespace`) are deleted afterwards.

Burst modes are off on both servers: they react to the whole server's p99, so a mode
entered while one side is loaded would change the next side's deadlines.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import itertools
import json
import math
import os
import random
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from benchmarks import report, wrk
from benchmarks.run import RESULTS, base_parser, log, publish
from benchmarks.security import REDIS_URL, redis_cpu_s
from benchmarks.servers import ServerProcess, measure, scrape_metrics, surge_server
from benchmarks.settings import NOOP_CONNECTIONS, TARGET_CLIENTS
from benchmarks.workload import OBJECTS, SUBJECTS, TAILS, VERBS
from surge.config import DEMO_CONFIG

ZIPF_S = 1.1
DISTINCT = 10_000
SEQUENCE_LEN = 250_000  # draws in the fixed sequence: more than any run sends
SEED = 16
SPIKE_REQUESTS = 1_000
SPIKE_CLIENTS = 64
ADMIN_KEY = secrets.token_hex(16)
NOOP_INFER = "/v2/models/{endpoint}/infer"
REDIS_DOWN = "unreachable (no answer"  # the log line of the cache's Redis marked down
CACHE = {"ttl_s": 300, "max_bytes": 64 << 20}
MODES_OFF = {"modes": {"enabled": False}}
ZIPF_COLUMNS = ["round", "endpoint", "req/s", "p50 ms", "p99 ms", "hit rate", "unbounded hit rate",
                "batches", "rows/batch", "CPU µs/req", "other cores"]  # fmt: skip
SPIKE_COLUMNS = ["round", "endpoint", "sent", "200s", "model runs", "rows computed", "miss",
                 "coalesced", "hit", "first answer ms", "spike ms"]  # fmt: skip
MISS_COLUMNS = ["round", "endpoint", "req/s", "p50 ms", "p99 ms", "hit rate", "server CPU µs/req",
                "event loop µs/req", "redis-server µs/req", "Redis marked down",
                "other cores"]  # fmt: skip


@dataclass(frozen=True)
class Durations:
    zipf_s: float  # measured, per round and side
    zipf_warmup_s: float  # the start of the sequence, before each measured run
    zipf_rounds: int
    spike_rounds: int  # with and without coalescing alternate this many times
    noop_s: float
    noop_rounds: int
    profile_s: float  # py-spy, per cached noop endpoint
    quiet_wait_s: float  # longest wait for other processes to go quiet before a run


FULL = Durations(20, 3, 3, 3, 8, 3, 8, 5)
QUICK = Durations(4, 1, 1, 1, 3, 1, 3, 2)


# -- the workload (pure) -----------------------------------------------------------------


def distinct_sentences(n: int = DISTINCT, seed: int = SEED) -> list[str]:
    """`n` different one-clause sentences (subject verb object tail), the same every run:
    distinct codes of the word lists' product, decoded digit by digit."""
    parts = (SUBJECTS, VERBS, OBJECTS, TAILS)
    total = math.prod(len(p) for p in parts)
    if not 0 <= n <= total:
        raise ValueError(f"the word lists make {total} sentences, not {n}")
    out = []
    for code in random.Random(seed).sample(range(total), n):
        words = []
        for part in parts:
            code, k = divmod(code, len(part))
            words.append(part[k])
        text = " ".join(words)
        out.append(text[0].upper() + text[1:] + ".")
    return out


class ZipfSampler:
    """Ranks 0..n-1 with P(rank k) proportional to (k + 1) ** -s, by inverse CDF."""

    def __init__(self, n: int, s: float, seed: int) -> None:
        if n < 1 or s <= 0:
            raise ValueError(f"need n >= 1 and s > 0, got n={n}, s={s}")
        weights = [(k + 1) ** -s for k in range(n)]
        total = math.fsum(weights)
        self.probabilities = [w / total for w in weights]
        self._cdf = list(itertools.accumulate(self.probabilities))
        self._cdf[-1] = 1.0  # rounding must never leave a draw past the last rank
        self._rng = random.Random(seed)

    def sample(self, count: int) -> list[int]:
        return [bisect.bisect_right(self._cdf, self._rng.random()) for _ in range(count)]


def unbounded_hit_rate(sequence: Sequence[int], start: int, end: int) -> float:
    """Share of the draws in [start, end) seen before in the sequence: the hit rate of
    a cache that forgets nothing, given everything before `start` was sent too."""
    end = min(end, len(sequence))
    if end <= start:
        return 0.0
    seen = set(sequence[:start])
    hits = 0
    for item in sequence[start:end]:
        if item in seen:
            hits += 1
        else:
            seen.add(item)
    return hits / (end - start)


def cache_results(delta: dict[str, float], endpoint: str) -> dict[str, float]:
    """The server's `surge_cache_requests_total` by result for `endpoint` over a run."""
    prefix = f'surge_cache_requests_total{{endpoint="{endpoint}",result="'
    return {k[len(prefix) : -2]: v for k, v in delta.items() if k.startswith(prefix)}


def hit_share(results: dict[str, float]) -> float | None:
    """Requests answered without computing (hit, stale) / all; coalesced not included."""
    total = sum(results.values())
    if not total:
        return None
    return round((results.get("hit", 0) + results.get("stale", 0)) / total, 4)


# -- wrk with a scripted sequence of bodies ------------------------------------------------

LUA_DONE = """
response = function(status, headers, body)
  count = count + 1
  if count >= cap then wrk.thread:stop() end
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '%(marker)s{"requests": %%d, "duration_us": %%d, "connect": %%d, "read": %%d, '
    .. '"write": %%d, "status": %%d, "timeout": %%d, "p50_us": %%d, "p90_us": %%d, '
    .. '"p99_us": %%d, "max_us": %%d, "mean_us": %%.1f}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
end
"""

# Bodies one per line; the order file lists 0-based body indices. Request i (from 1)
# sends body order[start + i]: a run can go on where the previous one stopped.
SEQUENCE_LUA = (
    """
local bodies, order = {}, {}
for line in io.lines(%(bodies)s) do bodies[#bodies + 1] = line end
for line in io.lines(%(order)s) do order[#order + 1] = tonumber(line) + 1 end
local start, sent, count, cap = %(start)d, 0, 0, %(cap)d
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  sent = sent + 1
  return wrk.format(nil, nil, nil, bodies[order[(start + sent - 1) %% #order + 1]])
end
"""
    + LUA_DONE
)

# A v2 body no request of any run repeats: the run's salt and a counter in the data.
UNIQUE_LUA = (
    """
local salt, sent, count, cap = %(salt)d, 0, 0, %(cap)d
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  sent = sent + 1
  return wrk.format(nil, nil, nil, string.format('{"inputs": [{"name": "input", '
    .. '"datatype": "FP32", "shape": [1, 8], "data": [%%d.5, %%d.5, 0.5, 0.5, 0.5, 0.5, '
    .. '0.5, 0.5]}]}', salt, sent))
end
"""
    + LUA_DONE
)


def _lua_path(path: Path) -> str:
    return f"[==[{path}]==]"


def sequence_script(bodies: Path, order: Path, start: int, cap: int) -> str:
    fields = {"bodies": _lua_path(bodies), "order": _lua_path(order), "start": start,
              "cap": cap, "marker": wrk.MARKER}  # fmt: skip
    return SEQUENCE_LUA % fields


def unique_script(salt: int, cap: int) -> str:
    if not 0 <= salt < 2**21:  # salt.5 and counter.5 stay exact in float32
        raise ValueError(f"salt {salt} out of range")
    return UNIQUE_LUA % {"salt": salt, "cap": cap, "marker": wrk.MARKER}


def run_wrk(url: str, lua: str, connections: int, duration_s: float, cap: int) -> dict[str, Any]:
    """wrk with a script of our own; the same result fields as `benchmarks.wrk.run`."""
    if not url.startswith("http://127.0.0.1:"):
        raise ValueError(f"benchmarks only target 127.0.0.1, not {url}")
    with tempfile.TemporaryDirectory(prefix="surge-wrk-cache-") as tmp:
        script = Path(tmp) / "load.lua"
        script.write_text(lua)
        out = Path(tmp) / "stdout"
        argv = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration_s))}s",
                "--timeout=10s", "-s", str(script), url]  # fmt: skip
        with out.open("wb") as stdout:
            started = time.monotonic()
            process = subprocess.Popen(argv, stdout=stdout, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)  # wrk's own CPU time
        process.returncode = os.waitstatus_to_exitcode(status)
        wall = time.monotonic() - started
        text = out.read_text(errors="replace")
    line = next((ln for ln in text.splitlines() if ln.startswith(wrk.MARKER)), None)
    if process.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({process.returncode}): {text[-2000:]}")
    raw = json.loads(line[len(wrk.MARKER) :])
    seconds = raw["duration_us"] / 1e6
    ok = raw["requests"] - raw["status"]
    return {
        "generator": "wrk",
        "connections": connections,
        "duration_s": round(seconds, 3),
        "requests": raw["requests"],
        "ok": ok,
        "non_2xx": raw["status"],
        "socket_errors": raw["connect"] + raw["read"] + raw["write"] + raw["timeout"],
        "rps": round(raw["requests"] / seconds, 1),
        "ok_rps": round(ok / seconds, 1),
        "capped": raw["requests"] >= cap,
        "latency_ms": {q: raw[f"{q}_us"] / 1000 for q in ("p50", "p90", "p99", "max")}
        | {"mean": round(raw["mean_us"] / 1000, 3)},
        "generator_cores": round((usage.ru_utime + usage.ru_stime) / wall, 3),
    }


# -- py-spy: where the cache's time goes (pure parsing) ------------------------------------

CACHE_CODE = ("surge/serving/response_cache.py", "surge/cache/")
# Below the cache, surge/serving/ is the model's path the cache wraps (deployment.infer).
WRAPPED_CODE = "surge/serving/"


def _frame_path(frame: str) -> str:
    return frame.rpartition(" (")[2].rstrip(")").rpartition(":")[0]


def frame_name(frame: str) -> str:
    """`function (file)` without the line; the file as py-spy names it (relative to its
    package root), or from `surge/` or `site-packages/` on when the path is absolute."""
    function, _, _ = frame.rpartition(" (")
    path = _frame_path(frame)
    if "surge/" in path:
        path = "surge/" + path.rsplit("surge/", 1)[1]
    elif "site-packages/" in path:
        path = path.rsplit("site-packages/", 1)[1]
    elif path.startswith("/"):
        path = "/".join(path.split("/")[-2:])
    return f"{function} ({path})"


def _is_redis(function: str, path: str) -> bool:
    return path.startswith("redis/") or "/redis/" in path or "redis" in path.rpartition("/")[2]


MISS_WRAPPER = ("EndpointCache._compute", "leader", "_computed_once", "_compute_guarded")
# What a cache sample was doing, decided by the innermost frame that matches a part (in
# this order); samples matching none are EndpointCache.run's own lines and the like.
PARTS: list[tuple[str, Any]] = [
    ("Redis: client calls, connects (GuardedRedis, redis-py)", _is_redis),
    ("store: encode rows, memory put",
     lambda f, p: f == "EndpointCache._store" or ("codec.py" in p and f.startswith("encode"))
     or ("memory.py" in p and "put" in f)),
    ("keys: row keys, flight key", lambda f, p: "keys.py" in p or f.endswith("_flight_key")),
    ("look-up: memory get", lambda f, p: f == "EndpointCache._look_up" or "memory.py" in p),
    ("hits: decode and stack rows", lambda f, p: f == "EndpointCache._assemble" or "codec.py" in p),
    ("miss wrapper: single flight (a task, shield and timeout per miss)",
     lambda f, p: "coalesce.py" in p or f.endswith(MISS_WRAPPER)),
]  # fmt: skip
OTHER_PART = "the rest: EndpointCache.run's own lines, receipt fields"


def part_of(frames: list[str]) -> str:
    for frame in reversed(frames):
        function, path = frame.rpartition(" (")[0], _frame_path(frame)
        for part, matches in PARTS:
            if matches(function, path):
                return part
    return OTHER_PART


def parse_collapsed(text: str) -> list[tuple[list[str], int]]:
    """py-spy's raw (collapsed) output: one `frame;frame;... count` line per stack."""
    stacks = []
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks.append((stack.split(";"), int(count)))
    return stacks


def summarise_profile(stacks: list[tuple[list[str], int]], top: int = 12) -> dict[str, Any]:
    """The cache's own samples (a cache frame on the stack and nothing of the model's path
    below it), by function (inclusive) and by the innermost frame (self)."""
    total = sum(n for _, n in stacks)
    own = wrapped = 0
    inclusive: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    parts: Counter[str] = Counter()
    for frames, n in stacks:
        paths = [_frame_path(f) for f in frames]
        first = next((i for i, p in enumerate(paths) if any(c in p for c in CACHE_CODE)), None)
        if first is None:
            continue
        below = paths[first:]
        if any(WRAPPED_CODE in p and CACHE_CODE[0] not in p for p in below):
            wrapped += n
            continue
        own += n
        for name in {frame_name(f) for f in frames[first:]}:
            inclusive[name] += n
        leaves[frame_name(frames[-1])] += n
        parts[part_of(frames[first:])] += n

    def rows(counter: Counter[str]) -> list[dict[str, Any]]:
        return [{"frame": name, "samples": n, "share": round(n / total, 4) if total else 0.0}
                for name, n in counter.most_common(top)]  # fmt: skip

    return {
        "samples": total,
        "cache_samples": own,
        "cache_share": round(own / total, 4) if total else 0.0,
        "model_path_under_cache_samples": wrapped,
        "parts": [{"part": part, "samples": n, "share": round(n / total, 4)}
                  for part, n in parts.most_common()],
        "inclusive": rows(inclusive),
        "self": rows(leaves),
    }  # fmt: skip


def profile_markdown(name: str, summary: dict[str, Any]) -> list[str]:
    lines = [
        f"### {name}: {summary['cache_samples']} of {summary['samples']} samples "
        f"({summary['cache_share']:.1%}) in the cache's own code",
        "",
        "| part of the cache | share of all samples |",
        "|---|---:|",
        *(f"| {p['part']} | {p['share']:.1%} |" for p in summary["parts"]),
        "",
        "| frame (inclusive) | share of all samples | | innermost frame (self) | share |",
        "|---|---:|---|---|---:|",
    ]
    inclusive, leaves = summary["inclusive"], summary["self"]
    for i in range(max(len(inclusive), len(leaves))):
        a = inclusive[i] if i < len(inclusive) else None
        b = leaves[i] if i < len(leaves) else None
        left = f"`{a['frame']}` | {a['share']:.1%}" if a else " | "
        right = f"`{b['frame']}` | {b['share']:.1%}" if b else " | "
        lines.append(f"| {left} | | {right} |")
    return [*lines, ""]


def rounds_markdown(columns: list[str], rows: list[list[Any]]) -> list[str]:
    """A plain table; None shows as n/a, floats as report formats them."""

    def cell(value: Any) -> str:
        return report._fmt(value) if value is None or isinstance(value, float) else str(value)

    return [
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
        *("| " + " | ".join(cell(v) for v in row) + " |" for row in rows),
        "",
    ]


# -- the benchmarks ---------------------------------------------------------------------


def _admin_post(url: str, path: str) -> Any:
    request = urllib.request.Request(url + path, data=b"", method="POST",
                                     headers={"Authorization": f"Bearer {ADMIN_KEY}"})  # fmt: skip
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


class CacheBenchmarks:
    def __init__(self, d: Durations, repository: Path, workdir: Path, r: report.Report) -> None:
        self.d, self.repository, self.workdir, self.r = d, repository, workdir, r
        self.notes: list[str] = []  # markdown sections after the figures
        self.namespace = f"bench_cache_{uuid.uuid4().hex[:8]}"

    def server(self, name: str, endpoints: dict[str, Any], **extra: Any) -> Any:
        db = self.workdir / f"{name}-{secrets.token_hex(4)}.db"
        extra = {"registry_url": f"sqlite:///{db}", **MODES_OFF, **extra}
        env = {"SURGE_ADMIN_KEY": ADMIN_KEY}
        return surge_server(name, endpoints, self.repository, self.workdir, env=env, extra=extra)

    # (1) and (2) share one embed server --------------------------------------------------

    def embed(self) -> None:
        demo = yaml.safe_load(DEMO_CONFIG.read_text())["endpoints"]["embed"]
        endpoints = {
            "embed": {**demo, "cache": CACHE},
            "embed_plain": {**demo, "model": "embed"},
            "embed_nocoalesce": {**demo, "model": "embed", "cache": {**CACHE, "coalesce": False}},
        }
        with self.server("cache-embed", endpoints) as server:
            self.r.guarded("zipf", lambda: self.zipf(server), log)
            self.r.guarded("spike", lambda: self.spike(server), log)

    def zipf(self, server: ServerProcess) -> None:
        sentences = distinct_sentences()
        sequence = ZipfSampler(DISTINCT, ZIPF_S, SEED).sample(SEQUENCE_LEN)
        order = self.workdir / "zipf-order.txt"
        order.write_text("\n".join(map(str, sequence)) + "\n")
        bodies = {}
        for endpoint in ("embed", "embed_plain"):
            bodies[endpoint] = self.workdir / f"zipf-{endpoint}.txt"
            lines = (json.dumps({"model": endpoint, "input": s}) for s in sentences)
            bodies[endpoint].write_text("\n".join(lines) + "\n")
        url = server.url + "/v1/embeddings"

        def play(endpoint: str, start: int, seconds: float) -> dict[str, Any]:
            cap = SEQUENCE_LEN - start  # never wraps round to the sequence's start
            lua = sequence_script(bodies[endpoint], order, start, cap)
            return run_wrk(url, lua, TARGET_CLIENTS, seconds, cap)

        for endpoint in bodies:  # the first requests: connections, ORT's first batches
            play(endpoint, 0, 2)
        runs: dict[str, list[dict[str, Any]]] = {"embed": [], "embed_plain": []}
        for k in range(self.d.zipf_rounds):
            for endpoint in bodies:
                if endpoint == "embed":
                    _admin_post(server.url, "/admin/cache/embed/purge")
                warm = play(endpoint, 0, self.d.zipf_warmup_s)["requests"]
                run = measure(server, lambda e=endpoint, w=warm: play(e, w, self.d.zipf_s),
                              log, self.d.quiet_wait_s)  # fmt: skip
                run["round"], run["warmup_requests"] = k + 1, warm
                run["unbounded_hit_rate"] = round(
                    unbounded_hit_rate(sequence, warm, warm + run["requests"]), 4
                )
                results = cache_results(run["server_metrics"]["counters"], endpoint)
                run["cache_results"], run["hit_share"] = results, hit_share(results)
                runs[endpoint].append(run)
                log(f"zipf {endpoint} round {k + 1}: {run['ok_rps']} req/s, p50 "
                    f"{run['latency_ms']['p50']} ms, hits {run['hit_share']}")  # fmt: skip
        best = {e: max(rs, key=lambda run: run["ok_rps"]) for e, rs in runs.items()}
        on, off = best["embed"], best["embed_plain"]
        self.r.details["zipf"] = {"runs": runs, "sequence_head": sequence[:50]}
        how = f"wrk {TARGET_CLIENTS} connections, best of {self.d.zipf_rounds} rounds each"
        self.r.judge("zipf", "throughput cache on / off", _ratio(on["ok_rps"], off["ok_rps"]),
                     ">=", 3, "x", f"{on['ok_rps']} vs {off['ok_rps']} req/s; {how}",
                     headline=1)  # fmt: skip
        p50_on, p50_off = on["latency_ms"]["p50"], off["latency_ms"]["p50"]
        self.r.judge("zipf", "p50 cache on / off", _ratio(p50_on, p50_off), "<=", round(1 / 3, 3),
                     "x", f"{p50_on:.2f} vs {p50_off:.2f} ms", headline=2)  # fmt: skip
        means = {e: sum(r["ok_rps"] for r in rs) / len(rs) for e, rs in runs.items()}
        self.r.add("zipf", "throughput on / off, mean of rounds",
                   _ratio(means["embed"], means["embed_plain"]), "x")  # fmt: skip
        self.r.add("zipf", "hit rate counted by the server (cache on)", on["hit_share"], "",
                   f"unbounded cache on the same draws: {on['unbounded_hit_rate']}; coalesced: "
                   f"{on['cache_results'].get('coalesced', 0):.0f} of "
                   f"{sum(on['cache_results'].values()):.0f}")  # fmt: skip
        for name, run in (("on", on), ("off", off)):
            note = f"p99 {run['latency_ms']['p99']:.1f} ms" + report.busy_note(run)
            self.r.add("zipf", f"server CPU per request, cache {name}",
                       run["server"]["cpu_us_per_request"], "µs", note)  # fmt: skip
        rows = []
        for endpoint, rs in runs.items():
            for run in rs:
                m = run["server_metrics"].get(endpoint, {})
                rows.append([run["round"], endpoint, run["ok_rps"], run["latency_ms"]["p50"],
                             run["latency_ms"]["p99"], run["hit_share"],
                             run["unbounded_hit_rate"], m.get("batches"),
                             m.get("mean_batch_rows"), run["server"]["cpu_us_per_request"],
                             run["background_cores"]])  # fmt: skip
        self.notes += [
            f"## zipf: every round (Zipf s={ZIPF_S} over {DISTINCT:,} sentences, warm-up "
            f"{self.d.zipf_warmup_s:g} s after a purge, then {self.d.zipf_s:g} s measured)",
            "",
            *rounds_markdown(ZIPF_COLUMNS, rows),
        ]

    def spike(self, server: ServerProcess) -> None:
        runs: dict[str, list[dict[str, Any]]] = {"embed": [], "embed_nocoalesce": []}
        for k in range(self.d.spike_rounds):
            for endpoint in runs:
                text = f"A spike of one question, round {k + 1}, {uuid.uuid4().hex}."
                before = scrape_metrics(server.url)
                run = asyncio.run(spike_load(server.url, endpoint, text))
                after = scrape_metrics(server.url)
                key = f'{{endpoint="{endpoint}"}}'
                run["batches"] = after.get(f"surge_batch_size_rows_count{key}", 0.0) - before.get(
                    f"surge_batch_size_rows_count{key}", 0.0
                )
                run["rows"] = after.get(f"surge_batch_size_rows_sum{key}", 0.0) - before.get(
                    f"surge_batch_size_rows_sum{key}", 0.0
                )
                run["round"] = k + 1
                runs[endpoint].append(run)
                log(f"spike {endpoint} round {k + 1}: {run['batches']:.0f} batches, "
                    f"{run['rows']:.0f} rows, {run['results']}")  # fmt: skip
        self.r.details["spike"] = runs

        def per_1000(rs: list[dict[str, Any]], field: str) -> float:
            return round(sum(r[field] for r in rs) / sum(r["sent"] for r in rs) * 1000, 2)

        def misses(rs: list[dict[str, Any]]) -> float:
            return round(sum(r["results"].get("miss", 0) for r in rs) / len(rs), 1)

        on, off = runs["embed"], runs["embed_nocoalesce"]
        n = f"{SPIKE_REQUESTS} requests, {SPIKE_CLIENTS} clients, mean of {len(on)} spikes"
        self.r.judge("spike", "model runs per 1,000 identical requests, coalescing on",
                     per_1000(on, "batches"), "<=", 1, "", n, headline=3)  # fmt: skip
        self.r.add(
            "spike",
            "model runs per 1,000 identical requests, coalescing off",
            per_1000(off, "batches"),
            "",
            f"rows computed: {per_1000(off, 'rows')}",
        )
        self.r.add("spike", "requests that computed, coalescing on", misses(on), "",
                   "the rest waited for its answer or found it stored")  # fmt: skip
        self.r.add(
            "spike",
            "requests that computed, coalescing off",
            misses(off),
            "",
            "all sent before the first answer was stored; the later ones hit",
        )
        rows = []
        for endpoint, rs in runs.items():
            for r in rs:
                res = r["results"]
                rows.append([r["round"], endpoint, r["sent"], r["ok"], r["batches"], r["rows"],
                             res.get("miss", 0), res.get("coalesced", 0), res.get("hit", 0),
                             r["first_answer_ms"], r["wall_ms"]])  # fmt: skip
        self.notes += [
            "## spike: every round",
            "",
            *rounds_markdown(SPIKE_COLUMNS, rows),
        ]

    # (3) the cost of a miss -----------------------------------------------------------------

    def miss(self) -> None:
        noop = {"model": "noop", "version": "1"}
        sides = {
            "noop_off": noop,
            "noop_memory": {**noop, "cache": {**CACHE, "redis": False}},
            "noop_redis": {**noop, "cache": CACHE},
        }
        extra = {"redis_url": REDIS_URL, "registry_namespace": self.namespace}
        salts = itertools.count(1)
        try:
            with self.server("cache-noop", sides, **extra) as server:

                def load(endpoint: str, seconds: float) -> dict[str, Any]:
                    url = server.url + NOOP_INFER.format(endpoint=endpoint)
                    cap = int(50_000 * seconds)
                    lua = unique_script(next(salts), cap)
                    return run_wrk(url, lua, NOOP_CONNECTIONS, seconds, cap)

                for endpoint in sides:
                    load(endpoint, 2)
                runs: dict[str, list[dict[str, Any]]] = {e: [] for e in sides}
                for k in range(self.d.noop_rounds):
                    for endpoint in sides:
                        redis_before = redis_cpu_s()
                        outages = count_lines(server.log_path, REDIS_DOWN)
                        run = measure(server, lambda e=endpoint: load(e, self.d.noop_s), log,
                                      self.d.quiet_wait_s)  # fmt: skip
                        run["redis_cpu_us_per_request"] = round(
                            (redis_cpu_s() - redis_before) / max(run["requests"], 1) * 1e6, 1
                        )
                        run["redis_outages"] = count_lines(server.log_path, REDIS_DOWN) - outages
                        run["round"] = k + 1
                        results = cache_results(run["server_metrics"]["counters"], endpoint)
                        run["cache_results"], run["hit_share"] = results, hit_share(results)
                        runs[endpoint].append(run)
                        log(f"miss {endpoint} round {k + 1}: {run['ok_rps']} req/s, "
                            f"{run['server']['cpu_us_per_request']} µs CPU/req, "
                            f"hits {run['hit_share']}")  # fmt: skip
                self.judge_miss(runs)
                for endpoint in ("noop_memory", "noop_redis"):
                    self.profile(server, endpoint, load)
                computed = scrape_metrics(server.url).get(
                    'surge_cache_rows_total{endpoint="noop_redis",result="miss"}', 0.0
                )
                outages = count_lines(server.log_path, REDIS_DOWN)
        finally:
            keys = delete_namespace(self.namespace)
            self.r.details["redis_keys"] = keys
        self.r.add("miss", "rows in Redis at the end / rows noop_redis computed",
                   _ratio(keys["cache_keys"], computed), "",
                   f"{keys['cache_keys']} of {computed:.0f}; the cache's Redis marked down "
                   f"{outages} times (`{REDIS_DOWN}` in the server's log); the keys of "
                   f"namespace {self.namespace} were deleted afterwards")  # fmt: skip

    def judge_miss(self, runs: dict[str, list[dict[str, Any]]]) -> None:
        self.r.details["miss"] = runs
        best = {e: max(rs, key=lambda run: run["ok_rps"]) for e, rs in runs.items()}
        off = best["noop_off"]
        how = f"wrk {NOOP_CONNECTIONS} connections, best of {self.d.noop_rounds} rounds each"
        for place, (endpoint, label) in enumerate(
            (("noop_memory", "memory"), ("noop_redis", "memory + Redis")), start=4
        ):
            run = best[endpoint]
            extra_us = run["server"]["cpu_us_per_request"] - off["server"]["cpu_us_per_request"]
            self.r.judge("miss", f"throughput at 0 % hits, cache ({label}) / off",
                         _ratio(run["ok_rps"], off["ok_rps"]), ">=", 0.95, "x",
                         f"{run['ok_rps']} vs {off['ok_rps']} req/s; hit rate "
                         f"{run['hit_share']}; {how}", headline=place)  # fmt: skip
            self.r.add(
                "miss",
                f"server CPU per request added by the cache ({label})",
                round(extra_us, 1),
                "µs",
                f"{run['server']['cpu_us_per_request']} vs "
                f"{off['server']['cpu_us_per_request']} µs; redis-server "
                f"{run['redis_cpu_us_per_request']} µs/request" + report.busy_note(run),
            )
        rows = []
        for endpoint, rs in runs.items():
            for run in rs:
                server, latency = run["server"], run["latency_ms"]
                rows.append([run["round"], endpoint, run["ok_rps"], latency["p50"],
                             latency["p99"], run["hit_share"], server["cpu_us_per_request"],
                             server["loop_cpu_us_per_request"], run["redis_cpu_us_per_request"],
                             run["redis_outages"], run["background_cores"]])  # fmt: skip
        self.notes += [
            "## miss: every round (noop, every request a new input)",
            "",
            *rounds_markdown(MISS_COLUMNS, rows),
            "redis-server shares this machine's 2 cores (and serves other users of "
            "127.0.0.1:6379), so its CPU is not inside the server's; on its own host it "
            "would not take from the server.",
            "",
        ]

    def profile(self, server: ServerProcess, endpoint: str, load: Any) -> None:
        """py-spy on the server while `endpoint` takes the miss load; the summary goes to
        the report (py-spy's sampling costs the server a little: no figure is taken here).
        Only the thread holding the GIL is sampled (`--gil`): Python's CPU time, leaving out
        threads that only wait (the pool's idle workers), which would dilute the shares."""
        spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        if not Path(spy).exists():
            self.notes += [f"py-spy is not installed: no profile of {endpoint}.", ""]
            return
        out = self.workdir / f"profile-{endpoint}.txt"
        seconds = self.d.profile_s
        argv = [spy, "record", "-p", str(server.pid), "-d", str(max(1, round(seconds))),
                "-r", "200", "--gil", "-f", "raw", "-o", str(out)]  # fmt: skip
        spy_process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(0.3)  # attached before the load starts
        run = load(endpoint, seconds + 0.5)
        _, err = spy_process.communicate(timeout=seconds + 60)
        if spy_process.returncode != 0 or not out.exists():
            self.notes += [f"py-spy failed on {endpoint}: {err.decode()[-300:]}", ""]
            return
        summary = summarise_profile(parse_collapsed(out.read_text()))
        summary["load"] = {"ok_rps": run["ok_rps"], "requests": run["requests"]}
        self.r.details.setdefault("profiles", {})[endpoint] = summary
        self.r.add("profile", f"server samples in the cache's own code ({endpoint})",
                   summary["cache_share"], "", f"py-spy --gil 200 Hz, {seconds:g} s, miss "
                   "load: share of the samples of whichever thread held the GIL (Python's "
                   "CPU time, every thread)")  # fmt: skip
        self.notes += profile_markdown(f"profile, {endpoint} at 0 % hits", summary)


async def spike_load(base: str, endpoint: str, text: str) -> dict[str, Any]:
    """`SPIKE_REQUESTS` identical requests from `SPIKE_CLIENTS` clients released at once;
    each asks for its receipt, which says whether it computed, coalesced or hit."""
    body = json.dumps({"model": endpoint, "input": text}).encode()
    headers = {"Content-Type": "application/json", "X-Surge-Receipt": "1"}
    results: Counter[str] = Counter()
    statuses: Counter[int] = Counter()
    first: list[float] = []
    left = SPIKE_REQUESTS
    start = asyncio.Event()
    connector = aiohttp.TCPConnector(limit=SPIKE_CLIENTS)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def client() -> None:
            nonlocal left
            await start.wait()
            while left > 0:
                left -= 1
                async with session.post(base + "/v1/embeddings", data=body,
                                        headers=headers) as response:  # fmt: skip
                    await response.read()
                    statuses[response.status] += 1
                    receipt = response.headers.get("X-Surge-Receipt")
                if response.status == 200:
                    first.append(time.perf_counter())
                    cache = json.loads(receipt or "{}").get("cache") or {}
                    results[cache.get("result", "none")] += 1

        clients = [asyncio.create_task(client()) for _ in range(SPIKE_CLIENTS)]
        await asyncio.sleep(0.05)
        began = time.perf_counter()
        start.set()
        await asyncio.gather(*clients)
        wall = time.perf_counter() - began
    return {
        "sent": sum(statuses.values()),
        "ok": statuses.get(200, 0),
        "statuses": dict(statuses),
        "results": dict(results),
        "first_answer_ms": round((min(first) - began) * 1000, 2) if first else None,
        "wall_ms": round(wall * 1000, 1),
    }


def count_lines(path: Path, needle: str) -> int:
    with path.open(errors="replace") as lines:
        return sum(1 for line in lines if needle in line)


def delete_namespace(namespace: str) -> dict[str, int]:
    """Delete every key this run made in the shared Redis (its namespace's); say how many
    were cached answers (`<namespace>:cache:...`) and how many in all."""
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    cached = deleted = 0
    with contextlib.closing(client):
        batch: list[bytes] = []
        for key in client.scan_iter(match=f"{namespace}:*", count=1000):
            cached += key.startswith(f"{namespace}:cache:".encode())
            batch.append(key)
            if len(batch) >= 1000:
                deleted += client.unlink(*batch)
                batch = []
        if batch:
            deleted += client.unlink(*batch)
    return {"cache_keys": cached, "deleted": deleted}


@contextlib.contextmanager
def _timed(name: str, timings: dict[str, float]) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        timings[name] = round(time.perf_counter() - started, 1)


def main(argv: list[str] | None = None) -> int:
    parser = base_parser("python -m benchmarks.cache", __doc__, "where embed/1 and noop/1 are")
    args = parser.parse_args(argv)
    d = QUICK if args.quick else FULL
    stem = args.out or ("cache_quick" if args.quick else "cache")
    if not wrk.available():
        log("wrk is not installed (apt-get install wrk); cannot run")
        return 2
    from surge.demo.build import ensure_demo_models

    repository = args.repository.resolve()
    ensure_demo_models(repository, ("embed", "noop"))
    machine = report.machine_facts()
    started = time.perf_counter()
    result = report.Report()
    timings: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="surge-bench-cache-") as workdir:
        bench = CacheBenchmarks(d, repository, Path(workdir), result)
        with _timed("embed", timings):
            result.guarded("zipf", bench.embed, log)
        with _timed("miss", timings):
            result.guarded("miss", bench.miss, log)
    result.details["run"] = {"quick": args.quick, "durations": asdict(d), "zipf_s": ZIPF_S,
                             "distinct": DISTINCT, "seed": SEED, "namespace": bench.namespace,
                             "timings_s": timings,
                             "elapsed_s": round(time.perf_counter() - started, 1)}  # fmt: skip
    result.sort(["zipf", "spike", "miss", "profile"])
    title = "surge response cache: Zipf reuse, coalescing, the cost of a miss"
    title += " (quick)" if args.quick else ""
    status = publish(RESULTS / stem, result, machine, title, started)
    notes = "\n".join(["", *bench.notes])
    with (RESULTS / stem).with_suffix(".md").open("a") as md:
        md.write(notes)
    print(notes)
    return status


if __name__ == "__main__":
    sys.exit(main())
