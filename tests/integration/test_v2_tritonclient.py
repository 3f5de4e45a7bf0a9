"""A stock Open Inference Protocol v2 client (tritonclient[http]) works unchanged."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.http as triton
from conftest import digits_rows
from tritonclient.utils import InferenceServerException


@pytest.fixture(scope="module")
def client(demo_server):
    c = triton.InferenceServerClient(demo_server.url.removeprefix("http://"))
    yield c
    c.close()


def test_health_and_metadata(client):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("digits") and client.is_model_ready("digits", "1")
    meta = client.get_model_metadata("digits")
    assert meta["name"] == "digits" and meta["versions"] == ["1"]
    assert {"name": "input", "datatype": "FP32", "shape": [-1, 64]} in meta["inputs"]
    assert [o["name"] for o in meta["outputs"]] == ["probabilities", "label"]
    assert client.get_server_metadata()["name"] == "surge"


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_digits_classifies_real_digits(client, binary):
    x, y = digits_rows(16)
    inp = triton.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    outputs = [
        triton.InferRequestedOutput("probabilities", binary_data=binary),
        triton.InferRequestedOutput("label", binary_data=binary),
    ]
    result = client.infer("digits", [inp], outputs=outputs, request_id="my-id-7")
    probabilities = result.as_numpy("probabilities")
    labels = result.as_numpy("label")
    assert probabilities.shape == (16, 10) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    assert labels.dtype == np.int64 and (labels == y).mean() >= 0.9
    assert result.get_response()["id"] == "my-id-7"


def test_requested_outputs_subset_and_version(client):
    x, _ = digits_rows(2)
    inp = triton.InferInput("input", [2, 64], "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer(
        "digits", [inp], model_version="1", outputs=[triton.InferRequestedOutput("label")]
    )
    assert result.as_numpy("probabilities") is None
    assert result.as_numpy("label").shape == (2,)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_embed_takes_bytes_tensors(client, binary):
    texts = np.array([b"The cat sits on the mat.", "Ein Hund läuft.".encode()], dtype=object)
    inp = triton.InferInput("text", [2], "BYTES")
    inp.set_data_from_numpy(texts, binary_data=binary)
    out = triton.InferRequestedOutput("embedding", binary_data=binary)
    emb = client.infer("embed", [inp], outputs=[out]).as_numpy("embedding")
    assert emb.shape == (2, 384)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-4)


def test_unknown_model_and_version_are_client_errors(client):
    inp = triton.InferInput("input", [1, 64], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 64), np.float32))
    with pytest.raises(InferenceServerException, match="unknown model 'nope'"):
        client.infer("nope", [inp])
    with pytest.raises(InferenceServerException, match="no version '9'"):
        client.infer("digits", [inp], model_version="9")


def test_admin_view_shows_how_each_endpoint_runs(demo_server):
    import httpx
    from conftest import ADMIN

    assert httpx.get(f"{demo_server.url}/admin/endpoints").status_code == 401
    answer = httpx.get(f"{demo_server.url}/admin/endpoints", headers=ADMIN)
    views = {e["endpoint"]: e for e in answer.json()["endpoints"]}
    embed = views["embed"]
    assert embed["state"] == "ready" and embed["runtime"] == "embeddings"
    assert embed["max_seq_length"] == 256 and embed["providers"] == ["CPUExecutionProvider"]
    assert embed["batch_latency_ms"]["32"] > embed["batch_latency_ms"]["1"] > 0
