"""scikit-learn estimators saved with joblib: probabilities and a label per row."""

from __future__ import annotations

from typing import Any

import joblib
import numpy as np
from threadpoolctl import threadpool_limits

from surge.core.tensors import Tensors
from surge.runtimes.base import Runtime


class SklearnRuntime(Runtime):
    """Input: the manifest's first input (FP32 [-1, n_features]).

    Outputs: `probabilities` (FP32 [-1, n_classes]) when the estimator has
    `predict_proba`, and `label` (INT64 [-1]) — the argmax class.
    """

    def load(self) -> None:
        self.model: Any = joblib.load(self.version.artifact_path)
        self._input = self.inputs[0].name
        self._classes = np.asarray(getattr(self.model, "classes_", []))
        # BLAS threads follow the replica's share of the cores, no oversubscription.
        self._threads = threadpool_limits(limits=self.settings.threads)

    def run(self, inputs: Tensors) -> Tensors:
        x = inputs[self._input]
        if hasattr(self.model, "predict_proba"):
            probabilities = self.model.predict_proba(x).astype(np.float32, copy=False)
            label = self._classes[probabilities.argmax(axis=1)].astype(np.int64, copy=False)
            return {"probabilities": probabilities, "label": label}
        return {"label": np.asarray(self.model.predict(x)).astype(np.int64, copy=False)}

    def warmup_inputs(self, batch_size: int) -> Tensors:
        spec = self.inputs[0]
        width = spec.shape[1] if len(spec.shape) > 1 and spec.shape[1] > 0 else 1
        rng = np.random.default_rng(0)
        return {spec.name: rng.random((batch_size, width), dtype=np.float32) * 16}

    def describe(self) -> dict[str, Any]:
        return {"estimator": type(self.model).__name__} if hasattr(self, "model") else {}
