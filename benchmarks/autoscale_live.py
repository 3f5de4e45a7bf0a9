"""Live step: how long from a step in load to the second local replica serving.

    python -m benchmarks.autoscale_live           # 3 steps, about a minute

A surge server with one autoscaled endpoint on a python model that takes 150 ms a batch
of at most 4 rows (a slow model: one replica holds 4 rows in flight at the target).
Each round: idle at 1 replica, then 12 closed-loop clients start; the time until the
admin API reports 2 ready replicas (the new one loaded and warmed) is the figure, split
into decision (until the autoscaler asked: the replica shows as pending) and warm-up.
Then the load stops and the count returns to 1 before the next round. Writes
benchmarks/results/autoscale_live.{json,md}.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.servers import REPO_ROOT, surge_server
from surge.repository import write_manifest

RESULTS = REPO_ROOT / "benchmarks" / "results"
ADMIN_KEY = "bench-admin-key"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
SLOW = """
import time
import numpy as np

class Model:
    def predict(self, batch):
        time.sleep(0.15)
        n = len(batch["input"])
        return {"label": np.full(n, 7, dtype=np.int64)}
"""
BODY = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 8], "data": [0.0] * 8}]}
AUTOSCALE = {"min_replicas": 1, "max_replicas": 3, "target_in_flight_rows_per_replica": 4,
             "evaluate_interval_s": 0.5, "scale_down_cooldown_s": 1.0,
             "scale_down_window_s": 2.0}  # fmt: skip


def slow_repository(root: Path) -> Path:
    version = root / "slow" / "1"
    version.mkdir(parents=True)
    (version / "model.py").write_text(SLOW)
    write_manifest(version, {
        "runtime": "python", "artifact": "model.py", "parameters": {"class": "Model"},
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 8]}],
        "outputs": [{"name": "label", "datatype": "INT64", "shape": [-1]}],
    })  # fmt: skip
    return root


def scale_status(url: str) -> dict[str, Any]:
    return httpx.get(f"{url}/admin/endpoints/slow", headers=ADMIN, timeout=10).json()["autoscale"]


def one_step(url: str) -> dict[str, float]:
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(timeout=10) as c:
            ends = time.monotonic() + 30
            while not stop.is_set() and time.monotonic() < ends:
                c.post(f"{url}/v2/models/slow/infer", json=BODY)

    threads = [threading.Thread(target=client) for _ in range(12)]
    started = time.monotonic()
    for t in threads:
        t.start()
    asked = ready = None
    while ready is None and time.monotonic() - started < 30:
        s = scale_status(url)
        now = time.monotonic() - started
        if asked is None and s["ready"] + s["pending"] >= 2:
            asked = now
        if s["ready"] >= 2:
            ready = now
        time.sleep(0.02)
    stop.set()
    for t in threads:
        t.join()
    deadline = time.monotonic() + 30
    while scale_status(url)["ready"] > 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    return {"decided_s": asked or float("nan"), "serving_s": ready or float("nan")}


def main() -> int:
    import hashlib

    with tempfile.TemporaryDirectory(prefix="surge-bench-autoscale-") as tmp:
        workdir = Path(tmp)
        repo = slow_repository(workdir / "repo")
        endpoints = {"slow": {"batching": {"max_batch_size": 4, "max_queue_delay_ms": 1},
                              "warmup_batches": 1, "autoscale": AUTOSCALE}}  # fmt: skip
        extra = {"admin": {"keys": [{"name": "bench",
                                     "sha256": hashlib.sha256(ADMIN_KEY.encode()).hexdigest()}]},
                 "modes": {"enabled": False}}  # fmt: skip
        with surge_server("autoscale", endpoints, repo, workdir, extra=extra) as server:
            steps = []
            for i in range(3):
                steps.append(one_step(server.url))
                print(f"step {i + 1}: {steps[-1]}", flush=True)
    doc = {"autoscale": AUTOSCALE, "steps": steps,
           "median_decided_s": statistics.median(s["decided_s"] for s in steps),
           "median_serving_s": statistics.median(s["serving_s"] for s in steps)}  # fmt: skip
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "autoscale_live.json").write_text(json.dumps(doc, indent=2))
    rows = "\n".join(f"| {i + 1} | {s['decided_s']:.2f} | {s['serving_s']:.2f} |"
                     for i, s in enumerate(steps))  # fmt: skip
    (RESULTS / "autoscale_live.md").write_text(
        "# Live step: local replicas 1 -> 2\n\n"
        "`python -m benchmarks.autoscale_live`: a python model of 150 ms per batch of at most "
        "4 rows, 12 closed-loop clients start at t = 0; autoscale every 0.5 s, target 4 rows "
        "in flight per replica.\n\n"
        "| step | asked for (s) | second replica serving (s) |\n|---|---|---|\n"
        f"{rows}\n\nMedian: asked for after {doc['median_decided_s']:.2f} s, serving after "
        f"{doc['median_serving_s']:.2f} s (the rest is loading and warming the replica).\n"
    )
    print((RESULTS / "autoscale_live.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
