"""(2), (3), (5), (7): the demo server's `embed` endpoint over HTTP.

One demo server (the built-in demo config: digits + embed) serves every load
here in turn, as a user's server would: start-up and idle memory first, then
closed-loop throughput, open-loop latency, overload, and memory after it all.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import yaml

from benchmarks import loadgen, wrk
from benchmarks.report import Report, busy_note
from benchmarks.servers import ServerProcess, measure, surge_server
from benchmarks.settings import (
    CLIENTS,
    OPEN_LOOP_SHARES,
    OVERLOAD_DEADLINE_MS,
    OVERLOAD_FACTOR,
    TARGET_CLIENTS,
    WRK_CAP_PER_S,
    Settings,
)
from benchmarks.workload import OPENAI_BODIES, V2_BODIES
from surge.config import DEMO_CONFIG

V2_PATH = "/v2/models/embed/infer"
OPENAI_PATH = "/v1/embeddings"
LOADS = ("http", "openloop", "overload")


def closed_wrk(url: str, bodies: list[str], clients: int, seconds: float) -> dict[str, Any]:
    return wrk.run(
        url,
        bodies,
        connections=clients,
        duration_s=seconds,
        max_requests=int(WRK_CAP_PER_S * seconds),
    )


class DemoServerBenchmarks:
    def __init__(
        self, settings: Settings, report: Report, log: Callable[[str], None], selected: list[str]
    ) -> None:
        self.settings = settings
        self.d = settings.durations
        self.report = report
        self.log = log
        self.selected = selected
        self.capacity_rps: float | None = None

    def run(self, limits: dict[str, float]) -> None:
        """`limits`: the in-process figures the throughput ratios divide by (may be empty)."""
        endpoints = yaml.safe_load(DEMO_CONFIG.read_text())["endpoints"]
        settings = self.settings
        with surge_server("demo", endpoints, settings.repository, settings.workdir) as server:
            self.log(f"demo server ready in {server.startup_s:.2f}s (pid {server.pid})")
            time.sleep(1.0)  # let warm-up garbage go before reading idle memory
            idle_mb = server.rss_mb()
            loads = [name for name in LOADS if name in self.selected]
            guarded = self.report.guarded
            if "http" in loads:
                guarded("http", lambda: self.closed_loop(server, limits), self.log)
            if self.capacity_rps is None and {"openloop", "overload"} & set(loads):
                guarded("openloop", lambda: self.measure_capacity(server), self.log)
            if "openloop" in loads and self.capacity_rps:
                guarded("openloop", lambda: self.open_loop(server), self.log)
            if "overload" in loads and self.capacity_rps:
                guarded("overload", lambda: self.overload(server), self.log)
            if not loads:  # start-up alone: some load, so "after the load" means something
                closed_wrk(server.url + V2_PATH, V2_BODIES, TARGET_CLIENTS, self.d.wrk_s)
            time.sleep(1.0)
            after_mb = server.rss_mb()
        if "startup" in self.selected:
            self.report.details["startup"] = {"config": server.notes["config"]}
            self.report.add(
                "startup",
                "spawn to /v2/health/ready",
                round(server.startup_s, 2),
                "s",
                "digits + embed, models already built; includes warm-up",
            )
            self.report.add("startup", "RSS idle after warm-up", round(idle_mb, 1), "MB")
            self.report.add(
                "startup",
                "RSS after the load",
                round(after_mb, 1),
                "MB",
                "after " + (", ".join(loads) or f"wrk, {TARGET_CLIENTS} clients"),
            )

    def measure(self, server: ServerProcess, load: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        return measure(server, load, self.log, self.d.quiet_wait_s)

    def measure_capacity(self, server: ServerProcess) -> None:
        url = server.url + V2_PATH
        closed_wrk(url, V2_BODIES, TARGET_CLIENTS, self.d.warmup_s)
        result = closed_wrk(url, V2_BODIES, TARGET_CLIENTS, self.d.wrk_s)
        self.capacity_rps = result["ok_rps"]
        self.report.details["capacity"] = result
        self.log(f"capacity (wrk, {TARGET_CLIENTS} clients): {self.capacity_rps} req/s")

    # -- (2) closed loop ---------------------------------------------------------------

    def closed_loop(self, server: ServerProcess, limits: dict[str, float]) -> None:
        v2, openai = server.url + V2_PATH, server.url + OPENAI_PATH
        seconds = self.d.wrk_s
        closed_wrk(v2, V2_BODIES, TARGET_CLIENTS, self.d.warmup_s)  # connections, arenas
        runs: dict[str, dict[str, Any]] = {}
        for clients in CLIENTS:
            runs[f"v2 wrk {clients}"] = self.measure(
                server, lambda c=clients: closed_wrk(v2, V2_BODIES, c, seconds)
            )
        runs["openai wrk 32"] = self.measure(
            server, lambda: closed_wrk(openai, OPENAI_BODIES, 32, seconds)
        )
        spec = {
            "mode": "closed",
            "url": v2,
            "bodies": V2_BODIES,
            "concurrency": TARGET_CLIENTS,
            "duration_s": seconds,
            "max_requests": int(WRK_CAP_PER_S * seconds),
        }
        runs["v2 aiohttp 32"] = self.measure(server, lambda: loadgen.run_loadgen(spec))
        self.report.details["http"] = runs
        self.capacity_rps = max(runs[f"v2 wrk {c}"]["ok_rps"] for c in CLIENTS)
        for key, run in runs.items():
            self.log(
                f"http {key}: {run['ok_rps']} emb/s, p50 {run['latency_ms']['p50']:.1f} ms, "
                f"p99 {run['latency_ms']['p99']:.1f} ms; cores: server loop "
                f"{run['server']['loop_cores']} + other {run['server']['other_cores']}, "
                f"generator {run['generator_cores']}, background {run['background_cores']}"
            )
        labels = {f"v2 wrk {c}": f"v2, {c} clients" for c in CLIENTS}
        labels["openai wrk 32"] = "OpenAI, 32 clients"
        labels["v2 aiohttp 32"] = "v2, 32 clients, aiohttp generator"
        for key, label in labels.items():
            self._closed_figures(key, label, runs[key], limits)
        wrk32, aio32 = runs[f"v2 wrk {TARGET_CLIENTS}"], runs["v2 aiohttp 32"]
        self.report.add(
            "http",
            f"wrk CPU at {TARGET_CLIENTS} clients",
            wrk32["generator_cores"],
            "cores",
            f"the aiohttp generator took {aio32['generator_cores']} cores for "
            f"{aio32['ok_rps']:.0f} req/s",
        )
        srv = wrk32["server"]
        self.report.add(
            "http",
            f"server CPU at {TARGET_CLIENTS} clients",
            srv["total_cores"],
            "cores",
            f"event loop {srv['loop_cores']} ({srv['loop_cpu_us_per_request']:.0f} µs/request),"
            f" replica + ORT {srv['other_cores']}; other processes {wrk32['background_cores']}",
        )

    def _closed_figures(
        self, key: str, label: str, run: dict[str, Any], limits: dict[str, float]
    ) -> None:
        limit = limits.get("limit")
        ratio = round(run["ok_rps"] / limit, 3) if limit else None
        failed = run["requests"] - run["ok"] + run.get("socket_errors", 0)
        note = f"{run['ok_rps']:.0f} emb/s" + (f", {failed} failed" if failed else "")
        note += busy_note(run)
        latency = run["latency_ms"]
        if key == f"v2 wrk {TARGET_CLIENTS}":
            self.report.judge(
                "http", f"{label}: throughput / in-process", ratio, ">=", 0.9, "x", note
            )
            if "layout" in limits:
                self.report.add(
                    "http",
                    f"{label}: throughput / in-process, demo layout",
                    round(run["ok_rps"] / limits["layout"], 3),
                    "x",
                    "against the demo's replica layout run in process",
                )
            self.report.judge("http", f"{label}: p99", latency["p99"], "<=", 300, "ms")
        else:
            self.report.add("http", f"{label}: throughput / in-process", ratio, "x", note)
            self.report.add("http", f"{label}: p99", latency["p99"], "ms")
        self.report.add("http", f"{label}: p50", latency["p50"], "ms")

    # -- (3) open loop -------------------------------------------------------------------

    def open_loop(self, server: ServerProcess) -> None:
        assert self.capacity_rps
        runs = {}
        for share in OPEN_LOOP_SHARES:
            rate = share * self.capacity_rps
            spec = {
                "mode": "open",
                "url": server.url + V2_PATH,
                "bodies": V2_BODIES,
                "rate": rate,
                "seed": 1,
                "duration_s": self.d.openloop_s,
                "max_requests": int(rate * self.d.openloop_s * 1.5) + 100,
            }
            run = self.measure(server, lambda s=spec: loadgen.run_loadgen(s))
            runs[f"{share:.0%}"] = run
            lat = run["latency_ok_ms"]
            self.log(
                f"openloop {share:.0%} ({rate:.0f} req/s): {run['status']}, p50 {lat['p50']:.1f}"
                f" p99 {lat['p99']:.1f} ms, send lag p99 {run['send_lag_ms']['p99']:.2f} ms"
            )
            label = f"{share:.0%} of capacity ({rate:.0f} req/s)"
            failed = run["requests"] - run["ok"]
            note = f"{run['ok_rps']:.0f} req/s served" + (f", {failed} not 200" if failed else "")
            note += busy_note(run)
            self.report.add("openloop", f"{label}: p50", lat["p50"], "ms", note)
            self.report.add(
                "openloop",
                f"{label}: p99",
                lat["p99"],
                "ms",
                f"generator send lag p99 {run['send_lag_ms']['p99']:.2f} ms",
            )
            if share == 0.5:
                ratio = round(lat["p99"] / lat["p50"], 2)
                self.report.judge("openloop", f"{label}: p99 / p50", ratio, "<=", 2.0, "x")
        self.report.details["openloop"] = {"capacity_rps": self.capacity_rps, "runs": runs}

    # -- (5) overload --------------------------------------------------------------------

    def overload(self, server: ServerProcess) -> None:
        assert self.capacity_rps
        rate = OVERLOAD_FACTOR * self.capacity_rps
        seconds = self.d.overload_s
        spec = {
            "mode": "open",
            "url": server.url + V2_PATH,
            "bodies": V2_BODIES,
            "rate": rate,
            "seed": 2,
            "duration_s": seconds,
            "max_requests": int(rate * seconds * 1.2) + 100,
            "headers": {"X-Request-Timeout-Ms": str(OVERLOAD_DEADLINE_MS)},
        }
        rss_before = server.rss_mb()
        run = self.measure(server, lambda: loadgen.run_loadgen(spec))
        time.sleep(1.0)
        rss_after = server.rss_mb()
        run["rss_before_mb"], run["rss_after_mb"] = round(rss_before, 1), round(rss_after, 1)
        self.report.details["overload"] = run
        status = run["status"]
        total = max(run["requests"], 1)
        expected = sum(status.get(code, 0) for code in ("200", "429", "504"))
        served_p99 = run["service_ok_ms"].get("p99")
        self.log(
            f"overload {rate:.0f} req/s for {seconds:g}s: {status}, served p99 {served_p99} ms,"
            f" RSS {rss_before:.0f} -> {rss_after:.0f} MB"
        )
        shares = ", ".join(f"{code}: {n / total:.1%}" for code, n in sorted(status.items()))
        report = self.report
        report.add(
            "overload",
            "offered load",
            round(rate),
            "req/s",
            f"{OVERLOAD_FACTOR:g}x capacity for {seconds:g}s: {run['requests']} requests",
        )
        report.add(
            "overload",
            "served (200) / capacity",
            round(run["ok_rps"] / self.capacity_rps, 3),
            "x",
            shares + busy_note(run),
        )
        report.judge(
            "overload", "answers other than 200/429/504", run["requests"] - expected, "==", 0
        )
        report.judge("overload", "connection errors", status.get("connection_error", 0), "==", 0)
        report.judge(
            "overload",
            "served (200) p99",
            served_p99,
            "<=",
            OVERLOAD_DEADLINE_MS,
            "ms",
            f"send to answer, X-Request-Timeout-Ms {OVERLOAD_DEADLINE_MS}",
        )
        report.judge(
            "overload",
            "server RSS growth",
            round(rss_after - rss_before, 1),
            "<",
            100,
            "MB",
            f"{rss_before:.0f} -> {rss_after:.0f} MB",
        )
