"""The onnx runtime on a tiny graph built here: x @ W -> logits -> softmax -> probs."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from surge.core.errors import SurgeError
from surge.core.tensors import TensorSpec
from surge.repository import ModelRepository, ModelVersion, write_manifest
from surge.runtimes.base import RuntimeSettings
from surge.runtimes.onnx import OnnxRuntime
from surge.runtimes.onnx_session import quantize_int8

FEATURES, CLASSES = 64, 10
# Scaled so logits have unit variance, like a trained classifier's, not a saturated softmax.
WEIGHTS = (np.random.default_rng(7).standard_normal((FEATURES, CLASSES)) / FEATURES**0.5).astype(
    np.float32
)


def tiny_model(path: Path) -> None:
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
        ],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", FEATURES])],
        [
            helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", CLASSES]),
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", CLASSES]),
        ],
        initializer=[numpy_helper.from_array(WEIGHTS, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by any onnxruntime >= 1.10
    onnx.checker.check_model(model)
    onnx.save(model, path)


def make_version(root: Path, manifest_extra: dict | None = None) -> ModelVersion:
    version_dir = root / "tiny" / "1"
    version_dir.mkdir(parents=True)
    tiny_model(version_dir / "model.onnx")
    write_manifest(
        version_dir, {"runtime": "onnx", "artifact": "model.onnx", **(manifest_extra or {})}
    )
    return ModelRepository(root).version("tiny", "1")


def reference(x: np.ndarray) -> np.ndarray:
    logits = x.astype(np.float32) @ WEIGHTS
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.fixture
def version(tmp_path: Path) -> ModelVersion:
    return make_version(tmp_path)


@pytest.fixture
def runtime(version: ModelVersion) -> OnnxRuntime:
    rt = OnnxRuntime(version, RuntimeSettings())
    rt.load()
    return rt


def test_specs_derived_from_graph(version: ModelVersion, runtime: OnnxRuntime) -> None:
    version.verify_checksums()
    assert runtime.inputs == [TensorSpec("x", "FP32", (-1, FEATURES))]
    assert runtime.outputs == [
        TensorSpec("probs", "FP32", (-1, CLASSES)),
        TensorSpec("logits", "FP32", (-1, CLASSES)),
    ]


def test_manifest_specs_win(tmp_path: Path) -> None:
    version = make_version(
        tmp_path,
        {
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, FEATURES]}],
            "outputs": [{"name": "probs", "datatype": "FP32", "shape": [-1, CLASSES]}],
        },
    )
    rt = OnnxRuntime(version, RuntimeSettings())
    rt.load()
    out = rt.run({"x": np.zeros((2, FEATURES), np.float32)})
    assert list(out) == ["probs"]  # only the outputs the manifest publishes


def test_run_matches_numpy_and_casts(runtime: OnnxRuntime) -> None:
    x = np.random.default_rng(1).standard_normal((5, FEATURES))  # float64 on purpose
    out = runtime.run({"x": x})
    assert out["probs"].dtype == np.float32 and out["probs"].shape == (5, CLASSES)
    np.testing.assert_allclose(out["probs"], reference(x), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["logits"], x.astype(np.float32) @ WEIGHTS, rtol=1e-4, atol=1e-4)


def test_bad_inputs_are_client_errors(runtime: OnnxRuntime) -> None:
    cases = [
        {"y": np.zeros((1, FEATURES), np.float32)},  # missing
        {"x": np.zeros((1, FEATURES + 1), np.float32)},  # wrong width
        {"x": np.zeros(FEATURES, np.float32)},  # wrong rank
        {"x": np.array([["a"] * FEATURES], dtype=object)},  # not numbers
    ]
    for inputs in cases:
        with pytest.raises(SurgeError) as info:
            runtime.run(inputs)
        assert info.value.status == 400, inputs


def test_warmup_inputs(runtime: OnnxRuntime) -> None:
    batch = runtime.warmup_inputs(7)
    assert batch["x"].shape == (7, FEATURES) and batch["x"].dtype == np.float32
    assert runtime.run(batch)["probs"].shape == (7, CLASSES)
    assert "quantization" not in runtime.describe()


def test_int8_reports_quality_and_caches(
    version: ModelVersion, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = tmp_path / "cache"
    settings = RuntimeSettings(quantization="int8", extra={"cache_dir": str(cache)})
    with caplog.at_level(logging.INFO, logger="surge.runtimes"):
        rt = OnnxRuntime(version, settings)
        rt.load()
    report = rt.describe()
    quality = report["int8_vs_fp32"]
    print(f"tiny int8 vs fp32: {quality}")
    assert report["quantization"] == "int8"
    assert quality["output"] == "probs" and quality["rows"] == 8
    assert quality["cosine_mean"] > 0.99 and quality["argmax_agreement"] >= 0.875
    assert 0 < quality["max_abs_diff"] < 0.05
    assert any("int8 quality" in r.getMessage() for r in caplog.records)
    # Quantized once: the cache holds one file and a second load reuses it.
    (cached,) = cache.glob("*.onnx")
    mtime = cached.stat().st_mtime_ns
    assert quantize_int8(version.artifact_path, cache) == cached
    assert cached.stat().st_mtime_ns == mtime
    assert any(n.op_type == "MatMulInteger" for n in onnx.load(cached).graph.node)


def test_a_tampered_int8_cache_is_rebuilt_never_loaded(
    version: ModelVersion, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = tmp_path / "cache"
    cached = quantize_int8(version.artifact_path, cache)
    good = cached.read_bytes()
    # Someone swaps the quantized graph for one of their own (here: the fp32 graph).
    cached.write_bytes(version.artifact_path.read_bytes())
    with caplog.at_level(logging.WARNING, logger="surge.runtimes"):
        again = quantize_int8(version.artifact_path, cache)
    assert again == cached and cached.read_bytes() == good
    assert any("does not match its recorded sha256" in r.getMessage() for r in caplog.records)
    assert any(n.op_type == "MatMulInteger" for n in onnx.load(cached).graph.node)
    # A cache entry with no recorded digest (written before digests were) is rebuilt too.
    next(cache.glob("*.sha256")).unlink()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="surge.runtimes"):
        quantize_int8(version.artifact_path, cache)
    assert any("does not match" in r.getMessage() for r in caplog.records)
    assert len(list(cache.glob("*.sha256"))) == 1


def test_int8_cache_defaults_to_version_dir(version: ModelVersion) -> None:
    rt = OnnxRuntime(version, RuntimeSettings(quantization="int8"))
    rt.load()
    assert len(list((version.path / ".cache").glob("*.onnx"))) == 1
    version.verify_checksums()  # the cache never touches checksummed files


def test_unknown_settings_are_config_errors(version: ModelVersion) -> None:
    for settings in (RuntimeSettings(quantization="int4"), RuntimeSettings(device="tpu")):
        with pytest.raises(SurgeError) as info:
            OnnxRuntime(version, settings).load()
        assert info.value.status == 500


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="CUDA present")
def test_cuda_falls_back_to_cpu(version: ModelVersion, caplog: pytest.LogCaptureFixture) -> None:
    rt = OnnxRuntime(version, RuntimeSettings(device="cuda"))
    with caplog.at_level(logging.WARNING, logger="surge.runtimes"):
        rt.load()
    assert rt.describe()["providers"] == ["CPUExecutionProvider"]
    assert any("CUDAExecutionProvider" in r.getMessage() for r in caplog.records)
