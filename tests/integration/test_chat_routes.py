"""Routing policies for language models over real HTTP: time-boxed choice by measured
speed, rules on tenant and prompt length, a bandit with feedback, and rate limits in
tokens."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.fake_llm import FakeLLM
from tests.integration.conftest import Server, run_server

SLOW_TOKEN_S = 0.02
FAST_TOKEN_S = 0.001


@pytest.fixture(scope="module")
def slow() -> Iterator[FakeLLM]:
    with FakeLLM(token_latency_s=SLOW_TOKEN_S) as llm:
        yield llm


@pytest.fixture(scope="module")
def fast() -> Iterator[FakeLLM]:
    with FakeLLM(token_latency_s=FAST_TOKEN_S) as llm:
        yield llm


@pytest.fixture(scope="module")
def server(
    slow: FakeLLM, fast: FakeLLM, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    config = {
        "tenants": {
            "metered": {"limits": {"tokens_per_minute": 600, "tokens_burst": 600}},
            "premium": {},
        },
        "llm": {
            "providers": {"slowp": {"url": slow.url}, "fastp": {"url": fast.url}},
            "models": {
                "big": {
                    "backends": [{"provider": "slowp", "model": "big"}],
                    "max_tokens_limit": 1000,
                },
                "small": {
                    "backends": [{"provider": "fastp", "model": "small"}],
                    "max_tokens_limit": 1000,
                },
            },
            "routes": {
                "boxed": {"time_boxed": {"models": ["big", "small"], "min_max_tokens": 4}},
                "tiered": {
                    "rules": {
                        "rules": [
                            {
                                "name": "premium",
                                "target": "big",
                                "when": [{"field": "tenant", "op": "eq", "value": "premium"}],
                            },
                            {
                                "name": "long",
                                "target": "big",
                                "when": [{"field": "prompt_chars", "op": "gt", "value": 200}],
                            },
                        ],
                        "default": "small",
                    }
                },
                "explore": {"bandit": {"arms": ["big", "small"], "sync_s": 1}},
            },
        },
    }
    with run_server(config, tmp_path_factory.mktemp("chat-routes")) as srv:
        yield srv


def ask(server: Server, model: str, text: str, headers: dict[str, str] | None = None,
        **fields: object) -> httpx.Response:  # fmt: skip
    body = {"model": model, "messages": [{"role": "user", "content": text}], **fields}
    return httpx.post(f"{server.url}/v1/chat/completions", json=body, headers=headers, timeout=30)


def test_time_boxed_picks_the_best_model_that_fits_the_deadline(server: Server) -> None:
    for model in ("big", "small"):  # each model's speed is learned from its answers
        for _ in range(3):
            assert ask(server, model, "warm tokens=40").status_code == 200
    # For 60 tokens big needs ~60 x 20 ms = 1.2 s, small ~60 ms.
    roomy = ask(server, "boxed", "q tokens=40", {"X-Request-Timeout-Ms": "10000"}, max_tokens=60)
    assert roomy.status_code == 200 and roomy.headers["X-Surge-Route"].startswith("big@")
    tight = ask(server, "boxed", "q tokens=40", {"X-Request-Timeout-Ms": "400"}, max_tokens=60)
    assert tight.status_code == 200
    assert tight.headers["X-Surge-Route"].startswith("small@")
    assert "degraded" in tight.headers["X-Surge-Route"]
    assert tight.json()["choices"][0]["finish_reason"] == "stop"


def test_time_boxed_caps_max_tokens_when_no_model_gives_the_whole_answer(server: Server) -> None:
    for _ in range(3):
        ask(server, "small", "warm tokens=40")
    # 900 tokens at ~1 ms each do not fit in 300 ms: small answers, capped.
    capped = ask(server, "boxed", "q tokens=900", {"X-Request-Timeout-Ms": "300"}, max_tokens=900)
    assert capped.status_code == 200
    answer = capped.json()
    assert answer["choices"][0]["finish_reason"] == "length"
    assert 4 <= answer["usage"]["completion_tokens"] < 900
    assert "degraded" in capped.headers["X-Surge-Route"]


def test_rules_route_by_tenant_and_prompt_length(server: Server) -> None:
    short = ask(server, "tiered", "short question tokens=3")
    assert short.headers["X-Surge-Route"].startswith("small@")
    long_prompt = ask(server, "tiered", "x" * 300 + " tokens=3")
    assert long_prompt.headers["X-Surge-Route"].startswith("big@")
    premium = ask(server, "tiered", "short tokens=3", {"X-Tenant": "premium"})
    assert premium.headers["X-Surge-Route"].startswith("big@")


def test_bandit_answers_carry_a_feedback_token_that_rewards_the_arm(server: Server) -> None:
    answer = ask(server, "explore", "which is better tokens=3", {"X-Request-Id": "bandit-chat-1"})
    assert answer.status_code == 200
    token = answer.headers["X-Feedback-Token"]
    reward = httpx.post(
        f"{server.url}/v1/feedback",
        json={"request_id": "bandit-chat-1", "reward": 1.0, "feedback_token": token},
    )
    assert reward.status_code == 200, reward.text
    assert reward.json()["arm"] in ("big", "small")
    again = httpx.post(
        f"{server.url}/v1/feedback",
        json={"request_id": "bandit-chat-1", "reward": 1.0, "feedback_token": token},
    )
    assert again.status_code == 404  # once per answer


def test_a_tenants_tokens_per_minute_admits_prompt_plus_max_tokens(server: Server) -> None:
    tenant = {"X-Tenant": "metered"}
    statuses = [ask(server, "small", "hi tokens=3", tenant, max_tokens=190).status_code
                for _ in range(4)]  # fmt: skip
    # each takes ~5 prompt tokens + 190: three fit in a burst of 600, the fourth does not
    assert statuses == [200, 200, 200, 429]
    refused = ask(server, "small", "hi", tenant, max_tokens=190)
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
    assert 'qu="tokens"' in refused.headers["RateLimit-Policy"]
    too_big = ask(server, "small", "hi", tenant, max_tokens=900)
    assert too_big.status_code == 413
    assert (
        ask(server, "small", "hi tokens=3", max_tokens=190).status_code == 200
    )  # others unaffected
