"""A chat model's fallback across backends, its breakers and bounds, driven with scripted
backends and an explicit clock (no HTTP: the wire is tested in integration)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from surge.config_llm import ChatModelConfig
from surge.core.context import RequestContext
from surge.core.errors import SurgeError
from surge.llm.asked import Asked
from surge.llm.metrics import ChatMetrics
from surge.llm.model import BackendSlot, ChatModel
from surge.llm.speed import ModelSpeed, choose_in_time
from surge.llm.stream import BackendError, ChatCall, Finish, Piece, Usage
from surge.routing.breaker import OPEN, BreakerPolicy, CircuitBreaker
from surge.serving.target import Hints


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Scripted:
    """A backend that fails with `error` (when set) before its first piece, else answers."""

    def __init__(self, name: str, words: int = 3, error: BackendError | None = None) -> None:
        self.name = name
        self.words = words
        self.error = error
        self.calls = 0

    async def stream(self, call: ChatCall, deadline: float) -> AsyncIterator[Piece | Finish]:
        self.calls += 1
        if self.error is not None:
            raise self.error
        for i in range(self.words):
            yield Piece(f"w{i} ", [-0.1])
        yield Finish("stop", Usage(7, self.words))

    async def aclose(self) -> None:
        pass


def model(*backends: Scripted, clock: Clock, **config: object) -> ChatModel:
    policy = BreakerPolicy(failure_threshold=2, window_s=10, open_s=5)
    slots = [BackendSlot(b, CircuitBreaker(policy, b.name)) for b in backends]
    cfg = ChatModelConfig(backends=[{"provider": "p", "model": "m"}], **config)  # type: ignore[arg-type]
    m = ChatModel("chat", cfg, slots, ChatMetrics(dict), clock)
    return m


def ctx(clock: Clock) -> RequestContext:
    return RequestContext("r1", "chat", clock.now + 30, clock.now)


ASKED = Asked(Hints(), 28, 7)
CALL = ChatCall(({"role": "user", "content": "hi"},), max_tokens=16)


async def read(answer) -> str:  # type: ignore[no-untyped-def]
    return "".join([i.text async for i in answer.items() if isinstance(i, Piece)])


async def ask(m: ChatModel, c: RequestContext) -> str:
    """Open an answer and read it whole, on one event loop."""
    return await read(await m.open(c, CALL, ASKED))


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_a_failing_backend_hands_the_request_to_the_next_and_the_receipt_says_why() -> None:
    clock = Clock()
    down = Scripted("a/m", error=BackendError("provider_error", "500 from a", 502))
    up = Scripted("b/m")
    m = model(down, up, clock=clock)
    c = ctx(clock)
    assert run(ask(m, c)) == "w0 w1 w2 "
    assert c.runs[0]["version"] == "b/m"
    assert [d["policy"] for d in c.decisions] == ["fallback"]
    assert "a/m failed" in c.decisions[0]["reason"] and c.degraded
    (run_,) = c.runs
    assert run_["model"] == "b/m" and run_["prompt_tokens"] == 7 and run_["completion_tokens"] == 3
    assert m.open_streams == 0


def test_breaker_opens_after_failures_and_the_broken_backend_is_skipped() -> None:
    clock = Clock()
    down = Scripted("a/m", error=BackendError("provider_error", "500", 502))
    up = Scripted("b/m")
    m = model(down, up, clock=clock)
    for _ in range(2):
        run(ask(m, ctx(clock)))
    assert m.slots[0].breaker.state == OPEN
    calls = down.calls
    run(ask(m, ctx(clock)))
    assert down.calls == calls  # skipped while open
    clock.now += 6  # open_s passed: one probe goes to the broken backend again
    run(ask(m, ctx(clock)))
    assert down.calls == calls + 1


def test_retry_after_of_a_busy_backend_is_honoured() -> None:
    clock = Clock()
    busy = Scripted("a/m", error=BackendError("provider_rate_limited", "429", 429, 3.0))
    up = Scripted("b/m")
    m = model(busy, up, clock=clock)
    run(ask(m, ctx(clock)))
    assert busy.calls == 1
    clock.now += 2
    run(ask(m, ctx(clock)))
    assert busy.calls == 1  # still inside its Retry-After
    clock.now += 1.5
    busy.error = None
    c = ctx(clock)
    run(ask(m, c))
    assert c.runs[0]["model"] == "a/m"


def test_all_backends_busy_is_a_429_with_the_soonest_retry_after() -> None:
    clock = Clock()
    a = Scripted("a/m", error=BackendError("provider_rate_limited", "429", 429, 7.0))
    b = Scripted("b/m", error=BackendError("provider_rate_limited", "429", 429, 2.0))
    m = model(a, b, clock=clock)
    with pytest.raises(SurgeError) as err:
        run(m.open(ctx(clock), CALL, ASKED))
    assert err.value.status == 429 and err.value.retry_after_s == 2.0
    assert m.open_streams == 0


def test_a_missed_deadline_is_not_retried_elsewhere() -> None:
    clock = Clock()
    slow = Scripted("a/m", error=BackendError("deadline_exceeded", "late", 504))
    other = Scripted("b/m")
    m = model(slow, other, clock=clock)
    with pytest.raises(SurgeError) as err:
        run(m.open(ctx(clock), CALL, ASKED))
    assert err.value.status == 504 and other.calls == 0
    assert m.slots[0].breaker.state != OPEN


def test_streams_past_the_bound_are_refused_with_retry_after() -> None:
    clock = Clock()
    m = model(Scripted("a/m"), clock=clock, max_concurrent_streams=1)

    async def scenario() -> SurgeError:
        first = await m.open(ctx(clock), CALL, ASKED)
        with pytest.raises(SurgeError) as err:
            await m.open(ctx(clock), CALL, ASKED)
        await read(first)
        await ask(m, ctx(clock))  # the slot came back
        return err.value

    refused = run(scenario())
    assert refused.status == 429 and refused.retry_after_s and refused.retry_after_s >= 1


def test_max_tokens_beyond_the_models_limit_is_a_400() -> None:
    m = model(Scripted("a/m"), clock=Clock(), max_tokens_limit=100, default_max_tokens=50)
    assert m.resolve_max_tokens(None) == 50
    assert m.resolve_max_tokens(100) == 100
    with pytest.raises(SurgeError) as err:
        m.resolve_max_tokens(101)
    assert err.value.status == 400


# -- time-boxed choice (sans-IO) ---------------------------------------------------------


def speeds(**rates: tuple[float, float]) -> dict[str, ModelSpeed]:
    return {n: ModelSpeed(ttft_s=t, tokens_per_s=r, answers=1) for n, (t, r) in rates.items()}


def test_time_box_takes_the_best_model_that_fits() -> None:
    s = speeds(big=(0.5, 20.0), small=(0.1, 100.0))
    # big: 0.5 + 99/20 = 5.45 s for 100 tokens
    choice = choose_in_time(["big", "small"], s, 10.0, 100)
    assert choice is not None and choice.model == "big" and not choice.degraded
    choice = choose_in_time(["big", "small"], s, 3.0, 100)
    assert choice is not None and choice.model == "small" and choice.degraded
    assert choice.max_tokens == 100


def test_time_box_caps_max_tokens_when_nothing_gives_the_whole_answer() -> None:
    s = speeds(big=(0.5, 20.0), small=(0.1, 100.0))
    choice = choose_in_time(["big", "small"], s, 0.5, 1000, safety_margin=1.0)
    # small gives 1 + (0.5 - 0.1) * 100 = 41 tokens in 0.5 s
    assert choice is not None and choice.model == "small" and choice.max_tokens == 41
    assert choice.degraded and choice.estimate_s <= 0.5
    assert choose_in_time(["big", "small"], s, 0.05, 1000) is None  # not even a first token


def test_model_speed_learns_ttft_and_decode_rate() -> None:
    speed = ModelSpeed()
    speed.observe(0.2, 11, 1.0)  # 10 tokens after the first in 1 s
    assert speed.ttft_s == pytest.approx(0.2) and speed.tokens_per_s == pytest.approx(10.0)
    for _ in range(50):
        speed.observe(0.4, 21, 1.0)
    assert speed.ttft_s == pytest.approx(0.4, rel=0.01)
    assert speed.tokens_per_s == pytest.approx(20.0, rel=0.01)
