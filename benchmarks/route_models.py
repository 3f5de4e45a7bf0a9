"""The models the routing benchmark serves, built into a temp repository, and its requests.

- `slow/1`: a Python model that takes SLOW_BATCH_S per batch whatever its size, like an
  accelerator's fixed cost per call; the costly rung of the ladder and the endpoint the
  burst hits. A sleep, so its capacity holds on a busy machine and it leaves the cores
  to the server and the generator.
- `flaky/1`: a Python model that answers at once until a file named `failing` appears
  in its version directory, then raises on every batch.
- `digits/1`: the demo's logistic regression, linked from the demo repository.

All three take digits' input (`input` FP32 [-1, 64]) and give its outputs, so a route
can put any of them behind one public name.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from surge.repository import MANIFEST, link_version, write_manifest

SLOW_BATCH_S = 0.020
SLOW_BATCH_ROWS = 4

_OUTPUTS = """
        rows = len(batch["input"])
        probabilities = np.full((rows, 10), 0.1, dtype=np.float32)
        return {"probabilities": probabilities, "label": np.zeros(rows, dtype=np.int64)}
"""
SLOW_MODEL = f'''"""A costly model: {SLOW_BATCH_S * 1000:g} ms per batch, whatever its size."""
import time

import numpy as np


class Model:
    def predict(self, batch):
        time.sleep({SLOW_BATCH_S})
{_OUTPUTS}'''
FLAKY_MODEL = f'''"""Answers at once until a file named `failing` appears beside it, then raises."""
from pathlib import Path

import numpy as np

FLAG = Path(__file__).with_name("failing")


class Model:
    def predict(self, batch):
        if FLAG.exists():
            raise RuntimeError("flaky: switched to failing by the benchmark")
{_OUTPUTS}'''


def build_repository(root: Path, demo: Path) -> Path:
    """slow/1 and flaky/1 written under `root`, digits linked from `demo` (built if missing)."""
    from surge.demo.build import ensure_demo_models

    ensure_demo_models(demo, ("digits/1",))
    digits = yaml.safe_load((demo / "digits" / "1" / MANIFEST).read_text())
    for model, source in (("slow", SLOW_MODEL), ("flaky", FLAKY_MODEL)):
        version = root / model / "1"
        version.mkdir(parents=True)
        (version / "model.py").write_text(source)
        manifest = {"runtime": "python", "artifact": "model.py", "parameters": {"class": "Model"}}
        manifest |= {"inputs": digits["inputs"], "outputs": digits["outputs"]}
        write_manifest(version, manifest)  # with the checksums a version must match
    link_version(demo / "digits" / "1", root / "digits" / "1")  # a symlink would lead out
    return root


def failing_flag(root: Path) -> Path:
    """The file whose presence makes flaky/1 fail."""
    return root / "flaky" / "1" / "failing"


def slow_endpoint(max_queue: int) -> dict[str, Any]:
    batching = {"max_batch_size": SLOW_BATCH_ROWS, "max_queue_delay_ms": 2}
    return {"model": "slow", "batching": batching, "max_queue": max_queue}


def digit_bodies(n: int = 16) -> list[str]:
    """v2 bodies of one digits row each (the last `n` rows of sklearn's digits)."""
    from sklearn.datasets import load_digits

    def body(row: list[float]) -> str:
        tensor = {"name": "input", "datatype": "FP32", "shape": [1, 64], "data": row}
        return json.dumps({"inputs": [tensor]})

    return [body(row.tolist()) for row in load_digits().data[-n:]]
