"""ProviderBackend against a fake OpenAI-compatible server over real loopback HTTP: what
it sends, what it yields, how each failure of the upstream reaches the gateway, and that
closing a stream reaches the upstream."""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from surge.core.clock import monotonic
from surge.llm.provider import Provider, ProviderBackend, parse_retry_after
from surge.llm.stream import BackendError, ChatCall, Finish, Piece, Usage
from tests.fake_llm import FakeLLM

KEY = "sk-test-0123456789abcdef"
CALL = ChatCall(messages=({"role": "user", "content": "hello there"},), max_tokens=16)


@pytest.fixture
def llm() -> Iterator[FakeLLM]:
    with FakeLLM(tokens=5) as server:
        yield server


@contextlib.asynccontextmanager
async def backend_of(url: str, api_key: str | None = KEY, **settings: Any):
    provider = Provider("fake", url, api_key, **settings)
    try:
        yield ProviderBackend(provider, "fake-model")
    finally:
        await provider.aclose()


async def collect(backend: ProviderBackend, call: ChatCall = CALL, budget_s: float = 5.0):
    async with contextlib.aclosing(backend.stream(call, monotonic() + budget_s)) as stream:
        return [item async for item in stream]


async def error_of(backend: ProviderBackend, call: ChatCall = CALL, budget_s: float = 5.0):
    """The BackendError the stream ends with, and the pieces before it."""
    pieces: list[Piece | Finish] = []
    with pytest.raises(BackendError) as raised:
        async with contextlib.aclosing(backend.stream(call, monotonic() + budget_s)) as stream:
            async for item in stream:
                pieces.append(item)
    return raised.value, pieces


def run(scenario: Any) -> Any:
    return asyncio.run(scenario)


async def eventually(check: Any, within_s: float = 2.0) -> None:
    give_up = time.monotonic() + within_s
    while not check():
        assert time.monotonic() < give_up, "not within the time allowed"
        await asyncio.sleep(0.01)


def test_pieces_then_finish_with_usage(llm: FakeLLM) -> None:
    call = CALL.with_changes(temperature=0.2, stop=("zz",), seed=7, user="u1")

    async def scenario() -> list[Piece | Finish]:
        async with backend_of(llm.url) as backend:
            return await collect(backend, call)

    items = run(scenario())
    *pieces, finish = items
    assert "".join(p.text for p in pieces) == "tok0 tok1 tok2 tok3 tok4"
    assert all(p.logprobs == [] and p.logprob_entries is None for p in pieces)
    assert finish == Finish("stop", Usage(2, 5, "provider"))
    sent = llm.bodies[-1]
    assert sent["model"] == "fake-model" and sent["stream"] is True
    assert sent["stream_options"] == {"include_usage": True} and sent["max_tokens"] == 16
    assert (sent["temperature"], sent["stop"], sent["seed"], sent["user"]) == (0.2, ["zz"], 7, "u1")
    assert "top_p" not in sent and "logprobs" not in sent


def test_max_tokens_cut_is_length(llm: FakeLLM) -> None:
    async def scenario() -> list[Piece | Finish]:
        async with backend_of(llm.url) as backend:
            return await collect(backend, CALL.with_changes(max_tokens=3))

    *pieces, finish = run(scenario())
    assert len(pieces) == 3 and finish.reason == "length" and finish.usage.completion_tokens == 3


def test_logprobs_per_token(llm: FakeLLM) -> None:
    call = ChatCall(({"role": "user", "content": "confidence=-0.8 go"},), 16, logprobs=True,
                    top_logprobs=1)  # fmt: skip

    async def scenario() -> list[Piece | Finish]:
        async with backend_of(llm.url) as backend:
            return await collect(backend, call)

    *pieces, _ = run(scenario())
    assert [p.logprobs for p in pieces] == [[-0.8]] * 5
    assert pieces[1].logprob_entries[0]["token"] == " tok1"
    assert llm.bodies[-1]["logprobs"] is True and llm.bodies[-1]["top_logprobs"] == 1


def test_authorization_and_static_headers(llm: FakeLLM) -> None:
    async def scenario() -> None:
        async with backend_of(llm.url, headers={"X-Team": "a"}) as backend:
            await collect(backend)
        async with backend_of(llm.url, api_key=None) as backend:
            await collect(backend)

    run(scenario())
    assert list(llm.auth_headers) == [f"Bearer {KEY}", None]


def test_rate_limited_with_retry_after(llm: FakeLLM) -> None:
    llm.fail(429, times=1, retry_after="3")

    async def scenario() -> tuple[BackendError, list[Piece | Finish]]:
        async with backend_of(llm.url) as backend:
            error, _ = await error_of(backend)
            return error, await collect(backend)  # the next call is answered

    error, after = run(scenario())
    assert (error.status, error.code, error.retry_after_s) == (429, "provider_rate_limited", 3.0)
    assert error.started is False and isinstance(after[-1], Finish)


def test_retry_after_as_http_date() -> None:
    now = datetime(2025, 1, 1, tzinfo=UTC)
    date = email.utils.format_datetime(datetime(2025, 1, 1, 0, 0, 30, tzinfo=UTC), usegmt=True)
    assert parse_retry_after(date, now) == 30.0
    assert parse_retry_after("1.5") == 1.5
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


def test_server_errors_are_502(llm: FakeLLM) -> None:
    async def scenario() -> list[BackendError]:
        async with backend_of(llm.url) as backend:
            llm.fail(500, times=1)
            first, _ = await error_of(backend)
            llm.fail(503, times=1, retry_after="2")
            second, _ = await error_of(backend)
            return [first, second]

    first, second = run(scenario())
    assert (first.status, first.code, first.retry_after_s) == (502, "provider_error", None)
    assert (second.status, second.retry_after_s) == (502, 2.0)


def test_refusal_passes_status_and_message_without_the_key(llm: FakeLLM) -> None:
    llm.fail(401)
    llm.fail_message = f"Incorrect API key provided: {KEY}. " + "x" * 1000

    async def scenario() -> BackendError:
        async with backend_of(llm.url) as backend:
            return (await error_of(backend))[0]

    error = run(scenario())
    assert (error.status, error.code) == (401, "provider_refused")
    assert "Incorrect API key provided" in error.message and KEY not in error.message
    assert len(error.message) < 400


def test_unreachable_is_502() -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    async def scenario() -> BackendError:
        async with backend_of(f"http://127.0.0.1:{port}/v1") as backend:
            return (await error_of(backend))[0]

    error = run(scenario())
    assert (error.status, error.code) == (502, "provider_unreachable")


def test_hang_times_out_at_first_token_timeout(llm: FakeLLM) -> None:
    llm.hang = True

    async def scenario() -> tuple[BackendError, float]:
        async with backend_of(llm.url, first_token_timeout_s=0.2) as backend:
            began = time.monotonic()
            error, _ = await error_of(backend)
            return error, time.monotonic() - began

    error, took_s = run(scenario())
    assert (error.status, error.code, error.started) == (504, "provider_timeout", False)
    assert 0.2 <= took_s < 1.0


def test_role_chunk_is_not_a_first_piece(llm: FakeLLM) -> None:
    llm.first_token_latency_s = 1.0  # the head and the role-only chunk come at once

    async def scenario() -> BackendError:
        async with backend_of(llm.url, first_token_timeout_s=0.2) as backend:
            return (await error_of(backend))[0]

    error = run(scenario())
    assert (error.status, error.code, error.started) == (504, "provider_timeout", False)


def test_idle_gap_times_out_after_pieces(llm: FakeLLM) -> None:
    llm.stall_after = 2

    async def scenario() -> tuple[BackendError, list[Piece | Finish]]:
        async with backend_of(llm.url, idle_timeout_s=0.15) as backend:
            return await error_of(backend)

    error, pieces = run(scenario())
    assert len(pieces) == 2
    assert (error.status, error.code, error.started) == (504, "provider_timeout", True)


def test_deadline_before_first_token(llm: FakeLLM) -> None:
    llm.hang = True

    async def scenario() -> BackendError:
        async with backend_of(llm.url, first_token_timeout_s=5) as backend:
            return (await error_of(backend, budget_s=0.2))[0]

    error = run(scenario())
    assert (error.status, error.code, error.started) == (504, "deadline_exceeded", False)


def test_deadline_mid_answer(llm: FakeLLM) -> None:
    llm.tokens, llm.token_latency_s = 100, 0.02

    async def scenario() -> tuple[BackendError, list[Piece | Finish]]:
        async with backend_of(llm.url) as backend:
            return await error_of(backend, CALL.with_changes(max_tokens=100), budget_s=0.3)

    error, pieces = run(scenario())
    assert (error.code, error.started) == ("deadline_exceeded", True) and 3 < len(pieces) < 100


def test_deadline_already_passed_sends_nothing(llm: FakeLLM) -> None:
    async def scenario() -> BackendError:
        async with backend_of(llm.url) as backend:
            return (await error_of(backend, budget_s=-0.1))[0]

    assert run(scenario()).code == "deadline_exceeded" and llm.requests == 0


def test_bound_on_calls_in_flight(llm: FakeLLM) -> None:
    llm.hang = True

    async def scenario() -> tuple[BackendError, Provider]:
        async with backend_of(llm.url, max_concurrent_requests=2) as backend:
            waiting = [asyncio.create_task(collect(backend)) for _ in range(2)]
            await eventually(lambda: llm.in_flight == 2)
            error, _ = await error_of(backend)
            for task in waiting:
                task.cancel()
            await asyncio.gather(*waiting, return_exceptions=True)
            return error, backend.provider

    error, provider = run(scenario())
    assert (error.status, error.code, error.retry_after_s) == (429, "provider_busy", 1.0)
    assert (provider.refused_busy, provider.in_flight) == (1, 0)
    assert llm.requests == 2


def test_aclose_mid_stream_reaches_the_upstream(llm: FakeLLM) -> None:
    llm.tokens, llm.token_latency_s = 50, 0.02

    async def scenario() -> Provider:
        async with backend_of(llm.url) as backend:
            stream = backend.stream(CALL.with_changes(max_tokens=50), monotonic() + 5)
            assert isinstance(await anext(stream), Piece)
            assert isinstance(await anext(stream), Piece)
            await stream.aclose()
            assert backend.provider.in_flight == 0
            await eventually(lambda: llm.cancelled == 1)
            return backend.provider

    run(scenario())
    assert llm.completed == 0


def test_cancelled_task_reaches_the_upstream(llm: FakeLLM) -> None:
    llm.tokens, llm.token_latency_s = 50, 0.02

    async def consume(backend: ProviderBackend, seen: list[Any]) -> None:
        async with contextlib.aclosing(backend.stream(CALL, monotonic() + 5)) as stream:
            async for item in stream:
                seen.append(item)

    async def scenario() -> None:
        async with backend_of(llm.url) as backend:
            seen: list[Any] = []
            task = asyncio.create_task(consume(backend, seen))
            await eventually(lambda: len(seen) >= 2)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert backend.provider.in_flight == 0
            await eventually(lambda: llm.cancelled == 1)

    run(scenario())


def test_no_usage_gives_finish_without_usage(llm: FakeLLM) -> None:
    llm.omit_usage = True

    async def scenario() -> list[Piece | Finish]:
        async with backend_of(llm.url) as backend:
            return await collect(backend)

    assert run(scenario())[-1] == Finish("stop", None)


def test_json_answer_to_a_stream_request(llm: FakeLLM) -> None:
    llm.stream_as_json = True
    call = CALL.with_changes(logprobs=True)

    async def scenario() -> list[Piece | Finish]:
        async with backend_of(llm.url) as backend:
            return await collect(backend, call)

    piece, finish = run(scenario())
    assert piece.text == "tok0 tok1 tok2 tok3 tok4" and piece.logprobs == [-0.05] * 5
    assert finish == Finish("stop", Usage(2, 5, "provider"))


@pytest.mark.parametrize("knob", ["truncate_after", "malformed"])
def test_broken_streams_are_502(llm: FakeLLM, knob: str) -> None:
    setattr(llm, knob, 2 if knob == "truncate_after" else True)

    async def scenario() -> tuple[BackendError, list[Piece | Finish]]:
        async with backend_of(llm.url) as backend:
            return await error_of(backend)

    error, pieces = run(scenario())
    assert (error.status, error.code, error.started) == (502, "provider_bad_stream", True)
    assert len(pieces) >= 1


def test_many_streams_share_one_provider(llm: FakeLLM) -> None:
    llm.token_latency_s = 0.005

    async def scenario() -> tuple[list[list[Piece | Finish]], Provider]:
        async with backend_of(llm.url, max_connections=8) as backend:
            other = ProviderBackend(backend.provider, "other-model")
            answers = await asyncio.gather(*(collect(b) for b in [backend, other] * 10))
            return answers, backend.provider

    answers, provider = run(scenario())
    assert all(a[-1] == Finish("stop", Usage(2, 5, "provider")) for a in answers)
    assert provider.in_flight == 0 and llm.max_in_flight > 1
    assert {b["model"] for b in llm.bodies} == {"fake-model", "other-model"}


def test_connections_are_reused_across_answers(llm: FakeLLM) -> None:
    """An answer read to its Finish leaves its connection in the pool: the next call
    pays no new handshake (against a TLS provider, most of a first token's time)."""

    async def scenario() -> int:
        async with backend_of(llm.url) as backend:
            for _ in range(5):
                items = await collect(backend)
                assert isinstance(items[-1], Finish)
            return backend.provider.connections_opened

    assert run(scenario()) == 1
