"""The local chat runtime on a tiny random-weight model built here (no download): it
streams token by token off the event loop, samples reproducibly, honours max_tokens,
stop strings, deadlines and its admission bound, and a closed stream frees the CPU."""

from __future__ import annotations

import asyncio
import itertools
import shutil
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from surge.llm.local import LocalChatBackend
from surge.llm.stream import BackendError, ChatCall, Finish, Piece
from surge.llm.tiny_model import build_tiny_chat_model

HELLO = ({"role": "user", "content": "Tell me about the river and the old bridge."},)
LONG = 400  # tokens: ~1 s of generation, far longer than any test waits for


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_chat_model(tmp_path_factory.mktemp("llm") / "tiny")


@pytest.fixture(scope="module")
def backend(model_dir: Path) -> Iterator[LocalChatBackend]:
    backend = LocalChatBackend("local/tiny", model_dir)
    backend.load()
    yield backend
    asyncio.run(backend.aclose())


@pytest.fixture(scope="module")
def small(model_dir: Path) -> Iterator[LocalChatBackend]:
    """One generation at a time, one waiter, a short context: the bounds are reachable."""
    backend = LocalChatBackend(
        "local/small", model_dir, max_concurrent=1, max_waiting=1, max_context_tokens=40
    )
    backend.load()
    yield backend
    asyncio.run(backend.aclose())


async def collect(backend: LocalChatBackend, call: ChatCall) -> tuple[list[Piece], Finish]:
    items = [item async for item in backend.stream(call, time.monotonic() + 30)]
    *pieces, finish = items
    assert isinstance(finish, Finish) and all(isinstance(p, Piece) for p in pieces)
    return pieces, finish


def answer(backend: LocalChatBackend, call: ChatCall) -> tuple[str, Finish, list[Piece]]:
    pieces, finish = asyncio.run(collect(backend, call))
    return "".join(p.text for p in pieces), finish, pieces


async def until(condition: Callable[[], bool], within_s: float = 1.0) -> bool:
    give_up = time.monotonic() + within_s
    while not condition() and time.monotonic() < give_up:
        await asyncio.sleep(0.005)
    return condition()


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(scenario())


def test_greedy_answer_streams_pieces_then_counted_usage(backend: LocalChatBackend) -> None:
    text, finish, pieces = answer(backend, ChatCall(messages=HELLO, max_tokens=24))
    assert len(pieces) >= 5 and text
    assert finish.reason == "length"  # max_tokens honoured
    usage = finish.usage
    assert usage is not None and usage.source == "counted:tokenizer"
    assert usage.completion_tokens == 24
    # The chat template wraps the message, so the prompt is longer than its text.
    assert usage.prompt_tokens > backend.count_tokens(HELLO[0]["content"])
    assert all(p.logprob_entries is None for p in pieces)  # not asked for


def test_same_seed_same_text_and_greedy_is_deterministic(backend: LocalChatBackend) -> None:
    greedy = ChatCall(messages=HELLO, max_tokens=20, temperature=0)
    assert answer(backend, greedy)[0] == answer(backend, greedy)[0]
    sampled = ChatCall(messages=HELLO, max_tokens=20, temperature=1.0, top_p=0.95, seed=7)
    first, second = answer(backend, sampled)[0], answer(backend, sampled)[0]
    assert first == second
    assert answer(backend, sampled.with_changes(seed=8))[0] != first


def test_one_logprob_per_token_at_most_zero(backend: LocalChatBackend) -> None:
    call = ChatCall(messages=HELLO, max_tokens=16, logprobs=True, top_logprobs=3)
    text, finish, pieces = answer(backend, call)
    logprobs = [lp for p in pieces for lp in p.logprobs]
    entries = [e for p in pieces for e in p.logprob_entries or []]
    assert finish.usage is not None
    assert len(logprobs) == len(entries) == finish.usage.completion_tokens == 16
    assert all(lp <= 0 for lp in logprobs)
    assert [e["logprob"] for e in entries] == logprobs
    # The entries' bytes are the answer; greedy takes the most likely token each time.
    assert b"".join(bytes(e["bytes"]) for e in entries).decode() == text
    assert all(e["top_logprobs"][0]["logprob"] == e["logprob"] for e in entries)
    assert all(len(e["top_logprobs"]) == 3 for e in entries)
    sampled = call.with_changes(temperature=1.3, seed=1, top_logprobs=None)
    _, finish, pieces = answer(backend, sampled)
    logprobs = [lp for p in pieces for lp in p.logprobs]
    assert finish.usage is not None and len(logprobs) == finish.usage.completion_tokens
    assert all(lp <= 0 for lp in logprobs)


def test_stop_string_ends_the_answer_before_it(backend: LocalChatBackend) -> None:
    text = answer(backend, ChatCall(messages=HELLO, max_tokens=30))[0]
    stop = text[6:8]
    cut, finish, _ = answer(backend, ChatCall(messages=HELLO, max_tokens=30, stop=(stop,)))
    assert cut == text[: text.index(stop)]
    assert finish.reason == "stop"


def test_closing_the_stream_stops_the_generation(backend: LocalChatBackend) -> None:
    async def consume(stream: Any, received: list[Piece | Finish], how: str) -> None:
        """Read two pieces, then stop at once, from within the reading task (a loaded
        machine must not let the answer run to its end while a test polls)."""
        async for item in stream:
            received.append(item)
            if len(received) == 2:
                if how == "aclose":
                    break
                # Cancelling the consuming task alone closes the stream: it lands on
                # the wait for the next piece.
                current = asyncio.current_task()
                assert current is not None
                current.cancel()
        if how == "aclose":
            await stream.aclose()
            await stream.aclose()  # closing it again changes nothing

    async def scenario() -> None:
        for how in ("aclose", "cancel"):
            started = backend.generated_tokens
            stream = backend.stream(
                ChatCall(messages=HELLO, max_tokens=LONG), time.monotonic() + 30
            )
            received: list[Piece | Finish] = []
            task = asyncio.create_task(consume(stream, received, how))
            await asyncio.gather(task, return_exceptions=True)
            assert await until(lambda: backend.in_flight == 0, within_s=1.0), how
            tokens = backend.generated_tokens
            await asyncio.sleep(0.2)
            assert backend.generated_tokens == tokens, how  # the generation stopped
            if how == "aclose":  # closed right after two pieces: it never ran far
                assert not any(isinstance(item, Finish) for item in received)
                assert tokens - started < LONG // 2
            # A cancel lands where the reading task next waits; a loaded machine may
            # have queued the whole answer by then, so only the stop is asserted.

    run(scenario)


def test_deadline_mid_answer_is_a_started_504(backend: LocalChatBackend) -> None:
    async def scenario() -> None:
        pieces = 0
        with pytest.raises(BackendError) as raised:
            call = ChatCall(messages=HELLO, max_tokens=LONG)
            async for _ in backend.stream(call, time.monotonic() + 0.25):
                pieces += 1
        assert pieces > 0
        assert raised.value.code == "deadline_exceeded" and raised.value.status == 504
        assert raised.value.started
        assert await until(lambda: backend.in_flight == 0)
        with pytest.raises(BackendError) as raised:
            async for _ in backend.stream(call, time.monotonic() - 1):
                pass
        assert raised.value.code == "deadline_exceeded" and not raised.value.started

    run(scenario)


def test_past_the_waiting_bound_it_refuses_as_busy(small: LocalChatBackend) -> None:
    async def scenario() -> None:
        long = ChatCall(messages=HELLO, max_tokens=LONG)
        running = small.stream(long, time.monotonic() + 30)
        assert isinstance(await anext(running), Piece)
        queued = small.stream(long, time.monotonic() + 30)
        waiter = asyncio.create_task(anext(queued))
        assert await until(lambda: small.waiting == 1)
        with pytest.raises(BackendError) as raised:
            await anext(small.stream(long, time.monotonic() + 30))
        assert raised.value.code == "local_busy" and raised.value.status == 429
        assert raised.value.retry_after_s is not None and raised.value.retry_after_s > 0
        # A waiter whose deadline passes in the queue gets a 504 and leaves the queue.
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
        assert small.waiting == 0
        with pytest.raises(BackendError) as raised:
            await anext(small.stream(long, time.monotonic() + 0.1))
        assert raised.value.code == "deadline_exceeded" and not raised.value.started
        assert small.waiting == 0 and small.in_flight == 1
        queued = small.stream(long, time.monotonic() + 30)
        waiter = asyncio.create_task(anext(queued))
        assert await until(lambda: small.waiting == 1)
        await running.aclose()  # its slot passes to the waiter
        assert isinstance(await asyncio.wait_for(waiter, 2.0), Piece)
        assert small.waiting == 0 and small.in_flight == 1
        await queued.aclose()
        assert await until(lambda: small.in_flight == 0)

    run(scenario)


def test_a_prompt_past_the_context_is_refused(small: LocalChatBackend) -> None:
    long_prompt = ({"role": "user", "content": "the river and the bridge " * 20},)
    with pytest.raises(BackendError) as raised:
        answer(small, ChatCall(messages=long_prompt, max_tokens=4))
    assert raised.value.code == "context_too_long" and raised.value.status == 400


def test_the_event_loop_keeps_ticking_during_generation(backend: LocalChatBackend) -> None:
    async def scenario() -> tuple[list[float], float]:
        ticks: list[float] = []

        async def ticker() -> None:
            while True:
                ticks.append(time.monotonic())
                await asyncio.sleep(0.01)

        task = asyncio.create_task(ticker())
        began = time.monotonic()
        await collect(backend, ChatCall(messages=HELLO, max_tokens=200))
        took = time.monotonic() - began
        task.cancel()
        return ticks, took

    ticks, took = asyncio.run(scenario())
    gaps = [b - a for a, b in itertools.pairwise(ticks)]
    assert len(ticks) >= took / 0.01 * 0.5
    assert max(gaps) < 0.25


def test_without_a_chat_template_the_plain_one_is_used(model_dir: Path, tmp_path: Path) -> None:
    plain = shutil.copytree(model_dir, tmp_path / "plain")
    (plain / "chat_template.jinja").unlink()
    backend = LocalChatBackend("local/plain", plain)
    backend.load()
    _, finish, _ = answer(backend, ChatCall(messages=HELLO, max_tokens=3))
    assert finish.usage is not None
    prompt = f"user: {HELLO[0]['content']}\nassistant:"
    assert finish.usage.prompt_tokens == backend.count_tokens(prompt)
    asyncio.run(backend.aclose())


def test_after_aclose_it_answers_no_more(model_dir: Path) -> None:
    backend = LocalChatBackend("local/closing", model_dir)
    backend.load()

    async def scenario() -> None:
        running = backend.stream(ChatCall(messages=HELLO, max_tokens=LONG), time.monotonic() + 30)
        assert isinstance(await anext(running), Piece)
        await backend.aclose()  # returns once the generation thread has stopped
        assert backend.in_flight == 0
        with pytest.raises(BackendError) as raised:
            await anext(
                backend.stream(ChatCall(messages=HELLO, max_tokens=2), time.monotonic() + 5)
            )
        assert raised.value.code == "local_closed"
        await running.aclose()

    run(scenario)


def test_the_tiny_model_is_built_once_per_recipe(model_dir: Path, tmp_path: Path) -> None:
    weights = model_dir / "model.safetensors"
    before = weights.stat().st_mtime_ns
    assert build_tiny_chat_model(model_dir) == model_dir
    assert weights.stat().st_mtime_ns == before  # reused, not rebuilt
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError):
        build_tiny_chat_model(foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"
