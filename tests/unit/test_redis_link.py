"""The link to the shared Redis, against real redis-server processes that the tests
start, kill, freeze and restart: notifications reach another process's link, pending
feedback is taken exactly once, and an outage costs a caller at most about the timeout,
is reported once, and heals by itself (resubscribing with a resync call).

Conditions are awaited by polling with a deadline, never by sleeping a guessed while.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator

import pytest

from surge.cluster.redis_link import RedisLink, RedisUnavailable
from tests.redis_server import REDIS_SERVER, RedisServer

TIMEOUT_S = 0.5  # the links' command timeout
SLACK_S = 0.5  # what a loaded 2-core machine may add to it
PATIENCE_S = 8.0  # only a broken link waits this long

pytestmark = [
    pytest.mark.skipif(
        not os.path.exists(REDIS_SERVER), reason=f"{REDIS_SERVER} is absent (apt install redis)"
    ),
    pytest.mark.timeout(60),
]


@pytest.fixture
def server() -> Iterator[RedisServer]:
    redis = RedisServer()
    redis.start()
    yield redis
    redis.kill()


def _namespace() -> str:
    return f"test-{uuid.uuid4().hex[:8]}"


async def _until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + PATIENCE_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        await asyncio.sleep(0.01)


async def _timed(awaitable: Awaitable[object]) -> tuple[object, float]:
    """What the call returned (or raised), and how long it took."""
    start = time.monotonic()
    try:
        result: object = await awaitable
    except Exception as exc:
        result = exc
    return result, time.monotonic() - start


def test_a_message_published_by_one_link_reaches_another_after_a_resync_call(server):
    async def scenario() -> tuple[list[bytes], list[bytes], list[bytes]]:
        namespace = _namespace()
        heard: list[bytes] = []
        late: list[bytes] = []
        other_deployment: list[bytes] = []
        publisher = RedisLink(server.url(), namespace)
        listener = RedisLink(server.url(), namespace)
        stranger = RedisLink(server.url(), _namespace())  # shares the Redis, not the names
        listener.subscribe("routes", heard.append)  # before start
        stranger.subscribe("routes", other_deployment.append)
        for link in (publisher, listener, stranger):
            await link.start()
        listener.subscribe("modes", late.append)  # after start
        await _until(lambda: heard == [b""] and late == [b""], "the resync calls")
        await _until(lambda: other_deployment == [b""], "the stranger's resync call")
        assert await publisher.publish("routes", b"chat changed to revision 7")
        assert await publisher.publish("modes", "surge")  # str is sent as UTF-8
        await _until(lambda: len(heard) == 2 and len(late) == 2, "the messages")
        for link in (publisher, listener, stranger):
            await link.stop()
        return heard, late, other_deployment

    heard, late, other_deployment = asyncio.run(scenario())
    assert heard == [b"", b"chat changed to revision 7"]
    assert late == [b"", b"surge"]
    assert other_deployment == [b""]


def test_pending_feedback_is_taken_once_from_another_link(server):
    async def scenario() -> list[bytes | None]:
        namespace = _namespace()
        answering, feedback = RedisLink(server.url(), namespace), RedisLink(server.url(), namespace)
        await answering.start()
        await feedback.start()
        entries = [("req-1", b"chat|eu|arm-b"), ("req-2", b"chat|us|arm-a")]
        assert await answering.put_pending(entries, ttl_s=30)
        taken = [
            await feedback.take_pending("req-1"),
            await feedback.take_pending("req-1"),
            await answering.take_pending("req-2"),
            await feedback.take_pending("never-answered"),
        ]
        await answering.stop()
        await feedback.stop()
        return taken

    assert asyncio.run(scenario()) == [b"chat|eu|arm-b", None, b"chat|us|arm-a", None]


def test_pending_feedback_expires_after_its_ttl(server):
    async def scenario() -> tuple[bytes | None, bytes | None]:
        link = RedisLink(server.url(), _namespace())
        await link.start()
        assert await link.put_pending([("fresh", b"a"), ("stale", b"b")], ttl_s=0.2)
        fresh = await link.take_pending("fresh")
        await asyncio.sleep(0.3)  # the TTL, plus a margin: what is under test is time
        stale = await link.take_pending("stale")
        await link.stop()
        return fresh, stale

    assert asyncio.run(scenario()) == (b"a", None)


def test_concurrent_takes_of_one_request_from_two_links_give_it_to_exactly_one(server):
    async def scenario() -> list[list[bytes | None]]:
        namespace = _namespace()
        # Exactly once is the point here, not speed: 200 concurrent takes on a loaded
        # 2-core machine can pass the default 0.5 s, which would read as an outage.
        one = RedisLink(server.url(), namespace, timeout_s=5.0)
        two = RedisLink(server.url(), namespace, timeout_s=5.0)
        await one.start()
        await two.start()
        ids = [f"req-{i}" for i in range(50)]
        assert await one.put_pending([(i, i.encode()) for i in ids], ttl_s=30)
        results = await asyncio.gather(
            *(link.take_pending(i) for i in ids for link in (one, two, one, two))
        )
        await one.stop()
        await two.stop()
        return [results[k : k + 4] for k in range(0, len(results), 4)]

    for i, takes in enumerate(asyncio.run(scenario())):
        assert sorted(takes, key=bool) == [None, None, None, f"req-{i}".encode()]


def test_a_dead_redis_costs_each_call_at_most_the_timeout_and_is_reported_once(server, caplog):
    async def scenario() -> tuple[list[bool], list[tuple[object, float]], RedisLink]:
        states: list[bool] = []
        link = RedisLink(server.url(), _namespace(), timeout_s=TIMEOUT_S, on_state=states.append)
        await link.start()
        assert link.healthy and states == [True]
        server.kill()
        timings = [
            await _timed(link.publish("routes", b"x")),
            await _timed(link.take_pending("req-1")),
            await _timed(link.put_pending([("req-2", b"y")], ttl_s=30)),
            await _timed(link.publish("routes", b"x")),
            await _timed(link.take_pending("req-1")),
            await _timed(link.ping()),
        ]
        healthy_after = link.healthy
        await link.stop()
        assert not healthy_after
        return states, timings, link

    with caplog.at_level(logging.INFO, logger="surge.redis"):
        states, timings, link = asyncio.run(scenario())
    results = [result for result, _ in timings]
    assert results[0] is False and results[2] is False and results[3] is False
    assert results[5] is False
    for taken in (results[1], results[4]):
        assert isinstance(taken, RedisUnavailable) and "unreachable" in str(taken)
    assert max(took for _, took in timings) < TIMEOUT_S + SLACK_S
    assert states == [True, False]
    assert link.failures >= 2
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "serving continues" in warnings[0].getMessage()


def test_a_frozen_redis_never_holds_a_caller_longer_than_the_timeout(server):
    """SIGSTOP: connections stay open and nothing answers (a blackholed host)."""

    async def scenario() -> tuple[list[tuple[object, float]], list[bytes]]:
        heard: list[bytes] = []
        namespace = _namespace()
        link = RedisLink(server.url(), namespace, timeout_s=TIMEOUT_S)
        publisher = RedisLink(server.url(), namespace, timeout_s=TIMEOUT_S)
        link.subscribe("routes", heard.append)
        await link.start()
        await publisher.start()
        await _until(lambda: heard == [b""], "the first subscription")
        assert server.proc is not None
        server.proc.send_signal(signal.SIGSTOP)
        try:
            timings = [
                await _timed(link.take_pending("req-1")),
                await _timed(link.publish("routes", b"lost")),
            ]
            await _until(lambda: not publisher.healthy, "the idle link to notice")
            # A link that starts now does not hang either.
            late = RedisLink(server.url(), namespace, timeout_s=TIMEOUT_S)
            timings.append(await _timed(late.start()))
            await late.stop()
        finally:
            server.proc.send_signal(signal.SIGCONT)
        await _until(lambda: link.healthy and publisher.healthy, "health after the thaw")
        # Whether the subscription was remade during the freeze or only now, a message
        # published after the thaw gets through (publish until it does: the subscriber
        # may still be between connections).
        deadline = time.monotonic() + PATIENCE_S
        while b"after" not in heard:
            assert time.monotonic() < deadline, "the message after the thaw never came"
            await publisher.publish("routes", b"after")
            await asyncio.sleep(0.05)
        await link.stop()
        await publisher.stop()
        return timings, heard

    timings, heard = asyncio.run(scenario())
    assert isinstance(timings[0][0], RedisUnavailable) and timings[1][0] is False
    assert timings[2][0] is None  # start() returned
    assert max(took for _, took in timings) < 2 * TIMEOUT_S + SLACK_S  # ping at start
    assert heard[0] == b"" and heard[-1] == b"after" and b"lost" not in heard


def test_a_restarted_redis_heals_health_and_the_subscription(server, caplog):
    async def scenario() -> tuple[list[bytes], list[bool], int]:
        heard: list[bytes] = []
        states: list[bool] = []
        namespace = _namespace()
        listener = RedisLink(server.url(), namespace, on_state=states.append)
        publisher = RedisLink(server.url(), namespace)
        listener.subscribe("routes", heard.append)
        await listener.start()
        await publisher.start()
        await _until(lambda: heard == [b""], "the first subscription")
        server.kill()
        killed = time.monotonic()
        await _until(lambda: not listener.healthy, "an idle link to notice the outage")
        noticed_after_s = time.monotonic() - killed
        server.start()  # the same port
        await _until(lambda: listener.healthy and publisher.healthy, "health after restart")
        await _until(lambda: heard == [b"", b""], "the resync call after resubscribing")
        assert await publisher.publish("routes", b"chat changed to revision 8")
        await _until(lambda: len(heard) == 3, "the message after restart")
        await listener.stop()
        await publisher.stop()
        assert noticed_after_s < 2 + SLACK_S
        return heard, states, len(caplog.records)

    with caplog.at_level(logging.INFO, logger="surge.redis"):
        heard, states, _ = asyncio.run(scenario())
    assert heard == [b"", b"", b"chat changed to revision 8"]
    assert states == [True, False, True]
    messages = [r.getMessage() for r in caplog.records if "127.0.0.1" in r.getMessage()]
    assert sum("reachable again" in m for m in messages) == 2  # listener and publisher


def test_a_link_started_before_its_redis_does_not_raise_and_connects_once_it_appears():
    redis = RedisServer()  # port chosen, nothing listening yet

    async def scenario() -> tuple[float, list[bool], list[bytes], bytes | None]:
        states: list[bool] = []
        heard: list[bytes] = []
        link = RedisLink(redis.url(), _namespace(), on_state=states.append)
        link.subscribe("routes", heard.append)
        _, took = await _timed(link.start())
        assert not link.healthy and states == [False]
        with pytest.raises(RedisUnavailable):
            await link.take_pending("req-1")
        redis.start()
        try:
            await _until(lambda: link.healthy, "health once the server is up")
            await _until(lambda: heard == [b""], "the subscription once the server is up")
            assert await link.put_pending([("req-1", b"arm")], ttl_s=30)
            taken = await link.take_pending("req-1")
            await link.stop()
        finally:
            redis.kill()
        return took, states, heard, taken

    took, states, heard, taken = asyncio.run(scenario())
    assert took < TIMEOUT_S + SLACK_S
    assert states == [False, True] and heard == [b""] and taken == b"arm"


def test_the_password_never_reaches_the_log(caplog):
    password = "hunter2-s3cret"
    redis = RedisServer("--requirepass", password)
    redis.start()

    async def scenario() -> tuple[bool, bool]:
        link = RedisLink(redis.url(password), _namespace())
        await link.start()
        up = link.healthy  # the password is used, only not shown
        redis.kill()
        await link.publish("routes", b"x")
        down = link.healthy
        await link.stop()
        return up, down

    try:
        with caplog.at_level(logging.DEBUG, logger="surge.redis"):
            up, down = asyncio.run(scenario())
    finally:
        redis.kill()
    assert up and not down
    warning = next(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert f"redis://:***@127.0.0.1:{redis.port}/0 unreachable" in warning
    assert all(password not in r.getMessage() for r in caplog.records)
    assert RedisLink(redis.url(password), "ns").safe_url.count(password) == 0


def test_the_module_imports_and_a_link_is_made_without_the_redis_package():
    code = (
        "import sys; sys.modules['redis'] = None\n"
        "from surge.cluster.redis_link import RedisLink, RedisUnavailable\n"
        "RedisLink('redis://127.0.0.1:1/0', 'ns')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)
