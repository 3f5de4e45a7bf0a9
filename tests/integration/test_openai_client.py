"""The official `openai` client works unchanged against /v1."""

from __future__ import annotations

import numpy as np
import openai
import pytest


@pytest.fixture(scope="module")
def client(demo_server):
    return openai.OpenAI(base_url=f"{demo_server.url}/v1", api_key="unused", max_retries=0)


def test_embeddings_default_encoding(client):
    texts = ["A quick brown fox.", "Serving models at scale is mostly queueing."]
    response = client.embeddings.create(model="embed", input=texts)
    assert [d.index for d in response.data] == [0, 1]
    vectors = np.array([d.embedding for d in response.data])
    assert vectors.shape == (2, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-4)
    assert response.usage.prompt_tokens == response.usage.total_tokens > 10
    assert response.model == "embed"


def test_float_and_base64_give_the_same_vectors(client):
    as_float = client.embeddings.create(model="embed", input="hello", encoding_format="float")
    as_b64 = client.embeddings.create(model="embed", input="hello", encoding_format="base64")
    raw = as_b64.data[0].embedding
    if isinstance(raw, str):  # some client versions leave base64 undecoded when asked for it
        import base64

        raw = np.frombuffer(base64.b64decode(raw), dtype="<f4")
    np.testing.assert_allclose(as_float.data[0].embedding, raw, rtol=1e-6)


def test_models_list_names_the_endpoints(client):
    assert {"digits", "embed"} <= {m.id for m in client.models.list()}


def test_errors_come_back_in_openai_shape(client):
    with pytest.raises(openai.NotFoundError) as info:
        client.embeddings.create(model="nope", input="x")
    assert info.value.body["code"] == "model_not_found"
    assert info.value.response.headers["x-request-id"]
    with pytest.raises(openai.NotFoundError, match="not an embeddings model"):
        client.embeddings.create(model="digits", input="x")
    with pytest.raises(openai.BadRequestError, match="at most 32"):
        client.embeddings.create(model="embed", input=["x"] * 33)
