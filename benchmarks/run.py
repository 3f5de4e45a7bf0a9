"""Run the serving-core benchmarks side by side in one process tree and write the report.

    python -m benchmarks.run                  # full run (about 7 minutes on 2 cores)
    python -m benchmarks.run --quick          # smoke version (about 2 minutes)
    python -m benchmarks.run --only http,noop # some of them (names below)

Writes benchmarks/results/<stem>.json and .md and prints the markdown table.
The stem is serving_core for a full run, serving_core_quick for --quick and
serving_core_only for --only, so a smoke run never overwrites the full
results; --out picks another. See README.md here for what each figure means.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from benchmarks import report, wrk
from benchmarks.embed_http import DemoServerBenchmarks
from benchmarks.inprocess import bench_inprocess, bench_int8
from benchmarks.overhead import bench_noop
from benchmarks.servers import REPO_ROOT
from benchmarks.settings import FULL, QUICK, Settings
from benchmarks.workload import SENTENCES
from surge.serving.cores import cpu_count

# In report order. The in-process ones run first, with no server running;
# the demo-server ones share one server process (embed_http.py).
BENCHES = {
    "inprocess": "(1) the embeddings model in process: a reference apart from surge, and surge's",
    "http": "(2) embed over HTTP, closed loop at 8/32/64 clients (wrk; aiohttp cross-check)",
    "openloop": "(3) embed over HTTP, Poisson arrivals at 50 % and 90 % of capacity",
    "noop": "(4) the no-op endpoint vs a bare Starlette app on the same uvicorn",
    "overload": "(5) 2x capacity open loop with 500 ms deadlines",
    "int8": "(6) int8 vs fp32 embeddings in process: speed and cosine",
    "startup": "(7) demo server start-up time and memory",
}
DEMO_SERVER = ("startup", "http", "openloop", "overload")
RESULTS = Path(__file__).parent / "results"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def select(only: str | None) -> list[str]:
    selected = list(BENCHES) if not only else [n.strip() for n in only.split(",") if n.strip()]
    unknown = [n for n in selected if n not in BENCHES]
    if unknown:
        raise SystemExit(f"unknown benchmark(s) {unknown}; choose from {', '.join(BENCHES)}")
    if "http" in selected and "inprocess" not in selected:
        selected.insert(0, "inprocess")  # the HTTP throughput figures are ratios to it
    return selected


def base_parser(prog: str, doc: str | None, repository_help: str) -> argparse.ArgumentParser:
    """The options every benchmark command shares: --quick, --repository, --out."""
    parser = argparse.ArgumentParser(
        prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="short smoke version")
    parser.add_argument(
        "--repository",
        type=Path,
        default=REPO_ROOT / ".surge" / "models",
        help=repository_help,
    )
    parser.add_argument("--out", help="results file stem under benchmarks/results/")
    return parser


def ensure_models(repository: Path, selected: list[str]) -> None:
    from surge.demo.build import ensure_demo_models

    needed = set()
    if set(selected) - {"noop"}:
        needed.add("embed")
    if set(selected) & set(DEMO_SERVER):
        needed.add("digits")  # the demo server serves it too
    if "noop" in selected:
        needed.add("noop")
    ensure_demo_models(repository, tuple(sorted(needed)))


def run(selected: list[str], settings: Settings) -> report.Report:
    result = report.Report()
    limits: dict[str, float] = {}
    if "inprocess" in selected:
        result.guarded(
            "inprocess", lambda: limits.update(bench_inprocess(settings, result, log)), log
        )
    if "int8" in selected:
        result.guarded("int8", lambda: bench_int8(settings, result, log), log)
    if set(selected) & set(DEMO_SERVER):
        demo = DemoServerBenchmarks(settings, result, log, selected)
        result.guarded("startup", lambda: demo.run(limits), log)
    if "noop" in selected:
        result.guarded("noop", lambda: bench_noop(settings, result, log), log)
    result.sort(list(BENCHES))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(
        "python -m benchmarks.run",
        __doc__,
        "model repository (missing demo models are built there first)",
    )
    parser.add_argument("--only", help="comma-separated, from: " + ", ".join(BENCHES))
    args = parser.parse_args(argv)
    selected = select(args.only)
    if not wrk.available():
        print("wrk is not installed: apt-get install wrk (`make bench` does it)", file=sys.stderr)
        return 2
    repository = args.repository.resolve()
    ensure_models(repository, selected)
    durations = QUICK if args.quick else FULL
    stem = args.out or (
        "serving_core_quick" if args.quick else "serving_core_only" if args.only else "serving_core"
    )
    machine = report.machine_facts()
    started = time.perf_counter()
    log(f"benchmarks: {', '.join(selected)} ({'quick' if args.quick else 'full'})")
    with tempfile.TemporaryDirectory(prefix="surge-bench-") as workdir:
        settings = Settings(durations, repository, Path(workdir), cpu_count())
        result = run(selected, settings)
    result.details["run"] = {
        "selected": selected,
        "quick": args.quick,
        "durations": asdict(durations),
        "elapsed_s": round(time.perf_counter() - started, 1),
        "repository": str(repository),
        "sentences": SENTENCES,
    }
    title = "surge serving core" + (" (quick)" if args.quick else "")
    return publish(RESULTS / stem, result, machine, title, started)


def publish(
    stem: Path, result: report.Report, machine: dict[str, Any], title: str, started: float
) -> int:
    """Write and print the report; the exit status is 1 when a target is missed."""
    print(report.write(stem, result, machine, title))
    log(f"wrote {stem}.json and .md in {time.perf_counter() - started:.0f}s")
    return 0 if all(f.met is not False for f in result.figures) else 1


if __name__ == "__main__":
    sys.exit(main())
