"""(4) The serving path's own cost: the `noop` endpoint vs a bare Starlette app.

Both run under the same uvicorn settings, side by side, and are loaded in
alternation (bare, surge, bare, surge...) so a change in the machine's other
load during the run hits both; the best run of each is compared.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from benchmarks import wrk
from benchmarks.report import Report, busy_note
from benchmarks.servers import bare_server, measure, surge_server
from benchmarks.settings import NOOP_CONNECTIONS, WRK_CAP_PER_S, Settings
from benchmarks.workload import NOOP_BODY

PATH = "/v2/models/noop/infer"
# Every other knob at its default, as a user gets it: receipts, drift and stage timing on.
ENDPOINTS = {"noop": {"version": "1"}}
NOOP_TARGET = 0.6  # noop / bare Starlette throughput


def bench_noop(settings: Settings, report: Report, log: Callable[[str], None]) -> None:
    d = settings.durations

    def load(url: str, seconds: float) -> dict[str, Any]:
        return wrk.run(
            url + PATH,
            [NOOP_BODY],
            connections=NOOP_CONNECTIONS,
            duration_s=seconds,
            max_requests=int(WRK_CAP_PER_S * seconds),
        )

    runs: dict[str, list[dict[str, Any]]] = {"bare": [], "surge": []}
    with contextlib.ExitStack() as stack:
        servers = {
            "bare": stack.enter_context(bare_server(settings.workdir)),
            "surge": stack.enter_context(
                surge_server("noop", ENDPOINTS, settings.repository, settings.workdir)
            ),
        }
        for server in servers.values():
            load(server.url, d.warmup_s)
        for _ in range(d.noop_rounds):
            for name, server in servers.items():
                runs[name].append(
                    measure(server, lambda s=server: load(s.url, d.noop_s), log, d.quiet_wait_s)
                )
    best = {name: max(rs, key=lambda r: r["ok_rps"]) for name, rs in runs.items()}
    report.details["noop"] = {"endpoints": ENDPOINTS, "runs": runs}
    for name, run in best.items():
        log(
            f"noop {name}: {run['ok_rps']} req/s, p99 {run['latency_ms']['p99']} ms, server "
            f"{run['server']['cpu_us_per_request']} µs CPU/request, wrk "
            f"{run['generator_cores']} cores, background {run['background_cores']} cores"
        )
    ratio = round(best["surge"]["ok_rps"] / best["bare"]["ok_rps"], 3)
    report.judge(
        "noop",
        "noop / bare Starlette throughput (same v2 JSON in and out), receipts on",
        ratio,
        ">=",
        NOOP_TARGET,
        "x",
        f"wrk, {NOOP_CONNECTIONS} connections, best of {d.noop_rounds} runs each; "
        "observability at the config defaults (receipts, drift, stage timing on)",
        headline=1,
    )
    for name, label in (("bare", "bare Starlette"), ("surge", "surge noop")):
        run = best[name]
        lat = run["latency_ms"]
        report.add(
            "noop",
            f"{label}: throughput",
            run["ok_rps"],
            "req/s",
            f"p50 {lat['p50']:.2f} ms, p99 {lat['p99']:.2f} ms" + busy_note(run),
        )
        report.add(
            "noop",
            f"{label}: server CPU per request",
            run["server"]["cpu_us_per_request"],
            "µs",
            f"{run['server']['total_cores']} cores busy",
        )
