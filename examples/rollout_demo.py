"""A scripted rollout under steady load, on the demo models: run it from the repo root.

    .venv/bin/python examples/rollout_demo.py

It starts `surge serve` on a free loopback port with a fast rollout policy, keeps
4 clients sending digits, and then:
  1. canaries digits v2 at 5 % and lets the controller promote it to 100 %;
  2. canaries a broken version (fails on every real image) and lets the controller
     roll it back;
  3. hot-swaps back to v1.
It prints, for each phase, the requests answered and how many failed, and what the
audit log recorded. Every load is bounded (120 s, 20,000 requests per phase).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import yaml
from sklearn.datasets import load_digits

from surge.demo.build import ensure_demo_models
from surge.repository import link_version, write_manifest

KEY = "demo-admin-key"
BROKEN = """
import numpy as np

class Model:
    def predict(self, batch):
        if float(np.abs(batch["input"]).sum()) > 0:
            raise RuntimeError("this version cannot read real images")
        n = len(batch["input"])
        return {"probabilities": np.full((n, 10), 0.1, dtype=np.float32),
                "label": np.zeros(n, dtype=np.int64)}
"""


def repository(root: Path) -> Path:
    demo = Path(".surge/models").resolve()
    ensure_demo_models(demo, ("digits/1", "digits/2"))
    for ref in ("digits/1", "digits/2"):
        link_version(demo / ref, root / ref)  # a symlink would lead out of this repository
    broken = root / "digits" / "9"
    broken.mkdir()
    (broken / "model.py").write_text(BROKEN)
    write_manifest(broken, {
        "runtime": "python", "artifact": "model.py", "parameters": {"class": "Model"},
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}],
        "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]},
                    {"name": "label", "datatype": "INT64", "shape": [-1]}],
    })  # fmt: skip
    return root


class Load:
    """Closed-loop clients; each answer is counted by status code."""

    def __init__(self, url: str, clients: int = 4) -> None:
        images = load_digits().data.astype(np.float32)
        self.bodies = [
            {
                "inputs": [
                    {"name": "input", "datatype": "FP32", "shape": [1, 64], "data": r.tolist()}
                ]
            }
            for r in images[:64]
        ]
        self.url, self.codes, self.lock = url, Counter(), threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.run, args=(i,)) for i in range(clients)]

    def run(self, i: int) -> None:
        ends = time.monotonic() + 120
        with httpx.Client(timeout=30) as client:
            while not self.stop.is_set() and time.monotonic() < ends and self.total < 20_000:
                try:
                    r = client.post(f"{self.url}/v2/models/digits/infer", json=self.bodies[i % 64],
                                    headers={"X-Request-Timeout-Ms": "5000"})  # fmt: skip
                    code: int | str = r.status_code
                except httpx.HTTPError:
                    code = "connection_error"
                with self.lock:
                    self.codes[code] += 1
                i += 1

    @property
    def total(self) -> int:
        return sum(self.codes.values())

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join()


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="surge-rollout-demo-"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = {
        "model_repository": str(repository(work / "models")),
        "registry_url": f"sqlite:///{work / 'registry.db'}",
        "server": {"port": port},
        "endpoints": {"digits": {
            "batching": {"max_batch_size": 16, "max_queue_delay_ms": 1}, "timeout_ms": 5000,
            "rollout": {"steps_percent": [5, 25, 50, 100], "min_requests": 50, "min_step_s": 2,
                        "evaluate_interval_s": 0.25, "breach_min_requests": 5},
        }},
    }  # fmt: skip
    (work / "surge.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "SURGE_ADMIN_KEY": KEY}
    log = (work / "server.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "surge", "serve", "--config", str(work / "surge.yaml")],
        stdout=log, stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    admin = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=120)
    try:
        wait(lambda: _ready(url), 180)
        results = {}
        phases = [
            ("canary v2, auto-promote", {"version": "2", "mode": "canary", "percent": 5}),
            ("canary broken v9, auto-rollback", {"version": "9", "mode": "canary", "percent": 5}),
            ("hot swap back to v1", {"version": "1"}),
        ]
        for name, deploy in phases:
            with Load(url) as load:
                wait(lambda: load.total >= 100, 30)
                r = admin.post("/admin/endpoints/digits/deploy", json=deploy)
                if r.status_code != 200:
                    raise SystemExit(f"deploy {deploy} failed: {r.status_code} {r.text}")
                wait(lambda: admin.get("/admin/endpoints/digits").json()["mode"] == "single", 120)
                time.sleep(1.0)  # traffic after the change, too
            failed = load.total - load.codes[200]
            last = admin.get("/admin/history?endpoint=digits&limit=1").json()["entries"][0]
            serving = admin.get("/admin/endpoints/digits").json()["versions"][0]["version"]
            results[name] = {"answered": load.total, "failed": failed, "codes": dict(load.codes),
                             "serving": serving, "last_change": last["reason"]}  # fmt: skip
            print(
                f"{name}: {load.total} requests, {failed} failed {dict(load.codes)}; "
                f"v{serving} serves after: {last['actor']} {last['action']}: {last['reason']}"
            )
        print("\naudit log (newest first):")
        for e in admin.get("/admin/history?endpoint=digits").json()["entries"]:
            print(f"  {e['actor']:<10} {e['action']:<9} {e['reason']}")
        print(json.dumps(results))
        return 0
    finally:
        admin.close()
        server.terminate()
        server.wait(60)


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def wait(predicate, timeout_s: float) -> None:
    ends = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > ends:
            raise SystemExit(f"timed out after {timeout_s} s")
        time.sleep(0.2)


if __name__ == "__main__":
    sys.exit(main())
