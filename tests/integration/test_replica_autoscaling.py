"""Local replicas follow the load over real HTTP: a step of concurrent clients on a slow
model brings a second replica (warmed before it serves), every request is answered, the
decision is audited, exported and shown by `surge status`; when the load goes, the
count comes back down after the cooldown and window."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import ADMIN, run_server
from test_routes import SLOW_DIGITS, endpoint, python_version, v2_body


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("autoscale-repo")
    python_version(root, "slow", SLOW_DIGITS)
    return root


def status(url: str) -> dict:
    answer = httpx.get(f"{url}/admin/endpoints/slow", headers=ADMIN, timeout=10)
    assert answer.status_code == 200, answer.text
    return answer.json()["autoscale"]


def wait_for(predicate, timeout_s: float, what: str) -> float:
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < timeout_s, f"no {what} within {timeout_s} s"
        time.sleep(0.1)
    return time.monotonic() - started


class Load:
    """`clients` closed-loop clients of 1-row requests until stopped (bounded in time)."""

    def __init__(self, url: str, clients: int, max_seconds: float = 60) -> None:
        self.url, self.clients, self.max_seconds = url, clients, max_seconds
        self.codes: list[int] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client) for _ in range(clients)]

    def _client(self) -> None:
        body = v2_body(np.zeros((1, 64), dtype=np.float32))
        ends = time.monotonic() + self.max_seconds
        with httpx.Client(timeout=10) as client:
            while not self._stop.is_set() and time.monotonic() < ends:
                self.codes.append(
                    client.post(f"{self.url}/v2/models/slow/infer", json=body).status_code
                )

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()


def test_a_step_in_load_adds_a_warm_replica_and_its_end_removes_it(repo, tmp_path):
    # The slow model takes 150 ms a batch whatever its size and batches at most 4 rows:
    # 12 clients keep about 12 rows in flight, which one replica cannot take at the
    # target of 4 rows in flight per replica.
    slow = endpoint("slow", batching={"max_batch_size": 4, "max_queue_delay_ms": 1},
                    autoscale={"min_replicas": 1, "max_replicas": 3,
                               "target_in_flight_rows_per_replica": 4,
                               "evaluate_interval_s": 0.5, "scale_down_cooldown_s": 1.0,
                               "scale_down_window_s": 2.0})  # fmt: skip
    config = {"model_repository": str(repo), "endpoints": {"slow": slow}}
    with run_server(config, tmp_path) as server:
        assert status(server.url)["ready"] == 1
        with Load(server.url, clients=12) as load:
            took = wait_for(lambda: status(server.url)["ready"] >= 2, 20, "second replica")
            time.sleep(1.0)
        # Nothing lost while scaling: each request answered, refusals (a deadline the
        # queue ahead could not meet before the second replica came) at once and rare.
        assert set(load.codes) <= {200, 429, 504}, set(load.codes)
        assert load.codes.count(200) >= 0.9 * len(load.codes), load.codes.count(200)
        assert took < 10
        scaled = status(server.url)
        assert scaled["last_decision"]["action"] in ("up", "hold")
        metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
        assert 'surge_autoscale_decisions_total{action="up",endpoint="slow"}' in metrics
        ready = [line for line in metrics.splitlines()
                 if line.startswith('surge_replicas{endpoint="slow",state="ready"}')]  # fmt: skip
        assert ready and float(ready[0].split()[-1]) >= 2
        # No load: back to the minimum after the cooldown and the window, not before.
        wait_for(lambda: status(server.url)["ready"] == 1, 20, "scale down to 1")
        history = httpx.get(f"{server.url}/admin/history?action=autoscale", headers=ADMIN)
        actions = [e["after"]["action"] for e in history.json()["entries"]]
        assert "up" in actions and "down" in actions
        answer = httpx.post(f"{server.url}/v2/models/slow/infer",
                            json=v2_body(np.zeros((1, 64), dtype=np.float32)))  # fmt: skip
        assert answer.status_code == 200
