"""The lean Redis client of the request path (cluster/resp_client.py), against the
machine's Redis and a private redis-server with a password: pipelines, error replies,
AUTH and SELECT, a cancelled call's connection never reused; and GuardedRedis.execute
on top of it."""

from __future__ import annotations

import asyncio
import hashlib
import os
import uuid
from collections.abc import Iterator

import pytest

from surge.cluster.guarded_redis import GuardedRedis
from surge.cluster.redis_link import RedisUnavailable
from surge.cluster.resp_client import RespClient, RespReplyError, encode, supports
from tests.redis_server import REDIS_SERVER, RedisServer, needs_redis

REDIS_URL = "redis://127.0.0.1:6379/0"

pytestmark = pytest.mark.timeout(60)


def test_commands_are_written_as_resp_arrays_of_bulk_strings() -> None:
    assert encode([("SET", "k", b"\x00v\r\n", "PX", 150)]) == (
        b"*5\r\n$3\r\nSET\r\n$1\r\nk\r\n$4\r\n\x00v\r\n\r\n$2\r\nPX\r\n$3\r\n150\r\n"
    )
    assert encode([("GET", "a"), ("GET", "é")]) == (
        b"*2\r\n$3\r\nGET\r\n$1\r\na\r\n*2\r\n$3\r\nGET\r\n$2\r\n\xc3\xa9\r\n"
    )
    with pytest.raises(TypeError):
        encode([("SET", "k", None)])
    with pytest.raises(TypeError):
        encode([("SET", "k", True)])  # a bool is not a number Redis would read back


def test_urls_it_cannot_honour_are_left_to_redis_py() -> None:
    assert supports("redis://127.0.0.1:6379/0")
    assert supports("redis://:secret@cache.internal")
    assert supports("rediss://user:pw@cache.internal:6380/2")
    assert not supports("redis://127.0.0.1:6379/0?socket_timeout=1")
    assert not supports("redis://127.0.0.1/not-a-db")
    assert not supports("redis+sentinel://s1:26379/mymaster")


@needs_redis
def test_a_pipeline_answers_each_command_in_order_and_an_error_reply_raises() -> None:
    key = f"test-resp-{uuid.uuid4().hex}"

    async def scenario() -> None:
        client = RespClient(REDIS_URL, connect_timeout_s=1.0)
        try:
            replies = await client.execute([
                ("SET", key, b"\x00\xffbinary", "PX", 60_000),
                ("SET", key, b"other", "NX", "PX", 60_000),
                ("MGET", key, key + ":absent"),
                ("EVAL", "return ARGV[1] + 1", 0, 41),
            ])  # fmt: skip
            assert replies == [b"OK", None, [b"\x00\xffbinary", None], 42]
            with pytest.raises(RespReplyError, match=r"WRONGTYPE|not an integer"):
                await client.execute([("GET", key), ("INCR", key)])
            # The error's connection read every reply: it serves the next call correctly.
            assert await client.execute([("GET", key), ("DEL", key)]) == [b"\x00\xffbinary", 1]
        finally:
            await client.aclose()

    asyncio.run(scenario())


@needs_redis
def test_a_call_cancelled_mid_answer_never_hands_its_late_reply_to_the_next() -> None:
    key = f"test-resp-{uuid.uuid4().hex}"

    async def scenario() -> None:
        client = RespClient(REDIS_URL, connect_timeout_s=1.0)
        try:
            blocked = asyncio.ensure_future(client.execute([("BLPOP", key, 1)]))
            await asyncio.sleep(0.05)
            blocked.cancel()
            with pytest.raises(asyncio.CancelledError):
                await blocked
            await client.execute([("RPUSH", key, "x")])
            await asyncio.sleep(0.1)  # had that connection been kept, BLPOP's reply lands
            assert await client.execute([("LRANGE", key, 0, -1), ("DEL", key)]) == [[b"x"], 1]
        finally:
            await client.aclose()

    asyncio.run(scenario())


@pytest.fixture
def locked_server() -> Iterator[RedisServer]:
    if not os.path.exists(REDIS_SERVER):
        pytest.skip(f"{REDIS_SERVER} is absent (apt install redis)")
    server = RedisServer("--requirepass", "s3cret")
    server.start()
    yield server
    server.kill()


def test_it_authenticates_and_selects_the_database_the_url_names(locked_server) -> None:
    url = f"redis://:s3cret@127.0.0.1:{locked_server.port}/3"

    async def scenario() -> None:
        client = RespClient(url, connect_timeout_s=2.0)
        try:
            info = (await client.execute([("CLIENT", "INFO")]))[0]
            assert b" db=3 " in info
        finally:
            await client.aclose()
        wrong = RespClient(f"redis://:nope@127.0.0.1:{locked_server.port}/0", connect_timeout_s=2.0)
        with pytest.raises(RespReplyError, match=r"WRONGPASS|invalid"):
            await wrong.execute([("PING",)])

    asyncio.run(scenario())


@needs_redis
def test_guarded_execute_counts_a_refusal_without_calling_redis_down() -> None:
    key = f"test-resp-{uuid.uuid4().hex}"

    async def scenario() -> None:
        guarded = GuardedRedis(
            REDIS_URL, timeout_s=1.0, what="test", on_down_note="nothing to fall back on"
        )
        await guarded.start()
        try:
            assert await guarded.execute(("SET", key, "text"), ("GET", key)) == [b"OK", b"text"]
            with pytest.raises(RedisUnavailable, match="refused"):
                await guarded.execute(("INCR", key))
            assert guarded.healthy
            assert await guarded.execute(("DEL", key)) == [1]
        finally:
            await guarded.stop()

    asyncio.run(scenario())


def test_connections_a_restarted_server_closed_are_not_reused(locked_server) -> None:
    """Pooled connections die with the server; after its restart the next call opens a
    new one instead of failing on a dead one (which GuardedRedis would call an outage)."""
    url = locked_server.url("s3cret")

    async def scenario() -> None:
        client = RespClient(url, connect_timeout_s=2.0)
        try:
            assert await client.execute([("SET", "k", "before")]) == [b"OK"]
            locked_server.kill()
            locked_server.start()
            await asyncio.sleep(0.2)  # the loop reads the old connection's end
            assert await client.execute([("GET", "k"), ("PING",)]) == [None, b"PONG"]
        finally:
            await client.aclose()

    asyncio.run(scenario())


@needs_redis
def test_a_script_redis_does_not_hold_is_sent_whole_then_run_by_its_digest() -> None:
    marker = uuid.uuid4().hex
    script = f"return {{'{marker}', KEYS[1], ARGV[1]}}"  # new text: not in Redis's cache
    sha = hashlib.sha1(script.encode()).hexdigest()

    async def scenario() -> None:
        guarded = GuardedRedis(REDIS_URL, timeout_s=1.0, what="test", on_down_note="-")
        await guarded.start()
        try:
            assert (await guarded.execute(("SCRIPT", "EXISTS", sha)))[0] == [0]
            expected = [marker.encode(), b"k", b"7"]
            assert await guarded.eval_script(sha, script, ["k"], ["7"]) == expected  # EVAL
            assert (await guarded.execute(("SCRIPT", "EXISTS", sha)))[0] == [1]
            assert await guarded.eval_script(sha, script, ["k"], ["7"]) == expected  # EVALSHA
            assert guarded.healthy and guarded.failures == 0  # NOSCRIPT is not a refusal
        finally:
            await guarded.stop()

    asyncio.run(scenario())
