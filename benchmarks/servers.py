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
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

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
        main = next(
            (t.user_time + t.system_time for t in proc.threads() if t.id == self.pid), 0.0
        )
        return CpuSample(time.monotonic(), main, total.user + total.system - main)

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
    name: str, argv: list[str], port: int, workdir: Path, ready_path: str, timeout_s: float = 180
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
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
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
    name: str, endpoints: dict[str, dict], repository: Path, workdir: Path
) -> Iterator[ServerProcess]:
    """`surge serve` with a config of just these endpoints, as a user would run it."""
    port = free_port()
    config = {
        "model_repository": str(repository),
        "server": {"host": "127.0.0.1", "port": port, "log_level": "info"},
        "endpoints": endpoints,
    }
    config_path = workdir / f"{name}-{port}.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    argv = [sys.executable, "-m", "surge", "serve", "--config", str(config_path)]
    with run_process(name, argv, port, workdir, "/v2/health/ready") as server:
        server.notes["config"] = config
        yield server


@contextlib.contextmanager
def bare_server(workdir: Path) -> Iterator[ServerProcess]:
    """The bare Starlette baseline (benchmarks/bare_app.py) under the same uvicorn."""
    port = free_port()
    argv = [sys.executable, "-m", "benchmarks.bare_app", "--port", str(port)]
    with run_process("bare", argv, port, workdir, "/v2/health/ready") as server:
        yield server
