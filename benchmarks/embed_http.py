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
from benchmarks.servers import ServerProcess, measure, replica_utilisation, surge_server
from benchmarks.settings import (
    CLIENTS,
    OPEN_LOOP_SHARES,
    OVERLOAD_DEADLINE_MS,
    OVERLOAD_FACTOR,
    TARGET_CLIENTS,
    WRK_CAP_PER_S,
    Settings,
)
from benchmarks.workload import OPENAI_BASE64_BODIES, OPENAI_BODIES, V2_BODIES
from surge.config import DEMO_CONFIG

V2_PATH = "/v2/models/embed/infer"
OPENAI_PATH = "/v1/embeddings"
LOADS = ("http", "openloop", "overload")
ENDPOINT = "embed"
V2_TARGET = 0.95  # v2, 32 clients: throughput / in-process limit
OPENAI_TARGET = 0.9  # OpenAI route, float, 32 clients: throughput / in-process limit
GOODPUT_TARGET = 0.9  # 200s per second at 2x capacity / capacity
OPEN_LOOP_TAIL_TARGET = 3.0  # open loop at 50 % of capacity: p99 / p50


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
        self.capacity_note = ""  # what was wrong with the capacity run, if anything

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
        self.set_capacity(result)
        self.report.details["capacity"] = result
        self.log(f"capacity (wrk, {TARGET_CLIENTS} clients): {self.capacity_rps} req/s")

    def set_capacity(self, run: dict[str, Any]) -> None:
        """Capacity: one-sentence requests per second, v2, 32 clients, closed loop. The
        open loop and overload rates are shares of it, so a flawed run taints them too."""
        self.capacity_rps = run["ok_rps"]
        failed = run["requests"] - run["ok"] + run.get("socket_errors", 0)
        self.capacity_note = (
            f"; the capacity run had {failed} failed requests" if failed else ""
        ) + busy_note(run).replace("other processes", "during the capacity run others")

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
        openai_bodies = {"float": OPENAI_BODIES, "base64": OPENAI_BASE64_BODIES}
        for encoding, bodies in openai_bodies.items():
            runs[f"openai {encoding} wrk {TARGET_CLIENTS}"] = self.measure(
                server, lambda b=bodies: closed_wrk(openai, b, TARGET_CLIENTS, seconds)
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
        replicas = int(server.notes["config"]["endpoints"][ENDPOINT].get("replicas", 1))
        for run in runs.values():
            run["replica"] = replica_utilisation(run, ENDPOINT, replicas)
        self.report.details["http"] = runs
        # Capacity: one-sentence requests per second at the target's 32 clients, closed loop.
        self.set_capacity(runs[f"v2 wrk {TARGET_CLIENTS}"])
        for key, run in runs.items():
            self.log(
                f"http {key}: {run['ok_rps']} emb/s, p50 {run['latency_ms']['p50']:.1f} ms, "
                f"p99 {run['latency_ms']['p99']:.1f} ms; cores: server loop "
                f"{run['server']['loop_cores']} + other {run['server']['other_cores']}, "
                f"generator {run['generator_cores']}, background {run['background_cores']}; "
                f"replica {run['replica']}"
            )
        labels = {f"v2 wrk {c}": f"v2, {c} clients" for c in CLIENTS}
        labels[f"openai float wrk {TARGET_CLIENTS}"] = f"OpenAI float, {TARGET_CLIENTS} clients"
        labels[f"openai base64 wrk {TARGET_CLIENTS}"] = (
            f"OpenAI base64 (the openai client's default), {TARGET_CLIENTS} clients"
        )
        labels["v2 aiohttp 32"] = "v2, 32 clients, aiohttp generator"
        for key, label in labels.items():
            self._closed_figures(key, label, runs[key], limits)
        for key in (f"v2 wrk {TARGET_CLIENTS}", *(f"openai {e} wrk 32" for e in openai_bodies)):
            self._replica_figure(labels[key], runs[key])
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
        name = f"{label}: throughput / in-process limit"
        judged = {
            f"v2 wrk {TARGET_CLIENTS}": (V2_TARGET, 3),
            f"openai float wrk {TARGET_CLIENTS}": (OPENAI_TARGET, 2),
        }
        if key in judged:
            target, place = judged[key]
            self.report.judge("http", name, ratio, ">=", target, "x", note, headline=place)
            if "runtime" in limits:
                self.report.add(
                    "http",
                    f"{label}: throughput / surge runtime in process",
                    round(run["ok_rps"] / limits["runtime"], 3),
                    "x",
                    "for comparison: EmbeddingsRuntime.run back to back, its best batch size",
                )
            if "layout" in limits:
                self.report.add(
                    "http",
                    f"{label}: throughput / in-process, demo layout",
                    round(run["ok_rps"] / limits["layout"], 3),
                    "x",
                    "against the demo's replica layout run in process",
                )
        else:
            self.report.add("http", name, ratio, "x", note)
        if key == f"v2 wrk {TARGET_CLIENTS}":
            self.report.judge("http", f"{label}: p99", latency["p99"], "<=", 300, "ms")
        else:
            self.report.add("http", f"{label}: p99", latency["p99"], "ms")
        self.report.add("http", f"{label}: p50", latency["p50"], "ms")

    def _replica_figure(self, label: str, run: dict[str, Any]) -> None:
        """Replica busy share over a closed-loop run: the idle gaps between batches."""
        u = run.get("replica")
        if u is None:
            self.report.add("http", f"{label}: replica busy share", None, "", "no busy counter")
            return
        self.report.add(
            "http",
            f"{label}: replica busy share",
            u["busy_share"],
            "",
            f"surge_replica_busy_seconds_total / ({u['replicas']} replica x "
            f"{u['window_s']:.1f} s); runtime.run alone {u['compute_share']}; "
            f"{u['batches']:.0f} batches of {u['mean_batch_rows']} rows, "
            f"{u['mean_busy_ms']:.1f} ms busy, {u['mean_idle_gap_ms']:.1f} ms idle each",
        )

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
                self.report.judge(
                    "openloop",
                    f"open loop at 50 % of capacity ({rate:.0f} req/s): p99 / p50",
                    ratio,
                    "<=",
                    OPEN_LOOP_TAIL_TARGET,
                    "x",
                    f"p50 {lat['p50']:.1f} ms, p99 {lat['p99']:.1f} ms, from the scheduled send"
                    + self.capacity_note,
                    headline=5,
                )
        self.report.details["openloop"] = {
            "capacity_rps": self.capacity_rps,
            "capacity_note": self.capacity_note,
            "runs": runs,
        }

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
            "deadline_s": OVERLOAD_DEADLINE_MS / 1000,
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
        report.judge(
            "overload",
            f"200s per second at {OVERLOAD_FACTOR:g}x capacity / capacity",
            round(run["ok_rps"] / self.capacity_rps, 3),
            ">=",
            GOODPUT_TARGET,
            "x",
            f"{run['ok_rps']:.0f} / {self.capacity_rps:.0f} req/s (capacity: v2, "
            f"{TARGET_CLIENTS} clients, closed loop); {shares}"
            + busy_note(run)
            + self.capacity_note,
            headline=4,
        )
        in_time = run.get("ok_within_deadline")
        report.add(
            "overload",
            f"200s within {OVERLOAD_DEADLINE_MS} ms per second / capacity",
            None if in_time is None else round(in_time / run["duration_s"] / self.capacity_rps, 3),
            "x",
            f"{in_time} of {status.get('200', 0)} 200s answered within the deadline "
            "(send to answer)",
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
