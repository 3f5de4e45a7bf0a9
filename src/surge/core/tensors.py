"""Tensors as every layer sees them: numpy arrays keyed by name, the first dimension
being the batch; BYTES tensors are 1-D object arrays of `bytes`.

The vocabulary shared by the model repository (a manifest declares its tensors), the
runtimes (which run them), the protocol codecs and the routes (which pass them on);
it lives here so none of those has to import another for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

# Open Inference Protocol datatypes and their numpy equivalents.
NUMPY_DTYPES: dict[str, Any] = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
    "BYTES": np.object_,
}

Tensors = dict[str, np.ndarray]


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]  # -1 marks a variable dimension; dimension 0 is the batch

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}
