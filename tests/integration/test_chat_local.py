"""The local runtime behind the gateway: a tiny model the test builds (random weights:
the mechanics are tested, not the prose), served with no provider at all, and taking
over when a provider is down."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from surge.llm.tiny_model import build_tiny_chat_model
from tests.integration.conftest import Server, free_port, run_server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    workdir = tmp_path_factory.mktemp("chat-local")
    path = build_tiny_chat_model(Path(workdir) / "tiny-chat")
    down = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    config = {
        "llm": {
            "providers": {"gone": {"url": down, "connect_timeout_ms": 500}},
            "models": {
                "tiny": {"backends": [{"local": {"path": str(path)}}], "default_max_tokens": 12},
                "with-fallback": {
                    "backends": [
                        {"provider": "gone", "model": "x"},
                        {"local": {"path": str(path)}},
                    ],
                    "default_max_tokens": 8,
                },
            },
        }
    }
    with run_server(config, workdir) as srv:
        yield srv


def test_a_local_model_streams_with_no_provider(server: Server) -> None:
    chat = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    chunks = list(
        chat.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "hello"}], stream=True,
            temperature=0, stream_options={"include_usage": True},
        )
    )  # fmt: skip
    texts = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(texts) >= 2  # relayed token by token, not as one block
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens == 12
    whole = chat.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hello"}], temperature=0, max_tokens=5
    )
    assert whole.choices[0].finish_reason == "length" and whole.usage.completion_tokens == 5


def test_a_provider_that_is_down_hands_over_to_the_local_model(server: Server) -> None:
    chat = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    answer = chat.chat.completions.with_raw_response.create(
        model="with-fallback", messages=[{"role": "user", "content": "hi"}]
    )
    assert answer.headers["X-Surge-Route"].startswith("with-fallback@local/")
    assert answer.parse().usage.completion_tokens == 8
