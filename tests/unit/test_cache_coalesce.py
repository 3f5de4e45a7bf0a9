"""Single-flight coalescing: identical concurrent requests run the computation once;
each caller keeps its own deadline; the first caller leaving does not stop the others'
answer, the last one leaving cancels it; failures are shared (or retried by a follower
when they belong to the first caller alone); nobody hangs.

The computations wait on events the tests set, so the order of things is decided by
the test, not by timing; only the deadline tests let a short real timeout pass.
"""

from __future__ import annotations

import asyncio

import pytest

from surge.cache.coalesce import CoalescedCancelled, SingleFlight

pytestmark = pytest.mark.timeout(30)


class Model:
    """Counts its runs; each run waits for `release` (set up front to run at once)."""

    def __init__(self, answer: str = "answer", fail: BaseException | None = None) -> None:
        self.runs = 0
        self.cancelled = 0
        self.answer, self.fail = answer, fail
        self.release = asyncio.Event()
        self.started = asyncio.Event()

    async def __call__(self) -> str:
        self.runs += 1
        self.started.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        if self.fail is not None:
            raise self.fail
        return self.answer


async def settle() -> None:
    """Let every ready task run until it blocks."""
    for _ in range(5):
        await asyncio.sleep(0)


def test_a_hundred_identical_concurrent_requests_run_the_model_once():
    async def scenario() -> None:
        flight, model = SingleFlight(), Model()
        calls = [asyncio.ensure_future(flight.run("k", model)) for _ in range(100)]
        await settle()
        model.release.set()
        results = await asyncio.gather(*calls)
        assert model.runs == 1
        assert {r.value for r in results} == {"answer"}
        assert sum(r.coalesced for r in results) == 99
        assert (flight.leaders, flight.followers, flight.in_flight) == (1, 99, 0)

    asyncio.run(scenario())


def test_different_keys_and_later_requests_compute_on_their_own():
    async def scenario() -> None:
        flight, model = SingleFlight(), Model()
        model.release.set()
        await asyncio.gather(flight.run("a", model), flight.run("b", model))
        again = await flight.run("a", model)  # single-flight is not a cache
        assert model.runs == 3 and not again.coalesced

    asyncio.run(scenario())


def test_a_follower_whose_deadline_passes_times_out_alone():
    async def scenario() -> None:
        flight, model = SingleFlight(), Model()
        leader = asyncio.ensure_future(flight.run("k", model))
        patient = asyncio.ensure_future(flight.run("k", model, timeout_s=60))
        await settle()
        with pytest.raises(TimeoutError):
            await flight.run("k", model, timeout_s=0.01)
        assert not leader.done() and not patient.done() and model.cancelled == 0
        model.release.set()
        assert (await leader).value == (await patient).value == "answer"
        assert model.runs == 1

    asyncio.run(scenario())


def test_the_first_caller_leaving_does_not_stop_the_answer_the_others_wait_for():
    async def scenario() -> None:
        flight, model = SingleFlight(), Model()
        leader = asyncio.ensure_future(flight.run("k", model))
        followers = [asyncio.ensure_future(flight.run("k", model)) for _ in range(3)]
        await settle()
        leader.cancel()  # its client hung up
        await settle()
        with pytest.raises(asyncio.CancelledError):
            await leader
        # ... or its own deadline passed: the same, as a timeout.
        with pytest.raises(TimeoutError):
            await flight.run("k", model, timeout_s=0.01)
        model.release.set()
        assert [(await f).value for f in followers] == ["answer"] * 3
        assert (model.runs, model.cancelled) == (1, 0)

    asyncio.run(scenario())


def test_when_every_caller_has_left_the_computation_is_cancelled():
    async def scenario() -> None:
        flight, model = SingleFlight(), Model()
        calls = [asyncio.ensure_future(flight.run("k", model)) for _ in range(3)]
        await settle()
        for call in calls:
            call.cancel()
        await asyncio.gather(*calls, return_exceptions=True)
        await settle()
        assert (model.cancelled, flight.abandoned, flight.in_flight) == (1, 1, 0)
        model.release.set()
        assert not (await flight.run("k", model)).coalesced  # a fresh computation
        assert model.runs == 2

    asyncio.run(scenario())


def test_a_failure_is_shared_by_every_waiting_caller_and_not_remembered():
    async def scenario() -> None:
        flight, model = SingleFlight(), Model(fail=RuntimeError("model crashed"))
        calls = [asyncio.ensure_future(flight.run("k", model)) for _ in range(5)]
        await settle()
        model.release.set()
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert all(isinstance(r, RuntimeError) for r in results)
        assert model.runs == 1
        model.fail = None
        assert (await flight.run("k", model)).value == "answer"

    asyncio.run(scenario())


class LeadersDeadline(Exception):
    """A failure that belongs to the first caller alone."""


def test_a_failure_of_the_first_callers_own_sends_the_followers_to_compute_once_more():
    async def scenario() -> None:
        flight = SingleFlight(retry_on=(LeadersDeadline,))
        first = Model(fail=LeadersDeadline())
        second = Model(answer="second")
        leader = asyncio.ensure_future(flight.run("k", first))
        await settle()
        followers = [asyncio.ensure_future(flight.run("k", second)) for _ in range(4)]
        expired = asyncio.ensure_future(flight.run("k", second, timeout_s=0.01))
        with pytest.raises(TimeoutError):
            await expired
        first.release.set()
        with pytest.raises(LeadersDeadline):
            await leader  # its own failure is its own
        await settle()
        second.release.set()
        results = await asyncio.gather(*followers)
        assert [r.value for r in results] == ["second"] * 4
        assert (first.runs, second.runs) == (1, 1)  # one follower led the retry
        assert flight.retries == 4 and flight.leaders == 2

    asyncio.run(scenario())


def test_a_computation_cancelled_from_outside_fails_its_callers_instead_of_hanging():
    async def scenario() -> None:
        flight, model = SingleFlight(), Model()
        calls = [asyncio.ensure_future(flight.run("k", model)) for _ in range(3)]
        await settle()
        (computation,) = asyncio.all_tasks() - {*calls, asyncio.current_task()}
        computation.cancel()  # a shutdown
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert all(isinstance(r, CoalescedCancelled) for r in results)

    asyncio.run(scenario())


def test_past_max_keys_new_keys_compute_without_coalescing():
    async def scenario() -> None:
        flight, model = SingleFlight(max_keys=2), Model()
        tracked = [asyncio.ensure_future(flight.run(k, model)) for k in ("a", "b")]
        joined = asyncio.ensure_future(flight.run("a", model))  # an in-flight key: coalesced
        untracked = [asyncio.ensure_future(flight.run("c", model)) for _ in range(2)]
        await settle()
        assert flight.in_flight == 2 and flight.bypassed == 2
        model.release.set()
        results = await asyncio.gather(*tracked, joined, *untracked)
        assert [r.coalesced for r in results] == [False, False, True, False, False]
        assert model.runs == 4  # a, b, and c twice

    asyncio.run(scenario())
