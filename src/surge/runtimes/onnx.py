"""The `onnx` runtime: any ONNX graph, served by ONNX Runtime.

Tensors map one to one onto the graph's inputs and outputs; a manifest may
leave them out and the runtime reads them from the graph. ORT releases the GIL
while it computes, so replicas run as threads.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import onnxruntime as ort

# ORT raises this for inputs that do not fit the graph (rank, fixed dims, type): a client fault.
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

from surge.core.errors import bad_input
from surge.core.tensors import Tensors, TensorSpec
from surge.runtimes.base import Runtime
from surge.runtimes.onnx_session import compare_rows, open_sessions, ort_type

log = logging.getLogger(__name__)

QUALITY_ROWS = 8  # rows of random warmup data measured through both fp32 and int8


class OnnxRuntime(Runtime):
    session: ort.InferenceSession

    def load(self) -> None:
        self.session, fp32 = open_sessions(self.version, self.settings)
        if not self.inputs:
            self.inputs = [self._spec(arg) for arg in self.session.get_inputs()]
        if not self.outputs:
            self.outputs = [self._spec(arg) for arg in self.session.get_outputs()]
        ref = self.version.ref
        self._dtypes = {arg.name: ort_type(arg, ref)[1] for arg in self.session.get_inputs()}
        self._output_names = [spec.name for spec in self.outputs]
        self._quality: dict[str, Any] = {}
        if fp32 is not None:
            self._quality = {"quantization": "int8", "int8_vs_fp32": self._measure_int8(fp32)}
            log.info("%s int8 quality: %s", self.version.ref, self._quality["int8_vs_fp32"])

    def run(self, inputs: Tensors) -> Tensors:
        feed: dict[str, np.ndarray] = {}
        for name, dtype in self._dtypes.items():
            if name not in inputs:
                raise bad_input(f"missing input tensor {name!r}; expected {sorted(self._dtypes)}")
            try:
                feed[name] = np.asarray(inputs[name], dtype=dtype)
            except (TypeError, ValueError) as exc:
                raise bad_input(
                    f"input {name!r} cannot be read as {dtype.__name__}: {exc}"
                ) from exc
        try:
            results = self.session.run(self._output_names, feed)
        except InvalidArgument as exc:
            raise bad_input(f"{self.version.ref} rejected the inputs: {exc}") from exc
        return dict(zip(self._output_names, results, strict=True))

    def warmup_inputs(self, batch_size: int) -> Tensors:
        return _random_inputs(self.inputs, self._dtypes, batch_size, seed=0)

    def describe(self) -> dict[str, Any]:
        return {
            "providers": self.session.get_providers(),
            "threads": self.settings.threads,
            **self._quality,
        }

    def _spec(self, arg: Any) -> TensorSpec:
        # Symbolic ("batch") and unknown (None) dims are variable.
        shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in arg.shape)
        return TensorSpec(arg.name, ort_type(arg, self.version.ref)[0], shape)

    def _measure_int8(self, fp32: ort.InferenceSession) -> dict[str, Any]:
        batch = self.warmup_inputs(QUALITY_ROWS)
        reference = dict(zip(self._output_names, fp32.run(self._output_names, batch), strict=True))
        quantized = self.run(batch)
        # Measure the first floating output: for a classifier that is the scores,
        # for an encoder the embedding, the output whose drift a client would see.
        name = next(
            (n for n in self._output_names if np.issubdtype(reference[n].dtype, np.floating)),
            None,
        )
        if name is None:
            return {"note": "no floating-point output to compare"}
        ref, cand = reference[name], quantized[name]
        report: dict[str, Any] = {"output": name, **compare_rows(ref, cand)}
        if ref.ndim >= 2 and ref.shape[-1] > 1:
            report["argmax_agreement"] = float(np.mean(ref.argmax(-1) == cand.argmax(-1)))
        return report


def _random_inputs(
    specs: list[TensorSpec], dtypes: dict[str, Any], batch_size: int, seed: int
) -> Tensors:
    rng = np.random.default_rng(seed)
    batch: Tensors = {}
    for spec in specs:
        shape = tuple(
            batch_size if i == 0 and d == -1 else (1 if d == -1 else d)
            for i, d in enumerate(spec.shape)
        )
        dtype = dtypes.get(spec.name, np.float32)
        if dtype is np.object_:
            batch[spec.name] = np.full(shape, b"warmup", dtype=object)
        elif dtype is np.bool_:
            batch[spec.name] = rng.integers(0, 2, shape).astype(np.bool_)
        elif np.issubdtype(dtype, np.integer):
            # Small non-negative values stay valid as indices (token ids, categories).
            batch[spec.name] = rng.integers(0, 2, shape).astype(dtype)
        else:
            batch[spec.name] = rng.standard_normal(shape).astype(dtype)
    return batch
