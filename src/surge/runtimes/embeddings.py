"""The `embeddings` runtime: sentence embeddings from a BERT-style ONNX encoder.

Tokenizes with the `tokenizers` library, runs the encoder in ONNX Runtime and
pools the way sentence-transformers does (mean over the attention mask, then
L2 normalisation), so vectors match the reference model's to cosine ~1. No
torch or transformers here: the server stays light and starts fast.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from surge.core.errors import SurgeError, bad_input
from surge.core.tensors import Tensors, TensorSpec
from surge.runtimes.base import Runtime
from surge.runtimes.onnx_session import compare_rows, open_sessions, ort_type

log = logging.getLogger(__name__)

# Typical texts of varied length. Warm-up batches also seed the deployment's
# latency model, which admission uses to judge deadlines, so they must look like
# traffic: a 256-token text padded into a batch of 32 costs ~40x a short one.
WARMUP_SENTENCES = [
    "Hello!",
    "How do I reset my password?",
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Dynamic batching groups requests that arrive close together into one model call.",
    "Le modèle renvoie un vecteur de 384 dimensions pour chaque phrase.",
    "GPU memory bandwidth, not compute, usually limits the decode phase of large models.",
    "A customer wrote that the parcel arrived two weeks late, the box was damaged, and "
    "support never answered the three emails they sent about a refund.",
]
# The int8 report also covers a text past 256 tokens, to include truncation.
QUALITY_SENTENCES = [
    *WARMUP_SENTENCES,
    "Inference servers batch requests, bound their queues, and shed load early. " * 24,
]


class EmbeddingsRuntime(Runtime):
    def load(self) -> None:
        params = self.version.manifest.parameters
        self.max_seq_length = int(params.get("max_seq_length", 256))
        self.dimensions = int(params.get("dimensions", 384))
        tokenizer_file = self.version.file(params.get("tokenizer", "tokenizer.json"))
        self.tokenizer = Tokenizer.from_file(str(tokenizer_file))
        # Fixed once here, never per call: sentence-transformers truncates at the
        # model's max_seq_length and pads each batch to its longest text (the
        # tokenizer.json of all-MiniLM-L6-v2 ships with fixed 128-token padding).
        pad = self.tokenizer.padding or {"pad_id": 0, "pad_token": "[PAD]", "pad_type_id": 0}
        self.tokenizer.enable_truncation(max_length=self.max_seq_length)
        self.tokenizer.enable_padding(
            pad_id=pad["pad_id"], pad_token=pad["pad_token"], pad_type_id=pad["pad_type_id"]
        )
        self.session, fp32 = open_sessions(self.version, self.settings)
        ref = self.version.ref
        self._feeds = {a.name: ort_type(a, ref)[1] for a in self.session.get_inputs()}
        unknown = set(self._feeds) - {"input_ids", "attention_mask", "token_type_ids"}
        if unknown:
            raise SurgeError(
                "bad_manifest",
                f"{ref}: the encoder takes inputs {sorted(unknown)}; the embeddings "
                "runtime feeds only input_ids, attention_mask and token_type_ids",
                500,
            )
        self._hidden = self.session.get_outputs()[0].name
        if not self.inputs:
            self.inputs = [TensorSpec("text", "BYTES", (-1,))]
        if not self.outputs:
            self.outputs = [
                TensorSpec("embedding", "FP32", (-1, self.dimensions)),
                TensorSpec("token_count", "INT64", (-1,)),
            ]
        self._quality: dict[str, Any] = {}
        if fp32 is not None:
            texts = _as_bytes(QUALITY_SENTENCES)
            reference = self._embed(fp32, texts)[0]
            report = compare_rows(reference, self._embed(self.session, texts)[0])
            self._quality = {"quantization": "int8", "int8_vs_fp32": report}
            log.info("%s int8 quality on warmup sentences: %s", self.version.ref, report)

    def run(self, inputs: Tensors) -> Tensors:
        if "text" not in inputs:
            raise bad_input("missing input tensor 'text' (BYTES, one UTF-8 string per row)")
        embedding, token_count = self._embed(self.session, inputs["text"])
        return {"embedding": embedding, "token_count": token_count}

    def warmup_inputs(self, batch_size: int) -> Tensors:
        rows = [WARMUP_SENTENCES[i % len(WARMUP_SENTENCES)] for i in range(batch_size)]
        return {"text": _as_bytes(rows)}

    def batch_key(self, inputs: Tensors) -> int:
        """Estimated padded length of the request; rejects undecodable text up front.

        Validating here, per request and before it joins a batch, keeps one client's
        invalid UTF-8 from failing a whole batch of other clients' texts in `run`.
        """
        # An estimate, not tokenizer.encode: an exact count measured 36-65 µs for one
        # 13-word sentence on this 2-core host, too dear for the event loop, while
        # UTF-8 bytes // 4 (~4 bytes per English wordpiece) costs ~0.2 µs and orders
        # texts well enough to group them. The longest text sets the padded length;
        # past max_seq_length all texts cost the same.
        texts = inputs.get("text")
        if texts is None or texts.size == 0:
            return 0
        longest = 0
        for row, text in enumerate(np.asarray(texts, dtype=object).reshape(-1)):
            _decode(text, row)
            longest = max(longest, len(text))  # UTF-8 bytes (characters for str rows)
        return min(longest // 4 + 2, self.max_seq_length)  # + [CLS] and [SEP]

    def describe(self) -> dict[str, Any]:
        return {
            "providers": self.session.get_providers(),
            "threads": self.settings.threads,
            "max_seq_length": self.max_seq_length,
            "dimensions": self.dimensions,
            "pooling": "mean, L2-normalised",
            **self._quality,
        }

    def _embed(self, session: Any, texts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rows = [_decode(t, i) for i, t in enumerate(np.asarray(texts, dtype=object).reshape(-1))]
        if not rows:
            return np.zeros((0, self.dimensions), np.float32), np.zeros(0, np.int64)
        encodings = self.tokenizer.encode_batch(rows)
        columns = {
            "input_ids": [e.ids for e in encodings],
            "attention_mask": [e.attention_mask for e in encodings],
            "token_type_ids": [e.type_ids for e in encodings],
        }
        feed = {name: np.array(columns[name], dtype=dtype) for name, dtype in self._feeds.items()}
        mask = np.array(columns["attention_mask"], dtype=np.float32)
        (hidden,) = session.run([self._hidden], feed)
        # Mean over real tokens only, then unit length: sentence-transformers' Pooling
        # (clamp 1e-9) and Normalize (eps 1e-12), so padding never moves a vector.
        counts = mask.sum(axis=1, keepdims=True)
        pooled = np.einsum("bth,bt->bh", hidden, mask) / np.maximum(counts, 1e-9)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        embedding = (pooled / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)
        return embedding, counts[:, 0].astype(np.int64)


def _decode(value: Any, row: int) -> str:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise bad_input(
                f"text[{row}] is not valid UTF-8 (byte {exc.start}: {exc.reason}); "
                "send text as UTF-8"
            ) from None
    if isinstance(value, str):  # adapters that already decoded JSON strings
        return value
    raise bad_input(f"text[{row}] must be a string, got {type(value).__name__}")


def _as_bytes(texts: list[str]) -> np.ndarray:
    out = np.empty(len(texts), dtype=object)
    out[:] = [t.encode("utf-8") for t in texts]
    return out
