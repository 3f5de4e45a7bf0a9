"""Start and stop the servers under test, and read their memory and CPU.

Each server is its own subprocess on a free loopback port with its own temp
config, so a benchmark never measures a server another one warmed or leaked
into. Start-up time is from spawn to the first 200 on the ready route.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class CpuSample:
    """CPU seconds a process has used, split into its main thread and the rest."""

    wall: float
    main: float  # uvicorn's event loop runs on the main thread
    other: float  # replica threads and their ONNX Runtime intra-op pools

    def since(self, before: CpuSample) -> dict[str, float]:
        """Cores used between two samples (1.0 = one core busy the whole time)."""
        wall = max(self.wall - before.wall, 1e-9)
        main, other = self.main - before.main, self.other - before.other
        return {
            "loop_cores": round(main / wall, 3),
            "other_cores": round(other / wall, 3),
            "total_cores": round((main + other) / wall, 3),
            "cpu_s": round(main + other, 3),
        }


@dataclass
class ServerProcess:
    name: str
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    startup_s: float = 0.0
    notes: dict[str, object] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.process.pid

    def rss_mb(self) -> float:
        return psutil.Process(self.pid).memory_info().rss / 2**20

    def cpu(self) -> CpuSample:
        # Exited threads' time stays in the process total; attribute it to "other".
        proc = psutil.Process(self.pid)
        total = proc.cpu_times()
        main = next((t.user_time + t.system_time for t in proc.threads() if t.id == self.pid), 0.0)
        other = total.user + total.system - main
        # Helper processes the server started (the receipt sink) are the server's work too.
        for child in proc.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                child_times = child.cpu_times()
                other += child_times.user + child_times.system
        return CpuSample(time.monotonic(), main, other)

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


@contextlib.contextmanager
def run_process(
    name: str,
    argv: list[str],
    port: int,
    workdir: Path,
    ready_path: str,
    timeout_s: float = 180,
    env: dict[str, str] | None = None,
) -> Iterator[ServerProcess]:
    """Spawn `argv`, wait for `ready_path` to answer 200, SIGTERM it afterwards."""
    log_path = workdir / f"{name}-{port}.log"
    with log_path.open("wb") as log:
        started = time.perf_counter()
        process = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO_ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
    server = ServerProcess(name, f"http://127.0.0.1:{port}", process, log_path)
    try:
        deadline = started + timeout_s
        while not _ready(server.url + ready_path):
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode}:\n{server.log_tail()}")
            if time.perf_counter() > deadline:
                raise RuntimeError(f"{name} not ready after {timeout_s}s:\n{server.log_tail()}")
            time.sleep(0.02)  # the start-up figure is good to this resolution
        server.startup_s = time.perf_counter() - started
        yield server
    finally:
        stop(process)


def stop(process: subprocess.Popen[bytes], timeout_s: float = 30) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


@contextlib.contextmanager
def surge_server(
    name: str,
    endpoints: dict[str, dict],
    repository: Path,
    workdir: Path,
    env: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> Iterator[ServerProcess]:
    """`surge serve` with a config of just these endpoints, as a user would run it.

    `env` adds environment variables (for experiments, e.g. a PYTHONPATH with a patch);
    `extra` adds top-level config sections (`routes`, `modes`).
    """
    port = free_port()
    config = {
        "model_repository": str(Path(repository).resolve()),
        "server": {"host": "127.0.0.1", "port": port, "log_level": "info"},
        "endpoints": endpoints,
        **(extra or {}),
    }
    config_path = workdir / f"{name}-{port}.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    argv = [sys.executable, "-m", "surge", "serve", "--config", str(config_path)]
    with run_process(name, argv, port, workdir, "/v2/health/ready", env=env) as server:
        server.notes["config"] = config
        yield server


@contextlib.contextmanager
def bare_server(workdir: Path) -> Iterator[ServerProcess]:
    """The bare Starlette baseline (benchmarks/bare_app.py) under the same uvicorn."""
    port = free_port()
    argv = [sys.executable, "-m", "benchmarks.bare_app", "--port", str(port)]
    with run_process("bare", argv, port, workdir, "/v2/health/ready") as server:
        yield server


def machine_busy() -> float:
    """CPU seconds the whole machine has been busy (all cores), for background-load checks."""
    t = psutil.cpu_times()
    # Not sum(t): guest time is already inside user, and steal is not work done here.
    return t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)


def machine_steal() -> float:
    """CPU seconds the hypervisor gave to other guests while this one wanted to run."""
    return getattr(psutil.cpu_times(), "steal", 0.0)


def scrape_metrics(url: str) -> dict[str, float]:
    """surge's own Prometheus counters, sums and counts (histogram buckets left out)."""
    try:
        with urllib.request.urlopen(url + "/metrics", timeout=5) as response:
            text = response.read().decode()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return {}
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("surge_") and "_bucket{" not in line and "_created" not in line:
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def metrics_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    """What the server counted during one run, and the means that explain it."""
    delta = {k: round(v - before.get(k, 0.0), 6) for k, v in after.items()}
    delta = {k: v for k, v in delta.items() if v and "gauge" not in k and "_ready" not in k}
    out: dict[str, Any] = {"counters": delta}
    for endpoint in {
        k.split('endpoint="', 1)[1].split('"', 1)[0] for k in delta if "endpoint=" in k
    }:
        rows = delta.get(f'surge_batch_size_rows_sum{{endpoint="{endpoint}"}}', 0.0)
        batches = delta.get(f'surge_batch_size_rows_count{{endpoint="{endpoint}"}}', 0.0)
        if batches:
            out[endpoint] = {"batches": batches, "mean_batch_rows": round(rows / batches, 2)}
            # Replica time from the replica thread's own clock, every version summed: from
            # picking a batch up to handing its answers back (runtime.run and the hooks
            # around it); compute (the stage histogram, one sample per batch) is run alone.
            prefix = f'surge_replica_busy_seconds_total{{endpoint="{endpoint}",'
            busy = [v for k, v in delta.items() if k.startswith(prefix)]
            if busy:
                out[endpoint]["replica_busy_s"] = round(sum(busy), 4)
            compute = f'surge_stage_latency_seconds_sum{{endpoint="{endpoint}",stage="compute"}}'
            if compute in delta:
                out[endpoint]["compute_s"] = round(delta[compute], 4)
            for stage in ("queue_wait", "batch_formation", "compute", "total"):
                key = f'surge_stage_latency_seconds_%s{{endpoint="{endpoint}",stage="{stage}"}}'
                n = delta.get(key % "count", 0.0)
                if n:
                    out[endpoint][f"mean_{stage}_ms"] = round(delta[key % "sum"] / n * 1000, 2)
    return out


def replica_utilisation(
    run: dict[str, Any], endpoint: str, replicas: int
) -> dict[str, float] | None:
    """How much of a run's wall time the endpoint's replicas spent on batches, from the
    server's own counters (`surge_replica_busy_seconds_total`, and the compute stage's
    `_sum`), with the mean batch and the mean idle gap between one batch and the next."""
    m = run.get("server_metrics", {}).get(endpoint)
    window = run.get("metrics_window_s")
    if not m or not window or "replica_busy_s" not in m:
        return None
    capacity = window * max(1, replicas)  # replica-seconds available in the window
    busy = m["replica_busy_s"]
    return {
        "replicas": replicas,
        "window_s": window,
        "busy_share": round(busy / capacity, 3),
        "compute_share": round(m.get("compute_s", 0.0) / capacity, 3),
        "batches": m["batches"],
        "mean_batch_rows": m["mean_batch_rows"],
        "mean_busy_ms": round(busy / m["batches"] * 1000, 2),
        "mean_idle_gap_ms": round(max(0.0, capacity - busy) / m["batches"] * 1000, 2),
    }


def wait_for_quiet(
    log: Callable[[str], None],
    max_busy_cores: float = 0.3,
    window_s: float = 2.0,
    max_wait_s: float = 60.0,
) -> float:
    """Wait (bounded) until other processes leave the machine nearly idle; return their load.

    On a shared machine another job's CPU use lands in every figure. Waiting for a quiet
    window before each measured run removes most of it; what remains is reported per run.
    """
    deadline = time.monotonic() + max_wait_s
    while True:
        busy = machine_busy()
        time.sleep(window_s)
        cores = (machine_busy() - busy) / window_s
        if cores <= max_busy_cores or time.monotonic() > deadline:
            if cores > max_busy_cores:
                log(f"machine still busy ({cores:.2f} cores used by others); measuring anyway")
            return cores


def measure(
    server: ServerProcess,
    load: Callable[[], dict[str, Any]],
    log: Callable[[str], None],
    quiet_wait_s: float = 60.0,
) -> dict[str, Any]:
    """Run `load` and add what it cost: the server's CPU, split into its event loop and the
    rest, per request; what the server counted (batch sizes, stage times, refusals); and the
    machine's CPU that neither the server nor the generator used (other work on a shared
    machine skews every figure, so each run says how much there was).
    """
    quiet_before = wait_for_quiet(log, max_wait_s=quiet_wait_s)
    metrics_before = scrape_metrics(server.url)
    scraped_before = time.monotonic()
    before, busy_before, steal_before = server.cpu(), machine_busy(), machine_steal()
    result = load()
    after, busy_after, steal_after = server.cpu(), machine_busy(), machine_steal()
    scraped_after = time.monotonic()
    result["server_metrics"] = metrics_delta(metrics_before, scrape_metrics(server.url))
    # The wall time the counters above cover (the load plus the generator's start and stop).
    result["metrics_window_s"] = round(scraped_after - scraped_before, 4)
    result["background_cores_before"] = round(quiet_before, 3)
    cpu = after.since(before)
    wall = max(after.wall - before.wall, 1e-9)
    answered = max(result["requests"], 1)
    result["server"] = {
        **cpu,
        "cpu_us_per_request": round(cpu["cpu_s"] / answered * 1e6, 1),
        "loop_cpu_us_per_request": round(cpu["loop_cores"] * wall / answered * 1e6, 1),
        "rss_mb": round(server.rss_mb(), 1),
    }
    machine = (busy_after - busy_before) / wall
    result["machine_busy_cores"] = round(machine, 3)
    result["steal_cores"] = round((steal_after - steal_before) / wall, 3)
    result["background_cores"] = round(
        max(0.0, machine - cpu["total_cores"] - result["generator_cores"]), 3
    )
    return result
