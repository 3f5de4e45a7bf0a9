"""What watching every request costs, and whether the receipts add up.

    python -m benchmarks.observability            # full run, about 5 minutes
    python -m benchmarks.observability --quick    # smoke version, about a minute

Writes benchmarks/results/observability.json and .md (observability_quick for --quick)
and prints the markdown table; the exit status is 1 when a target is missed.

1. overhead: the serving core's no-op and embed loads (wrk, 32 connections, the same
   bodies as benchmarks.run) against two `surge serve` processes side by side, one
   with observability as shipped (receipts, energy metering, drift, per-stage timing
   and Server-Timing) and one with all of it off. Runs alternate on/off so the
   machine's other load hits both; the best run of each is compared.
2. receipts: 10,000 embed requests (wrk, capped at 10,000) against the "on" server:
   receipts stored (the store's count) against requests answered (surge_requests_total),
   and the dropped count the server exports.
3. attribution: the compute attributed across those receipts (each request's share of
   each batch it was in) against the replicas' measured busy time over the same load.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from benchmarks import report, wrk
from benchmarks.run import RESULTS, base_parser, ensure_models, log, publish
from benchmarks.servers import ServerProcess, measure, scrape_metrics, surge_server
from benchmarks.settings import NOOP_CONNECTIONS, TARGET_CLIENTS, WRK_CAP_PER_S
from benchmarks.workload import NOOP_BODY, V2_BODIES
from surge.config import DEMO_CONFIG

OFF = {
    "receipts": {"enabled": False},
    "drift": {"enabled": False},
    "stage_timing": False,
}
RECEIPT_LOAD = 10_000
ADMIN_KEY = secrets.token_hex(16)


@dataclass(frozen=True)
class Durations:
    noop_s: float
    embed_s: float
    rounds: int  # on and off alternate this many times; the best of each counts
    warmup_s: float
    quiet_wait_s: float


FULL = Durations(10, 15, 3, 3, 60)
QUICK = Durations(3, 4, 1, 1, 5)


def _counter(metrics: dict[str, float], name: str, **labels: str) -> float:
    """Sum of a scraped counter's series whose labels include `labels`."""
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    return sum(
        value
        for key, value in metrics.items()
        if key.split("{", 1)[0] == name and all(w in key for w in wanted)
    )


def _admin(url: str, path: str) -> Any:
    request = urllib.request.Request(url + path, headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


class ObservabilityBenchmarks:
    def __init__(self, d: Durations, repository: Path, workdir: Path, r: report.Report) -> None:
        self.d, self.repository, self.workdir, self.r = d, repository, workdir, r
        self.rps = 0.0  # the last "on" throughput: sizes the receipt load's duration

    @contextlib.contextmanager
    def pair(self, endpoints: dict[str, Any]) -> Any:
        """The same endpoints served twice: observability as shipped, and all of it off."""
        with contextlib.ExitStack() as stack:
            servers = {}
            for name, observability in (("on", {}), ("off", OFF)):
                db = self.workdir / f"{name}-{secrets.token_hex(4)}.db"
                extra = {"registry_url": f"sqlite:///{db}", "observability": observability}
                servers[name] = stack.enter_context(
                    surge_server(
                        f"obs-{name}", endpoints, self.repository, self.workdir,
                        env={"SURGE_ADMIN_KEY": ADMIN_KEY}, extra=extra,
                    )
                )  # fmt: skip
            yield servers

    def compare(self, bench: str, servers: dict[str, ServerProcess], path: str,
                bodies: list[str], connections: int, seconds: float) -> None:  # fmt: skip
        def load(server: ServerProcess, s: float) -> dict[str, Any]:
            return wrk.run(server.url + path, bodies, connections=connections, duration_s=s,
                           max_requests=int(WRK_CAP_PER_S * s))  # fmt: skip

        for server in servers.values():
            load(server, self.d.warmup_s)
        runs: dict[str, list[dict[str, Any]]] = {"on": [], "off": []}
        for _ in range(self.d.rounds):
            for name, server in servers.items():
                runs[name].append(
                    measure(server, lambda s=server: load(s, seconds), log, self.d.quiet_wait_s)
                )
        best = {name: max(rs, key=lambda run: run["ok_rps"]) for name, rs in runs.items()}
        self.r.details[bench] = {"runs": runs}
        on, off = best["on"], best["off"]
        how = f"wrk, {connections} connections, best of {self.d.rounds} runs each"
        ratio = round(on["ok_rps"] / off["ok_rps"], 3)
        rates = f"{on['ok_rps']} vs {off['ok_rps']} req/s; {how}"
        self.r.judge(bench, "throughput on / off", ratio, ">=", 0.95, "x", rates)
        self.rps = on["ok_rps"]
        p99_on, p99_off = on["latency_ms"]["p99"], off["latency_ms"]["p99"]
        self.r.judge(bench, "p99 on / off", round(p99_on / p99_off, 3), "<=", 1.1, "x",
                     f"{p99_on:.2f} vs {p99_off:.2f} ms")  # fmt: skip
        for name, run in best.items():
            note = f"p50 {run['latency_ms']['p50']:.2f} ms" + report.busy_note(run)
            cpu = run["server"]["cpu_us_per_request"]
            self.r.add(bench, f"server CPU per request, {name}", cpu, "µs", note)

    def noop(self) -> None:
        with self.pair({"noop": {"version": "1"}}) as servers:
            self.compare("noop", servers, "/v2/models/noop/infer", [NOOP_BODY],
                         NOOP_CONNECTIONS, self.d.noop_s)  # fmt: skip

    def embed(self) -> None:
        endpoints = {"embed": yaml.safe_load(DEMO_CONFIG.read_text())["endpoints"]["embed"]}
        with self.pair(endpoints) as servers:
            self.compare("embed", servers, "/v2/models/embed/infer", V2_BODIES,
                         TARGET_CLIENTS, self.d.embed_s)  # fmt: skip
            self.receipts(servers["on"])

    def receipts(self, server: ServerProcess) -> None:
        """Parts 2 and 3 on the embed server that kept receipts (after part 1's loads)."""
        since = time.time()
        before = scrape_metrics(server.url)
        # wrk runs for its whole duration even after the cap: size it to the cap.
        seconds = min(120.0, RECEIPT_LOAD / max(self.rps, 50.0) * 1.3 + 2)
        run = wrk.run(server.url + "/v2/models/embed/infer", V2_BODIES,
                      connections=TARGET_CLIENTS, duration_s=seconds,
                      max_requests=RECEIPT_LOAD)  # fmt: skip
        time.sleep(1.0)  # one flush interval and more: every receipt is in the buffer's past
        after = scrape_metrics(server.url)
        answered = _counter(after, "surge_requests_total", endpoint="embed") - _counter(
            before, "surge_requests_total", endpoint="embed"
        )
        dropped = _counter(after, "surge_receipts_dropped_total") - _counter(
            before, "surge_receipts_dropped_total"
        )
        busy = _counter(after, "surge_replica_busy_seconds_total", endpoint="embed") - _counter(
            before, "surge_replica_busy_seconds_total", endpoint="embed"
        )
        summary = _admin(server.url, f"/admin/receipts/summary?endpoint=embed&since={since}")
        stored = summary["receipts"]
        self.r.details["receipts"] = {"wrk": run, "summary": summary, "answered": answered,
                                      "dropped": dropped, "busy_s": busy}  # fmt: skip
        sent = f"wrk sent {run['requests']} (cap {RECEIPT_LOAD}), {run['ok_rps']} req/s"
        self.r.add("receipts", "requests answered", int(answered), "", sent)
        self.r.add("receipts", "receipts stored", stored, "", f"dropped (exported): {dropped:.0f}")
        missing = int(answered - stored - dropped)
        why = "every answer is either stored or counted as dropped"
        self.r.judge("receipts", "answered - stored - dropped", missing, "==", 0, "", why)
        attributed = summary["compute_s"]
        self.r.judge("attribution", "attributed compute / replica busy time",
                     round(attributed / busy, 4) if busy else None, ">=", 0.95, "x",
                     f"{attributed:.3f} s across receipts vs {busy:.3f} s busy")  # fmt: skip
        self.r.judge("attribution", "attributed compute / replica busy time (upper)",
                     round(attributed / busy, 4) if busy else None, "<=", 1.05, "x")  # fmt: skip
        self.r.add("attribution", "energy across receipts", round(summary["energy_j"], 2), "J",
                   "CPU time x watts_per_core (no RAPL counters on this machine)")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(
        "python -m benchmarks.observability", __doc__, "where noop/1 and embed/1 are"
    )
    args = parser.parse_args(argv)
    d = QUICK if args.quick else FULL
    stem = args.out or ("observability_quick" if args.quick else "observability")
    if not wrk.available():
        log("wrk is not installed (make bench installs it); cannot run")
        return 2
    ensure_models(args.repository.resolve(), ["noop", "http"])
    machine = report.machine_facts()
    started = time.perf_counter()
    result = report.Report()
    with tempfile.TemporaryDirectory(prefix="surge-observability-") as workdir:
        bench = ObservabilityBenchmarks(d, args.repository.resolve(), Path(workdir), result)
        for name in ("noop", "embed"):
            log(f"observability: {name}")
            result.guarded(name, getattr(bench, name), log)
    result.details["run"] = {"quick": args.quick, "durations": asdict(d), "off": OFF,
                             "elapsed_s": round(time.perf_counter() - started, 1)}  # fmt: skip
    title = "surge observability: overhead on vs off, receipts, attribution"
    title += " (quick)" if args.quick else ""
    return publish(RESULTS / stem, result, machine, title, started)


if __name__ == "__main__":
    sys.exit(main())
