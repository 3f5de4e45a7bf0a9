"""ONNX Runtime sessions for the `onnx` and `embeddings` runtimes, and int8 quantization.

One helper builds every session so that all replicas follow the same rules:
their own intra-op thread count, no inter-op parallelism, and no spinning
threads (the event loop shares the machine's few cores, and a spinning ORT
pool steals them between batches).
"""

from __future__ import annotations

import fcntl
import logging
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnxruntime as ort

from surge.core.errors import SurgeError
from surge.repository import sha256_file

if TYPE_CHECKING:
    from surge.repository import ModelVersion
    from surge.runtimes.base import RuntimeSettings

log = logging.getLogger(__name__)

# ONNX element types as ORT names them -> (Open Inference Protocol datatype, numpy dtype).
ORT_TYPES: dict[str, tuple[str, Any]] = {
    "tensor(bool)": ("BOOL", np.bool_),
    "tensor(uint8)": ("UINT8", np.uint8),
    "tensor(uint16)": ("UINT16", np.uint16),
    "tensor(uint32)": ("UINT32", np.uint32),
    "tensor(uint64)": ("UINT64", np.uint64),
    "tensor(int8)": ("INT8", np.int8),
    "tensor(int16)": ("INT16", np.int16),
    "tensor(int32)": ("INT32", np.int32),
    "tensor(int64)": ("INT64", np.int64),
    "tensor(float16)": ("FP16", np.float16),
    "tensor(float)": ("FP32", np.float32),
    "tensor(double)": ("FP64", np.float64),
    "tensor(string)": ("BYTES", np.object_),
}


def ort_type(arg: Any, ref: str) -> tuple[str, Any]:
    """(datatype, numpy dtype) of a session input or output, or a clear load error."""
    try:
        return ORT_TYPES[arg.type]
    except KeyError:
        raise SurgeError(
            "bad_manifest",
            f"{ref}: tensor {arg.name!r} is {arg.type}; surge serves plain tensors of "
            f"{', '.join(t.removeprefix('tensor(').rstrip(')') for t in ORT_TYPES)}",
            500,
        ) from None


INT8_RECIPE = "int8-dyn-pc-rr"  # part of the cache key: change it when the recipe changes


def create_session(path: Path, settings: RuntimeSettings) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, settings.threads)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), sess_options=options, providers=providers(settings))


def providers(settings: RuntimeSettings) -> list[str]:
    if settings.device == "cuda":
        if "CUDAExecutionProvider" in ort.get_available_providers():
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]
        log.warning(
            "device 'cuda' requested but this onnxruntime build has no CUDAExecutionProvider "
            "(available: %s); running on CPU",
            ", ".join(ort.get_available_providers()),
        )
    elif settings.device != "cpu":
        raise SurgeError("bad_config", f"unknown device {settings.device!r}; use cpu or cuda", 500)
    return ["CPUExecutionProvider"]


def wants_int8(settings: RuntimeSettings) -> bool:
    if settings.quantization not in ("none", "int8"):
        raise SurgeError(
            "bad_config", f"unknown quantization {settings.quantization!r}; use none or int8", 500
        )
    return settings.quantization == "int8"


def cache_dir(version: ModelVersion, settings: RuntimeSettings) -> Path:
    return Path(settings.extra.get("cache_dir") or version.path / ".cache")


def quantize_int8(src: Path, cache_dir: Path) -> Path:
    """Dynamic int8 quantization (int8 weights, activations quantized per batch at run time).

    The result is cached under the source file's sha256 and the recipe, so each
    artifact is quantized once however many replicas load it, and a rebuilt
    artifact or a changed recipe never picks up a stale quantized copy. The cached
    file's own sha256 is recorded beside it and checked on every reuse: the cache
    lies outside the manifest's checksums, and a file changed there is rebuilt,
    never loaded.
    """
    digest = sha256_file(src)
    target = cache_dir / f"{src.stem}.{digest[:16]}.{INT8_RECIPE}.onnx"
    recorded = target.with_name(target.name + ".sha256")
    cache_dir.mkdir(parents=True, exist_ok=True)
    # One replica at a time checks or builds a cache entry: the others then reuse it
    # rather than each quantizing, and none sees a file without its digest.
    with (cache_dir / f".{target.name}.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.exists():
            if _recorded_digest(recorded) == sha256_file(target):
                return target
            log.warning(
                "the int8 cache %s does not match its recorded sha256 (changed since it was "
                "written, or written without one); quantizing %s again",
                target,
                src.name,
            )
        _quantize_into(src, target)
        _write_digest(recorded, sha256_file(target))
    log.info("quantized %s to int8 at %s", src, target)
    return target


def _recorded_digest(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return None


def _write_digest(path: Path, digest: str) -> None:
    # Replaced, never rewritten in place: a cache directory may be hard-linked into
    # another repository, whose copy must not change under it.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(digest + "\n")
    os.replace(tmp, path)


def _quantize_into(src: Path, target: Path) -> None:
    # Imported here: the quantization tooling pulls in extra modules that fp32 serving never needs.
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # Written beside the target and renamed: a crash never leaves a half-written file
    # under the target's name.
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    # onnxruntime.quantization logs ~7 lines per layer straight to the root logger
    # (and advises a pre-processing step that changed nothing here); a filter on the
    # root logger drops only records logged on it directly, never those of named loggers.
    root = logging.getLogger()
    root.addFilter(_drop_all)
    try:
        # Per-channel scales: with one scale per weight tensor, all-MiniLM-L6-v2's
        # embeddings fell to mean cosine 0.95 against fp32 (min 0.92); per output
        # channel they stay at 0.989. reduce_range (7-bit weights) because on AVX2
        # CPUs without VNNI, ORT's u8 x s8 kernel (VPMADDUBSW) saturates its int16
        # pair sums: a 64x10 MatMul quantized per channel at full range was off by
        # 0.49 in logits of std 0.9 on such a CPU, 0.03 with reduce_range.
        quantize_dynamic(
            src, tmp_name, weight_type=QuantType.QInt8, per_channel=True, reduce_range=True
        )
        os.chmod(tmp_name, 0o644)  # mkstemp makes it private; replicas may run as other users
        os.replace(tmp_name, target)
    finally:
        root.removeFilter(_drop_all)
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)


def _drop_all(record: logging.LogRecord) -> bool:
    return False


def open_sessions(
    version: ModelVersion, settings: RuntimeSettings
) -> tuple[ort.InferenceSession, ort.InferenceSession | None]:
    """The session to serve with, and the fp32 session when int8 serves (for the quality report).

    The caller drops the fp32 session once it has measured the int8 one.
    """
    fp32 = create_session(version.artifact_path, settings)
    if not wants_int8(settings):
        return fp32, None
    int8_path = quantize_int8(version.artifact_path, cache_dir(version, settings))
    return create_session(int8_path, settings), fp32


def compare_rows(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    """How far `candidate` is from `reference`, row by row (row = first dimension)."""
    ref = reference.reshape(len(reference), -1).astype(np.float64)
    cand = candidate.reshape(len(candidate), -1).astype(np.float64)
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(cand, axis=1)
    cosine = np.sum(ref * cand, axis=1) / np.maximum(norms, 1e-12)
    return {
        "rows": len(ref),
        "max_abs_diff": float(np.max(np.abs(ref - cand))) if ref.size else 0.0,
        "cosine_mean": float(np.mean(cosine)) if len(ref) else 1.0,
        "cosine_min": float(np.min(cosine)) if len(ref) else 1.0,
    }
