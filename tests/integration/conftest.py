"""Integration tests run the real `surge serve` in a subprocess on a free loopback port."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from surge.config import hash_admin_key
from tests.secret_scan import SERVER_LOGS, secrets_of

REPO_ROOT = Path(__file__).parents[2]
ADMIN_KEY = "test-admin-key"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    port: int
    process: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text()

    def terminate(self, timeout_s: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout_s)


@contextlib.contextmanager
def run_server(config: dict, workdir: Path, start_timeout_s: float = 180) -> Iterator[Server]:
    """Write `config`, start the server on a free port, wait until ready, stop it after."""
    port = free_port()
    config = {
        "registry_url": f"sqlite:///{workdir / 'registry.db'}",
        "admin": {"keys": [{"name": "tester", "sha256": hash_admin_key(ADMIN_KEY)}]},
        **config,
        "server": {**config.get("server", {}), "port": port},
    }
    config_path = workdir / f"surge-{port}.yaml"
    config_path.write_text(yaml.safe_dump(config))
    log_path = workdir / f"surge-{port}.log"
    # Scanned for secrets when the server stops; a leak fails the run (tests/conftest.py).
    SERVER_LOGS.watch(log_path, {"the admin key": ADMIN_KEY, **secrets_of(config, os.environ)})
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "surge", "serve", "--config", str(config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    server = Server(f"http://127.0.0.1:{port}", port, process, log_path)
    try:
        deadline = time.monotonic() + start_timeout_s
        while True:
            if process.poll() is not None:
                pytest.fail(f"server exited with {process.returncode}:\n{server.log()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{server.url}/v2/health/ready", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                pytest.fail(f"server not ready after {start_timeout_s}s:\n{server.log()}")
            time.sleep(0.2)
        yield server
    finally:
        try:
            server.terminate(timeout_s=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        SERVER_LOGS.collect(log_path)


DEMO_ENDPOINTS = {
    "digits": {"batching": {"max_batch_size": 64, "max_queue_delay_ms": 1}, "max_queue": 512},
    "embed": {
        "replicas": 2,  # the demo runs 1; the tests also cover several replicas
        "batching": {"max_batch_size": 32, "max_queue_delay_ms": 2},
        "max_queue": 512,
    },
}


@pytest.fixture(scope="session")
def demo_server(demo_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One demo server (digits + embed) shared by the protocol tests."""
    config = {
        "model_repository": str(demo_models),
        "server": {"max_body_bytes": 1_000_000},
        "endpoints": DEMO_ENDPOINTS,
    }
    with run_server(config, tmp_path_factory.mktemp("demo")) as server:
        yield server


def digits_rows(n: int = 1):
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return x[:n].astype("float32"), y[:n]
