"""The digits data every digits demo model is trained and scored on, and how one is saved.

Shared by the demo's own versions (build.py) and the cascade's tiers (cascade_models.py)
so they all see the same fixed split.
"""

from __future__ import annotations

from pathlib import Path

from surge.repository import write_manifest


def digits_split():
    """scikit-learn's bundled digits, split 75/25 the same way every time (seed 0)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    return train_test_split(x.astype("float32"), y, test_size=0.25, random_state=0, stratify=y)


def save_digits(out: Path, model, description: str) -> float:
    """Save a fitted digits classifier as a version directory; returns its held-out
    accuracy (also in the manifest)."""
    import joblib

    _, x_test, _, y_test = digits_split()
    accuracy = float(model.score(x_test, y_test))
    joblib.dump(model, out / "model.joblib")
    write_manifest(out, {
        "runtime": "sklearn",
        "artifact": "model.joblib",
        "description": f"{description}, held-out accuracy {accuracy:.4f}",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}],
        "outputs": [
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]},
            {"name": "label", "datatype": "INT64", "shape": [-1]},
        ],
        "parameters": {"held_out_accuracy": accuracy},
    })  # fmt: skip
    return accuracy
