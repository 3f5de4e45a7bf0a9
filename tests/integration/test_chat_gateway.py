"""The chat gateway over real HTTP: `surge serve` in front of two fake OpenAI-compatible
providers on loopback, called with the official `openai` client (streaming and not) and
raw httpx where a test must watch the wire."""

from __future__ import annotations

import concurrent.futures
import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import orjson
import pytest

from tests.fake_llm import FakeLLM
from tests.integration.conftest import ADMIN, Server, run_server

API_KEY_ENV = "SURGE_TEST_PROVIDER_KEY"
API_KEY = "sk-test-provider-secret-0123456789"
THRESHOLD = -0.5


@pytest.fixture(scope="module")
def east() -> Iterator[FakeLLM]:
    with FakeLLM(token_latency_s=0.002) as llm:
        yield llm


@pytest.fixture(scope="module")
def west() -> Iterator[FakeLLM]:
    with FakeLLM(token_latency_s=0.002) as llm:
        yield llm


@pytest.fixture(scope="module")
def server(
    east: FakeLLM, west: FakeLLM, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    os.environ[API_KEY_ENV] = API_KEY  # the server process inherits it; never in the file
    fast = {"failure_threshold": 3, "window_s": 10, "open_s": 30, "first_token_timeout_ms": 2000}
    config = {
        "llm": {
            "providers": {
                "east": {"url": east.url, "api_key_env": API_KEY_ENV, **fast},
                "west": {"url": west.url, **fast},
            },
            "models": {
                "chat": {
                    "backends": [{"provider": "east", "model": "m-east"}],
                    "price_per_1k_prompt_tokens": 1.0,
                    "price_per_1k_completion_tokens": 2.0,
                },
                "resilient": {
                    "backends": [
                        {"provider": "east", "model": "r-east"},
                        {"provider": "west", "model": "r-west"},
                    ]
                },
                "small": {"backends": [{"provider": "west", "model": "small"}]},
                "big": {"backends": [{"provider": "east", "model": "big"}]},
                "cached": {
                    "backends": [{"provider": "west", "model": "cached"}],
                    "cache": {"ttl_s": 60},
                    "price_per_1k_completion_tokens": 1.0,
                },
                "narrow": {
                    "backends": [{"provider": "west", "model": "narrow"}],
                    "max_concurrent_streams": 2,
                },
            },
            "routes": {
                "support": {"cascade": {"tiers": ["small", "big"], "min_mean_logprob": THRESHOLD}}
            },
        }
    }
    workdir = tmp_path_factory.mktemp("chat")
    try:
        with run_server(config, workdir) as srv:
            yield srv
    finally:
        os.environ.pop(API_KEY_ENV, None)
        while OPENED:
            OPENED.pop().close()


OPENED: list[openai.OpenAI] = []  # closed with the server: no socket left to the GC


def client(server: Server, **options: object) -> openai.OpenAI:
    made = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, **options)  # type: ignore[arg-type]
    OPENED.append(made)
    return made


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def receipt(server: Server, request_id: str) -> dict:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        answer = httpx.get(f"{server.url}/admin/receipts/{request_id}", headers=ADMIN)
        if answer.status_code == 200:
            return answer.json()
        time.sleep(0.1)
    raise AssertionError(f"no receipt for {request_id}")


def test_the_official_client_gets_whole_and_streamed_answers(server: Server, east: FakeLLM) -> None:
    chat = client(server)
    whole = chat.chat.completions.create(model="chat", messages=user("hello tokens=5"))
    assert whole.choices[0].message.content == "tok0 tok1 tok2 tok3 tok4"
    assert whole.choices[0].finish_reason == "stop"
    assert whole.usage is not None and whole.usage.completion_tokens == 5
    assert east.bodies[-1]["model"] == "m-east"  # the provider's own name for it
    assert east.auth_headers[-1] == f"Bearer {API_KEY}"  # from the environment

    pieces, reasons, usage = [], [], None
    stream = chat.chat.completions.create(
        model="chat", messages=user("again tokens=6"), stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            reasons.append(choice.finish_reason)
    assert "".join(pieces) == "tok0 tok1 tok2 tok3 tok4 tok5"
    assert reasons[-1] == "stop" and len(pieces) >= 7  # role chunk + one per token + finish
    assert usage is not None and usage.completion_tokens == 6
    listed = {m.id for m in chat.models.list().data}
    assert {"chat", "support", "resilient"} <= listed


def test_the_receipt_carries_tokens_cost_and_stream_timings(server: Server) -> None:
    raw = httpx.post(
        f"{server.url}/v1/chat/completions",
        json={"model": "chat", "messages": user("price me tokens=4"), "stream": True},
        headers={"X-Request-Id": "chat-receipt-1"},
    )
    assert raw.status_code == 200 and raw.headers["content-type"].startswith("text/event-stream")
    assert raw.text.rstrip().endswith("data: [DONE]")
    found = receipt(server, "chat-receipt-1")
    (run,) = found["runs"]
    assert run["completion_tokens"] == 4 and run["usage_source"] == "provider"
    assert run["ttft_ms"] > 0 and run["tpot_ms"] is not None
    expected = (run["prompt_tokens"] * 1.0 + 4 * 2.0) / 1000
    assert found["cost"]["total"] == pytest.approx(expected)
    assert found["tokens"]["completion"] == 4


def test_bad_requests_are_400_and_unknown_models_404(server: Server) -> None:
    chat = client(server)
    with pytest.raises(openai.BadRequestError):
        chat.chat.completions.create(model="chat", messages=[])
    with pytest.raises(openai.BadRequestError):
        chat.chat.completions.create(model="chat", messages=user("x"), max_tokens=10**6)
    with pytest.raises(openai.NotFoundError):
        chat.chat.completions.create(model="nope", messages=user("x"))
    assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200


def test_a_failing_provider_under_load_costs_no_client_an_error(
    server: Server, east: FakeLLM, west: FakeLLM
) -> None:
    """East starts failing while 40 streams run: every one is answered (by west when east
    fails before its first token), and east's breaker opens."""
    chat = client(server)

    def ask(i: int) -> str:
        stream = chat.chat.completions.create(
            model="resilient", messages=user(f"load {i} tokens=5"), stream=True
        )
        return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    served_by_west = west.requests
    try:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            first = list(pool.map(ask, range(20)))
            east.fail(500)
            second = list(pool.map(ask, range(20, 40)))
    finally:
        east.fail(None)
    assert all(answer == "tok0 tok1 tok2 tok3 tok4" for answer in first + second)
    assert west.requests - served_by_west >= 20
    metrics = httpx.get(f"{server.url}/metrics").text
    open_line = 'surge_llm_backend_breaker_state{backend="east/r-east",model="resilient"} 1.0'
    assert open_line in metrics


def test_a_client_that_disconnects_cancels_the_upstream_request(
    server: Server, east: FakeLLM
) -> None:
    east.token_latency_s = 0.05
    cancelled = east.cancelled
    try:
        with httpx.stream(
            "POST", f"{server.url}/v1/chat/completions",
            json={"model": "chat", "messages": user("long tokens=200"), "stream": True},
        ) as answer:  # fmt: skip
            lines = answer.iter_lines()
            assert next(lines).startswith("data: ")  # the answer started
            next(lines)
        # leaving the block closes the connection mid-answer
        deadline = time.monotonic() + 5
        while east.cancelled == cancelled and time.monotonic() < deadline:
            time.sleep(0.05)
        assert east.cancelled == cancelled + 1
    finally:
        east.token_latency_s = 0.002


def test_a_deadline_mid_stream_ends_it_cleanly_with_the_reason(
    server: Server, east: FakeLLM
) -> None:
    east.token_latency_s = 0.05
    try:
        chat = client(server, default_headers={"X-Request-Timeout-Ms": "400"})
        stream = chat.chat.completions.create(
            model="chat", messages=user("slow tokens=100"), stream=True
        )
        chunks = list(stream)  # ends without an exception
    finally:
        east.token_latency_s = 0.002
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    reasons = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert reasons == ["deadline"]
    assert 0 < len(text.split()) < 100


def test_streams_past_the_models_bound_get_429_with_retry_after(
    server: Server, west: FakeLLM
) -> None:
    west.token_latency_s = 0.2
    try:
        body = {"model": "narrow", "messages": user("hold tokens=20"), "stream": True}
        with httpx.Client(base_url=server.url, timeout=10) as http:
            held = [http.stream("POST", "/v1/chat/completions", json=body) for _ in range(2)]
            opened = [h.__enter__() for h in held]
            assert all(o.status_code == 200 for o in opened)
            refused = httpx.post(f"{server.url}/v1/chat/completions", json=body)
            for h in held:
                h.__exit__(None, None, None)
    finally:
        west.token_latency_s = 0.002
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
    assert refused.json()["error"]["code"] == "too_many_streams"


def test_cascade_escalates_exactly_the_low_confidence_answers(
    server: Server, east: FakeLLM
) -> None:
    """20 prompts whose answers' mean logprob is fixed (the fake reads `confidence=`):
    those below the threshold escalate to the big model, the others do not."""
    confidences = [round(-0.05 * (i + 1), 2) for i in range(20)]  # -0.05 .. -1.0
    predicted = sum(c < THRESHOLD for c in confidences)
    big_before = sum(1 for b in east.bodies if b["model"] == "big")
    escalated = 0
    with httpx.Client(base_url=server.url, timeout=10) as http:
        for c in confidences:
            answer = http.post(
                "/v1/chat/completions",
                json={"model": "support", "messages": user(f"q confidence={c} tokens=3")},
            )
            assert answer.status_code == 200
            route = answer.headers["X-Surge-Route"]
            if "escalated" in route:
                escalated += 1
                assert route.startswith("big@")
            else:
                assert route.startswith("small@") and c >= THRESHOLD
    assert escalated == predicted == 10
    big_after = sum(1 for b in east.bodies if b["model"] == "big")
    assert big_after - big_before == predicted


def _sse_events(text: str) -> list[dict]:
    return [orjson.loads(line[6:]) for line in text.splitlines()
            if line.startswith("data: {")]  # fmt: skip


def test_a_provider_failing_mid_answer_ends_the_stream_with_an_error(
    server: Server, east: FakeLLM
) -> None:
    east.truncate_after = 2
    try:
        raw = httpx.post(
            f"{server.url}/v1/chat/completions",
            json={"model": "chat", "messages": user("cut tokens=10"), "stream": True},
        )
    finally:
        east.truncate_after = None
    events = _sse_events(raw.text)
    assert raw.status_code == 200
    assert events[-1].get("error") is not None
    reasons = [
        c["finish_reason"] for e in events for c in e.get("choices", []) if c["finish_reason"]
    ]
    assert reasons == ["error"]


def test_config_names_the_key_variable_not_the_key(server: Server) -> None:
    written = next(Path(server.log_path).parent.glob("surge-*.yaml")).read_text()
    assert API_KEY_ENV in written and API_KEY not in written
    assert API_KEY not in server.log()


def test_a_deterministic_answer_is_reused_and_a_sampled_one_is_not(
    server: Server, west: FakeLLM
) -> None:
    chat = client(server)
    asked = {"model": "cached", "messages": user("reuse me tokens=4")}
    before = west.requests
    first = chat.chat.completions.with_raw_response.create(**asked, temperature=0)
    again = chat.chat.completions.with_raw_response.create(**asked, temperature=0)
    assert west.requests - before == 1
    assert again.headers["X-Surge-Route"] == "cached@cache"
    assert again.parse().choices[0].message.content == first.parse().choices[0].message.content
    assert again.parse().usage.completion_tokens == 4
    streamed = chat.chat.completions.create(**asked, temperature=0, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    assert text == "tok0 tok1 tok2 tok3" and west.requests - before == 1
    for _ in range(2):  # an unseeded sample is not reused
        chat.chat.completions.create(**asked, temperature=0.7)
    assert west.requests - before == 3
    seeded = [chat.chat.completions.create(**asked, temperature=0.7, seed=5) for _ in range(2)]
    assert west.requests - before == 4 and seeded[0].choices[0].message.content
