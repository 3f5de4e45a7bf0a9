"""The in-process limit, written apart from surge: onnxruntime + tokenizers + numpy only.

    python -m benchmarks.reference_embed .surge/models/embed/1 --threads 2

Loads the ONNX encoder and tokenizer the demo built and embeds the benchmark
sentences the way sentence-transformers does (truncate at 256 tokens, pad
each batch to its longest text, mean over the attention mask, L2 normalise),
tokenizer included in the timed loop, at batch sizes 8/16/32/64. The best
emb/s is the denominator of the HTTP throughput ratios. It imports nothing
from surge, and the orchestrator runs it in its own process, so a slowdown
inside surge's runtime cannot hide in both sides of a ratio.

With --vectors it also writes the embeddings of the benchmark sentences and
of varied texts to an .npz file, which the orchestrator compares with
surge's runtime (cosine within 1e-5).

Prints one JSON object on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import psutil
import yaml
from tokenizers import Tokenizer

from benchmarks.servers import machine_busy, wait_for_quiet
from benchmarks.workload import SENTENCES, varied_sentences

MAX_SEQ_LENGTH = 256  # all-MiniLM-L6-v2's sentence_bert_config.json
BATCH_SIZES = (8, 16, 32, 64)
VARIED_TEXTS = 256
VARIED_BATCH = 32


class ReferenceEncoder:
    """Text in, unit vectors out: the encoder with nothing around it."""

    def __init__(self, version_dir: Path, threads: int) -> None:
        manifest = yaml.safe_load((version_dir / "model.yaml").read_text()) or {}
        model = version_dir / manifest.get("artifact", "model.onnx")
        params = manifest.get("parameters") or {}
        self.max_seq_length = int(params.get("max_seq_length", MAX_SEQ_LENGTH))
        self.tokenizer = Tokenizer.from_file(str(version_dir / "tokenizer.json"))
        # The shipped tokenizer.json pads every text to a fixed 128 and truncates at 128;
        # sentence-transformers truncates at max_seq_length and pads to the batch's longest.
        pad = self.tokenizer.padding or {"pad_id": 0, "pad_token": "[PAD]", "pad_type_id": 0}
        self.tokenizer.enable_truncation(max_length=self.max_seq_length)
        self.tokenizer.enable_padding(
            pad_id=pad["pad_id"], pad_token=pad["pad_token"], pad_type_id=pad["pad_type_id"]
        )
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads  # everything else at ONNX Runtime's defaults
        self.session = ort.InferenceSession(
            str(model), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.output = self.session.get_outputs()[0].name
        self.model_path = model

    def embed(self, texts: list[str]) -> np.ndarray:
        encodings = self.tokenizer.encode_batch(texts)
        columns = {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
        }
        (hidden,) = self.session.run([self.output], {n: columns[n] for n in self.inputs})
        mask = columns["attention_mask"].astype(np.float32)[:, :, None]
        pooled = (hidden * mask).sum(axis=1) / np.clip(mask.sum(axis=1), 1e-9, None)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return pooled / np.clip(norms, 1e-12, None)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def throughput(encoder: ReferenceEncoder, batch_size: int, duration_s: float) -> dict[str, Any]:
    """emb/s at one batch size, cycling through every rotation of the 16 sentences."""
    n = len(SENTENCES)
    batches = [[SENTENCES[(k * batch_size + j) % n] for j in range(batch_size)] for k in range(n)]
    for batch in batches[:3]:  # first calls of a shape pay one-off allocations
        encoder.embed(batch)
    process = psutil.Process()
    cpu_before, busy_before = process.cpu_times(), machine_busy()
    times: list[float] = []
    started = time.perf_counter()
    end = started + duration_s
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        encoder.embed(batches[len(times) % n])
        times.append(time.perf_counter() - t0)
    wall = time.perf_counter() - started
    cpu_after, busy_after = process.cpu_times(), machine_busy()
    own = (cpu_after.user + cpu_after.system - cpu_before.user - cpu_before.system) / wall
    return {
        "batch_size": batch_size,
        "batches": len(times),
        "emb_per_s": round(len(times) * batch_size / wall, 1),
        "batch_ms_p50": round(sorted(times)[len(times) // 2] * 1000, 2),
        "process_cores": round(own, 3),
        "background_cores": round(max(0.0, (busy_after - busy_before) / wall - own), 3),
    }


def sweep(
    encoder: ReferenceEncoder, duration_s: float, rounds: int, quiet_wait_s: float
) -> dict[str, Any]:
    runs: dict[int, list[dict[str, Any]]] = {size: [] for size in BATCH_SIZES}
    for _ in range(rounds):
        for size in BATCH_SIZES:
            wait_for_quiet(log, max_wait_s=quiet_wait_s)
            result = throughput(encoder, size, duration_s)
            log(
                f"reference batch {size}: {result['emb_per_s']} emb/s, "
                f"{result['process_cores']} cores, background {result['background_cores']}"
            )
            runs[size].append(result)
    best_per_size = [max(rs, key=lambda r: r["emb_per_s"]) for rs in runs.values()]
    best = max(best_per_size, key=lambda r: r["emb_per_s"])
    return {"best": best, "per_size": best_per_size, "runs": runs}


def write_vectors(encoder: ReferenceEncoder, path: Path) -> None:
    """The benchmark sentences in one batch of 16, and varied texts (1-400 words) in 32s."""
    varied = varied_sentences(VARIED_TEXTS)
    parts = [
        encoder.embed(varied[i : i + VARIED_BATCH]) for i in range(0, len(varied), VARIED_BATCH)
    ]
    np.savez(path, sentences=encoder.embed(SENTENCES), varied=np.concatenate(parts))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.reference_embed",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("version_dir", type=Path, help="the embed version, e.g. .../embed/1")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--seconds", type=float, default=5.0, help="per batch size")
    parser.add_argument("--rounds", type=int, default=1, help="sweeps; best of each size")
    parser.add_argument("--quiet-wait", type=float, default=60.0, help="max s before each run")
    parser.add_argument("--vectors", type=Path, help="write the check embeddings here (.npz)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    encoder = ReferenceEncoder(args.version_dir, args.threads)
    load_s = time.perf_counter() - started
    if args.vectors:
        write_vectors(encoder, args.vectors)
    result = sweep(encoder, args.seconds, args.rounds, args.quiet_wait)
    assert not any(m == "surge" or m.startswith("surge.") for m in sys.modules), "imports surge"
    result.update(
        {
            "model": str(encoder.model_path),
            "threads": args.threads,
            "session": "intra_op_num_threads only; ONNX Runtime defaults otherwise",
            "max_seq_length": encoder.max_seq_length,
            "load_s": round(load_s, 2),
            "onnxruntime": ort.__version__,
        }
    )
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
