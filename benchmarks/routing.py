"""Routing under stress: the deadline ladder at 3x a model's capacity, burst modes through
a burst, and a fallback route's circuit breaker when its first target starts failing.

    python -m benchmarks.routing            # full run, about 2 minutes
    python -m benchmarks.routing --quick    # smoke version, under a minute

Writes benchmarks/results/routing.json and .md (routing_quick for --quick) and prints
the markdown table; the exit status is 1 when a target is missed.

The costly model is `slow/1` (route_models.py): 20 ms per batch of up to 4 rows, whose
capacity (about 200 req/s) is measured, not assumed, and 3x of which the aiohttp
generator sends without strain. digits_big (the calibrated RBF SVM) does about 8,000
rows/s in batches of 32 on one core: 3x its capacity would measure the generator, not
the server. Every server is `surge serve` on 127.0.0.1 with its own temp config
(servers.py); every load is bounded in requests and time (loadgen.py).

1. ladder: route `timeboxed: {ladder: {rungs: [big, fast]}}` (big = slow/1, fast =
   digits/1). Poisson arrivals at 3x big's capacity, each with `X-Request-Timeout-Ms:
   300`, (a) against the route, (b) against `big` itself. Latency counts from each
   request's scheduled send time.
2. modes: `slow` (max_queue 64) with burst modes on; Poisson at 40 % of its capacity,
   then 5x that (200 %), then 40 % again, with `GET /admin/mode` polled every 0.25 s.
3. breaker: route `safe: {fallback: {targets: [flaky, steady]}}` under a closed loop;
   `flaky` starts failing part-way through (the benchmark creates its `failing` file).
"""

from __future__ import annotations

import re
import secrets
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks import report
from benchmarks.loadgen import percentiles, run_loadgen
from benchmarks.route_models import (
    FLAKY_MODEL,
    SLOW_BATCH_ROWS,
    SLOW_BATCH_S,
    SLOW_MODEL,
    build_repository,
    digit_bodies,
    failing_flag,
    slow_endpoint,
)
from benchmarks.run import RESULTS, base_parser, log, publish
from benchmarks.servers import ServerProcess, measure, scrape_metrics, surge_server
from benchmarks.timeline import (
    ModePoller,
    between,
    code_shares,
    episodes,
    is_rise,
    ok_latencies,
    per_second,
)

BUDGET_MS = 300
LADDER_FACTOR = 3.0  # offered load / big's measured capacity
TARGET_WITHIN_BUDGET = 0.99
CAPACITY_CLIENTS = 16  # closed loop: four full batches waiting keep the replica busy
NORMAL_SHARE, BURST_FACTOR = 0.4, 5.0  # of capacity; the burst is 5x the normal rate
MODES = {"evaluate_interval_s": 0.5, "hold_s": 3.0, "min_dwell_s": 1.0}
# The p99 the modes steer to: part 1's budget, 15 batch times. Normal load (p99 about
# 50 ms) sits far below it, and it lies above the emergency mode's 250 ms default
# deadline, so once the modes have acted the server can meet it.
TARGET_P99_MS = 300.0
MODES_MAX_QUEUE = 64
POLL_S = 0.25
BREAKER = {"failure_threshold": 5, "window_s": 5.0, "open_s": 30.0}
BREAKER_CLIENTS = 8
LABEL = re.compile(r'(\w+)="([^"]*)"')


@dataclass(frozen=True)
class Durations:
    warmup_s: float
    capacity_s: float
    ladder_s: float  # each of (a) and (b)
    phases_s: tuple[float, float, float]  # modes: normal, burst, normal again
    healthy_s: float  # breaker: before the flaky target starts failing
    failing_s: float
    quiet_wait_s: float  # longest wait for other processes to go quiet before a load


FULL = Durations(1.0, 4.0, 20.0, (6.0, 6.0, 10.0), 3.0, 7.0, 20.0)
QUICK = Durations(0.5, 2.0, 5.0, (3.0, 3.0, 8.0), 2.0, 4.0, 5.0)


def infer_path(name: str) -> str:
    return f"/v2/models/{name}/infer"


def _after(t: float | None, since: float) -> float | None:
    return None if t is None else round(t - since, 2)


def counted(run: dict[str, Any], metric: str) -> list[tuple[dict[str, str], int]]:
    """(labels, count) of one of the server's counters over the run."""
    counters = run["server_metrics"]["counters"].items()
    return [(dict(LABEL.findall(k)), int(v)) for k, v in counters if k.startswith(metric + "{")]


class RoutingBenchmarks:
    def __init__(
        self, d: Durations, repo: Path, workdir: Path, result: report.Report, bodies: list[str]
    ) -> None:
        self.d = d
        self.repo = repo
        self.workdir = workdir
        self.report = result
        self.bodies = bodies
        self.capacity_rps: float | None = None

    def spec(self, url: str, **load: Any) -> dict[str, Any]:
        """An open (`rate` or `phases`) or closed (`concurrency`) load with per-request
        samples and X-Surge-Route, bounded in requests."""
        seconds = load.get("duration_s") or sum(p["duration_s"] for p in load["phases"])
        peak = max([load.get("rate") or 0] + [p["rate"] for p in load.get("phases", [])])
        return {
            "mode": "closed" if "concurrency" in load else "open",
            "url": url,
            "bodies": self.bodies,
            "seed": 3,
            "samples": True,
            "record_header": "X-Surge-Route",
            # closed loops: far above any rate seen here
            "max_requests": int(max(peak, 2000) * seconds * 1.5) + 100,
            "duration_s": seconds,
            **load,
        }

    def measure(self, server: ServerProcess, load: Any) -> dict[str, Any]:
        """`load`: a loadgen spec, or a function returning a loadgen result."""
        run = load if callable(load) else (lambda: run_loadgen(load))
        return measure(server, run, log, self.d.quiet_wait_s)

    def measure_capacity(self, server: ServerProcess, endpoint: str) -> float:
        url = server.url + infer_path(endpoint)
        run_loadgen(self.spec(url, concurrency=CAPACITY_CLIENTS, duration_s=self.d.warmup_s))
        seconds = self.d.capacity_s
        run = run_loadgen(self.spec(url, concurrency=CAPACITY_CLIENTS, duration_s=seconds))
        del run["samples"]
        self.report.details["capacity"] = run
        self.capacity_rps = run["ok_rps"]
        log(f"capacity of {endpoint}: {self.capacity_rps} req/s ({run['status']})")
        note = (
            f"closed loop, {CAPACITY_CLIENTS} clients, {seconds:g} s; "
            f"{SLOW_BATCH_S * 1000:g} ms per batch of <= {SLOW_BATCH_ROWS} rows"
        )
        self.report.add("ladder", "big: measured capacity", self.capacity_rps, "req/s", note)
        return self.capacity_rps

    # -- 1. deadline ladder -----------------------------------------------------------------

    def ladder(self) -> None:
        endpoints = {"big": slow_endpoint(256), "fast": {"model": "digits"}}
        extra = {
            "routes": {"timeboxed": {"ladder": {"rungs": ["big", "fast"]}}},
            "modes": {"enabled": False},  # the ladder alone decides; modes are part 2
        }
        headers = {"X-Request-Timeout-Ms": str(BUDGET_MS)}
        runs = {}
        with surge_server("ladder", endpoints, self.repo, self.workdir, extra=extra) as server:
            rate = LADDER_FACTOR * self.measure_capacity(server, "big")
            for key, target in (("route", "timeboxed"), ("direct", "big")):
                url = server.url + infer_path(target)
                runs[key] = self.measure(
                    server, self.spec(url, rate=rate, duration_s=self.d.ladder_s, headers=headers)
                )
        note = (
            f"{LADDER_FACTOR:g}x capacity, Poisson, {self.d.ladder_s:g} s per run, "
            f"X-Request-Timeout-Ms {BUDGET_MS}"
        )
        self.report.add("ladder", "offered load", round(rate), "req/s", note)
        self._budget_figures("ladder route [big, fast]", runs["route"], judged=True)
        self._budget_figures("big alone", runs["direct"], judged=False)
        self.report.details["ladder"] = {"config": server.notes["config"], "runs": runs}

    def _budget_figures(self, label: str, run: dict[str, Any], judged: bool) -> None:
        samples = run.pop("samples")
        ok = ok_latencies(samples)
        within = round(sum(1 for s in ok if s <= BUDGET_MS / 1000) / max(len(samples), 1), 4)
        run["within_budget_share"] = within
        lat = percentiles(ok)
        log(f"{label}: {run['status']}, within budget {within:.2%}, 200s {lat}")
        refused = ", ".join(
            f"{labels['endpoint']} {labels['reason']} {n}"
            for labels, n in counted(run, "surge_rejected_requests_total")
        )
        note = f"{len(samples)} sent; {code_shares(samples)}; refused: {refused or 'none'}"
        note += report.busy_note(run)
        name = f"{label}: 200 within {BUDGET_MS} ms / sent"
        if judged:
            self.report.judge("ladder", name, within, ">=", TARGET_WITHIN_BUDGET, "", note)
        else:
            self.report.add("ladder", name, within, "", note + "; for comparison")
        p50_p99 = f"{lat.get('p50', 0):.0f} / {lat.get('p99', 0):.0f}"
        note = "from the scheduled send time"
        self.report.add("ladder", f"{label}: p50 / p99 of the 200s", p50_p99, "ms", note)
        routes = [s[3] or "" for s in samples if s[1] == "200"]
        if any("degraded" in r for r in routes) or judged:
            served = max(len(routes), 1)
            degraded = sum("degraded" in r for r in routes) / served
            by_big = sum(r.startswith("slow@") for r in routes) / served
            note = f"X-Surge-Route: slow@1 (big) {by_big:.1%}, digits@1 (fast) {1 - by_big:.1%}"
            self.report.add("ladder", f"{label}: degraded / 200s", round(degraded, 4), "", note)

    # -- 2. burst modes ---------------------------------------------------------------------

    def modes(self) -> None:
        key = secrets.token_urlsafe(16)  # this server's admin key, for /admin/mode
        endpoints = {"slow": slow_endpoint(MODES_MAX_QUEUE)}
        extra = {"modes": {"enabled": True, "target_p99_ms": TARGET_P99_MS, **MODES}}
        env = {"SURGE_ADMIN_KEY": key}
        with surge_server("modes", endpoints, self.repo, self.workdir, env, extra) as server:
            normal = NORMAL_SHARE * (self.capacity_rps or self.measure_capacity(server, "slow"))
            rates = (normal, BURST_FACTOR * normal, normal)
            phases = [
                {"rate": r, "duration_s": s} for r, s in zip(rates, self.d.phases_s, strict=True)
            ]
            poller = ModePoller(server.url, key, POLL_S)
            poller.start()
            spec = self.spec(server.url + infer_path("slow"), phases=phases)
            try:
                run = self.measure(server, spec)
            finally:
                poller.stop()
        self.report.details["modes"] = {"config": server.notes["config"], "run": run}
        self._mode_figures(run, phases, poller)

    def _mode_figures(
        self, run: dict[str, Any], phases: list[dict[str, float]], poller: ModePoller
    ) -> None:
        samples, t0 = run.pop("samples"), run["started_at"]
        normal_s, burst_s, _ = self.d.phases_s
        burst_end = normal_s + burst_s
        changes = poller.changes(t0)
        rises, falls = episodes(changes)
        final = poller.polls[-1][1] if poller.polls else "unknown"
        burst = between(samples, normal_s, burst_end)
        lat = percentiles(ok_latencies(burst))
        run["timeline"], run["poll_errors"] = changes, poller.errors
        run["polls"] = [(round(t - t0, 2), mode, sig) for t, mode, sig in poller.polls]
        run["per_second"] = per_second(samples, poller.polls, t0)
        log(f"modes: {[(c['t_s'], c['to']) for c in changes]}; burst 200s {lat}; final {final}")
        r = self.report
        profile = " → ".join(f"{p['rate']:.0f} req/s {p['duration_s']:g} s" for p in phases)
        note = (
            f"{NORMAL_SHARE:.0%} of capacity, then {BURST_FACTOR:g}x; target_p99_ms "
            f"{TARGET_P99_MS:g}, max_queue {MODES_MAX_QUEUE}, "
            + ", ".join(f"{k} {v:g}" for k, v in MODES.items())
        )
        r.add("modes", "load profile", profile, "", note)
        for i, c in enumerate(changes, 1):
            change = f"{c['from']} → {c['to']}"
            r.add("modes", f"change {i} at {c['t_s']:+.1f} s", change, "", c["reason"])
        ups = sum(is_rise(c) for c in changes)
        note = f"burst from {normal_s:g} s to {burst_end:g} s; one mode down per hold_s"
        r.add("modes", "changes up / down", f"{ups} / {len(changes) - ups}", "", note)
        r.judge("modes", "rises (runs of up changes)", rises, "==", 1)
        r.judge("modes", "falls (runs of down changes)", falls, "==", 1, "", "1 and 1: no flapping")
        at_end = report.Figure(
            "modes", "mode at the end", final, "", "normal", final == "normal", "the last poll"
        )
        r.figures.append(at_end)
        rises_at = [c["t_s"] for c in changes if is_rise(c)]
        back = [c["t_s"] for c in changes if c["to"] == "normal"]
        first_up = _after(rises_at[0], normal_s) if rises_at else None
        r.add("modes", "burst start to first change up", first_up, "s")
        r.add("modes", "burst end to normal", _after(back[-1], burst_end) if back else None, "s")
        note = (
            f"target_p99_ms; p50 {lat.get('p50', 0):.0f} ms; {len(burst)} sent: "
            f"{code_shares(burst)}" + report.busy_note(run)
        )
        name = "p99 of the 200s during the burst"
        r.judge("modes", name, lat.get("p99"), "<=", TARGET_P99_MS, "ms", note)
        last_up = max((t for t in rises_at if t < burst_end), default=None)
        if last_up is not None:
            settled = between(burst, last_up)
            p99 = percentiles(ok_latencies(settled)).get("p99")
            note = f"from {last_up:.1f} s: {len(settled)} sent: {code_shares(settled)}"
            r.add("modes", f"{name}, sent after the last rise", p99, "ms", note)

    # -- 3. breaker -------------------------------------------------------------------------

    def breaker(self) -> None:
        endpoints = {"flaky": {"model": "flaky"}, "steady": {"model": "digits"}}
        extra = {
            "routes": {"safe": {"fallback": {"targets": ["flaky", "steady"], **BREAKER}}},
            "modes": {"enabled": False},
        }
        flag = failing_flag(self.repo)
        flagged_at: list[float] = []

        def fail() -> None:
            flag.touch()
            flagged_at.append(time.perf_counter())  # CLOCK_MONOTONIC, as the samples' origin

        with surge_server("breaker", endpoints, self.repo, self.workdir, extra=extra) as server:
            seconds = self.d.healthy_s + self.d.failing_s
            url = server.url + infer_path("safe")
            spec = self.spec(url, concurrency=BREAKER_CLIENTS, duration_s=seconds)

            def load() -> dict[str, Any]:
                timer = threading.Timer(self.d.healthy_s + 0.3, fail)  # + the loadgen's start
                timer.start()
                try:
                    return run_loadgen(spec)
                finally:
                    timer.cancel()

            try:
                run = self.measure(server, load)
            finally:
                flag.unlink(missing_ok=True)
            open_now = scrape_metrics(server.url).get(
                'surge_breaker_open{route="safe",target="flaky"}'
            )
        self.report.details["breaker"] = {"config": server.notes["config"], "run": run}
        flag_s = flagged_at[0] - run["started_at"] if flagged_at else None
        self._breaker_figures(run, flag_s, open_now)

    def _breaker_figures(
        self, run: dict[str, Any], flag_s: float | None, open_now: float | None
    ) -> None:
        samples = run.pop("samples")
        decisions = {
            f"{labels['target']} {labels['action']}": n
            for labels, n in counted(run, "surge_route_decisions_total")
            if labels["route"] == "safe"
        }
        run["decisions"] = decisions
        log(f"breaker: {run['status']}, decisions {decisions}, flaky failing from {flag_s} s")
        r = self.report
        threshold = BREAKER["failure_threshold"]
        note = (
            f"{BREAKER_CLIENTS} clients, {self.d.healthy_s + self.d.failing_s:g} s; flaky "
            f"fails from {_after(flag_s, 0)} s; "
            + ", ".join(f"{k} {v:g}" for k, v in BREAKER.items())
        )
        r.add("breaker", "requests (closed loop)", len(samples), "", note)
        errors = sum(1 for s in samples if s[1] != "200")
        note = code_shares(samples) + report.busy_note(run)
        r.judge("breaker", "client-visible errors", errors, "==", 0, "", note)
        note = (
            f"surge_route_decisions_total failed; failure_threshold {threshold} + the "
            f"other {BREAKER_CLIENTS - 1} clients' requests in flight"
        )
        name = "requests flaky saw failing, before its breaker opened"
        limit = threshold + BREAKER_CLIENTS - 1
        r.judge("breaker", name, decisions.get("flaky failed", 0), "<=", limit, "", note)
        skipped = decisions.get("flaky skipped_open", 0)
        note = (
            f"served: flaky {decisions.get('flaky served', 0)}, "
            f"steady {decisions.get('steady served', 0)}"
        )
        r.add("breaker", "skipped by the open breaker", skipped, "", note)
        is_open = None if open_now is None else int(open_now)
        r.add("breaker", "breaker open at the end", is_open, "", "surge_breaker_open{target=flaky}")
        if flag_s is None:
            return
        for label, part in (
            ("before", between(samples, 0, flag_s)),
            ("after", between(samples, flag_s)),
        ):
            lat = percentiles(ok_latencies(part))
            note = f"{len(part)} requests, p50 {lat.get('p50', 0):.1f} ms"
            r.add("breaker", f"p99 {label} flaky started failing", lat.get("p99"), "ms", note)


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(
        "python -m benchmarks.routing", __doc__, "where digits/1 is (built there if missing)"
    )
    args = parser.parse_args(argv)
    d = QUICK if args.quick else FULL
    stem = args.out or ("routing_quick" if args.quick else "routing")
    machine = report.machine_facts()
    started = time.perf_counter()
    result = report.Report()
    with tempfile.TemporaryDirectory(prefix="surge-routing-") as workdir:
        repo = build_repository(Path(workdir) / "models", args.repository.resolve())
        bench = RoutingBenchmarks(d, repo, Path(workdir), result, digit_bodies())
        for name in ("ladder", "modes", "breaker"):
            log(f"routing: {name}")
            result.guarded(name, getattr(bench, name), log)
    result.details["run"] = {
        "quick": args.quick,
        "durations": asdict(d),
        "elapsed_s": round(time.perf_counter() - started, 1),
        "models": {"slow/1": SLOW_MODEL, "flaky/1": FLAKY_MODEL},
    }
    title = "surge routing: deadline ladder, burst modes, circuit breaker"
    title += " (quick)" if args.quick else ""
    return publish(RESULTS / stem, result, machine, title, started)


if __name__ == "__main__":
    sys.exit(main())
