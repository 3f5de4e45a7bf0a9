"""A user's Python class: `load()` once, then `predict(batch) -> outputs` per batch.

model.yaml names the file and the class:
    runtime: python
    artifact: model.py
    parameters: {class: Model}
`predict` receives a dict of numpy arrays (first dimension = batch) and
returns a dict of arrays with the same first dimension.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np

from surge.core.errors import SurgeError
from surge.core.tensors import NUMPY_DTYPES, Tensors
from surge.runtimes.base import Runtime


class PythonRuntime(Runtime):
    def load(self) -> None:
        path = self.version.artifact_path
        module_name = f"surge_user_{self.version.model}_{self.version.version}"
        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or spec.loader is None:
            shown = self.version.relative(str(self.version.manifest.artifact))
            raise SurgeError("bad_artifact", f"{self.version.ref}: cannot import {shown}", 422)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        class_name = self.version.manifest.parameters.get("class", "Model")
        self.model: Any = getattr(module, class_name)()
        if hasattr(self.model, "load"):
            self.model.load()

    def run(self, inputs: Tensors) -> Tensors:
        return self.model.predict(inputs)

    def warmup_inputs(self, batch_size: int) -> Tensors:
        if hasattr(self.model, "warmup_inputs"):
            return self.model.warmup_inputs(batch_size)
        out: Tensors = {}
        for spec in self.inputs:
            shape = (batch_size, *(d if d > 0 else 1 for d in spec.shape[1:]))
            if spec.datatype == "BYTES":
                out[spec.name] = np.full(shape, b"warm-up", dtype=object)
            else:
                out[spec.name] = np.zeros(shape, dtype=NUMPY_DTYPES[spec.datatype])
        return out
