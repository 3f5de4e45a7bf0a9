"""Shared by the rollout tests: a model repository with several versions, a steady
client load that records every answer, and admin calls."""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
from conftest import ADMIN, digits_rows

from surge.repository import link_version, write_manifest

# A version that loads and warms up fine (warm-up feeds zeros) but fails on real images.
BROKEN_ON_REAL_INPUT = """
import numpy as np

class Model:
    def predict(self, batch):
        x = batch["input"]
        if float(np.abs(x).sum()) > 0:
            raise RuntimeError("this version cannot read real images")
        n = len(x)
        return {"probabilities": np.full((n, 10), 0.1, dtype=np.float32),
                "label": np.zeros(n, dtype=np.int64)}
"""


def rollout_repository(demo_models: Path, root: Path) -> Path:
    """digits 1 and 2 and embed 1 and 2 from the demo (linked), plus digits 9: broken."""
    for ref in ("digits/1", "digits/2", "embed/1", "embed/2"):
        link_version(demo_models / ref, root / ref)
    broken = root / "digits" / "9"
    broken.mkdir(parents=True)
    (broken / "model.py").write_text(BROKEN_ON_REAL_INPUT)
    write_manifest(broken, {
        "runtime": "python", "artifact": "model.py", "parameters": {"class": "Model"},
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}],
        "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]},
                    {"name": "label", "datatype": "INT64", "shape": [-1]}],
    })  # fmt: skip
    return root


def digits_config(repo: Path, **rollout) -> dict:
    # A loose p99 ratio: these tests are about the mechanics of stepping and rolling back,
    # and p99 over a few dozen requests on a shared 2-core machine is noise.
    policy = {"steps_percent": [5, 50, 100], "min_requests": 20, "min_step_s": 1.0,
              "evaluate_interval_s": 0.2, "breach_min_requests": 5, "max_p99_ratio": 10.0,
              **rollout}  # fmt: skip
    return {
        "model_repository": str(repo),
        "server": {"shutdown_grace_s": 10},
        "endpoints": {
            "digits": {"batching": {"max_batch_size": 16, "max_queue_delay_ms": 1},
                       "timeout_ms": 5000, "warmup_batches": 1, "rollout": policy},
        },
    }  # fmt: skip


def digit_body(i: int) -> dict:
    x, _ = digits_rows(64)
    row = x[i % 64]
    return {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64],
                        "data": row.tolist()}]}  # fmt: skip


@dataclass
class SteadyLoad:
    """`clients` threads sending one digit per request, back to back, until stopped
    (bounded: at most `max_requests` and `max_seconds`)."""

    url: str
    clients: int = 4
    max_requests: int = 20_000
    max_seconds: float = 120.0
    headers: dict = field(default_factory=dict)
    codes: Counter = field(default_factory=Counter)
    versions: Counter = field(default_factory=Counter)
    failures: list = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._sent = 0
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(self.clients)]

    def __enter__(self) -> SteadyLoad:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)

    @property
    def total(self) -> int:
        return sum(self.codes.values())

    def _run(self, client_id: int) -> None:
        deadline = time.monotonic() + self.max_seconds
        headers = {"X-Request-Timeout-Ms": "5000", **self.headers}
        with httpx.Client(timeout=30) as client:
            i = client_id
            while not self._stop.is_set() and time.monotonic() < deadline:
                with self._lock:
                    if self._sent >= self.max_requests:
                        return
                    self._sent += 1
                try:
                    r = client.post(
                        f"{self.url}/v2/models/digits/infer", json=digit_body(i), headers=headers
                    )
                except httpx.HTTPError as exc:
                    with self._lock:
                        self.codes["connection_error"] += 1
                        self.failures.append(repr(exc))
                    continue
                with self._lock:
                    self.codes[r.status_code] += 1
                    if r.status_code == 200:
                        self.versions[r.headers["x-model-version"]] += 1
                    else:
                        self.failures.append(r.text)
                i += self.clients


def admin(url: str, method: str, path: str, **kwargs) -> httpx.Response:
    return httpx.request(method, f"{url}{path}", headers=ADMIN, timeout=120, **kwargs)


def deploy(url: str, endpoint: str = "digits", **body) -> httpx.Response:
    return admin(url, "POST", f"/admin/endpoints/{endpoint}/deploy", json=body)


def wait_for(predicate, timeout_s: float, what: str, interval_s: float = 0.1):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def status(url: str, endpoint: str = "digits") -> dict:
    r = admin(url, "GET", f"/admin/endpoints/{endpoint}")
    assert r.status_code == 200, r.text
    return r.json()


def history(url: str, endpoint: str = "digits") -> list[dict]:
    return admin(url, "GET", f"/admin/history?endpoint={endpoint}").json()["entries"]


def row_labels() -> np.ndarray:
    return digits_rows(64)[1]
