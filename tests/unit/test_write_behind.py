"""The response cache's write-behind queue: writes that arrive while a pipeline is in
flight go together in the next one, the queue is bounded, nothing waits on it, and a
batch Redis did not take is counted, not retried forever."""

from __future__ import annotations

import asyncio

from surge.cache.write_behind import Write, WriteBehind


class SlowRedis:
    """Takes `pause_s` per pipeline; remembers each batch; can refuse them."""

    def __init__(self, pause_s: float = 0.02, answers: bool = True) -> None:
        self.pause_s, self.answers = pause_s, answers
        self.batches: list[list[Write]] = []
        self.healthy = True

    async def write_batch(self, writes: list[Write]) -> bool:
        self.batches.append(list(writes))
        await asyncio.sleep(self.pause_s)
        return self.answers


def row(i: int) -> Write:
    return Write([(f"embed:{i}", b"v")], 60.0)


def test_writes_arriving_during_a_pipeline_share_the_next_one() -> None:
    async def scenario() -> tuple[SlowRedis, WriteBehind]:
        redis = SlowRedis()
        writer = WriteBehind(redis)  # type: ignore[arg-type]
        for i in range(100):
            assert writer.offer(row(i))  # never waits
            if i % 10 == 0:
                await asyncio.sleep(0.005)
        await writer.drain()
        return redis, writer

    redis, writer = asyncio.run(scenario())
    sent = [w.rows[0][0] for batch in redis.batches for w in batch]
    assert sent == [f"embed:{i}" for i in range(100)]  # all of them, in order
    assert len(redis.batches) <= 10  # not one round trip per write
    assert writer.written == 100 and writer.dropped == 0 and writer.pending == 0


def test_a_full_queue_drops_new_writes_and_counts_them() -> None:
    async def scenario() -> WriteBehind:
        writer = WriteBehind(SlowRedis(pause_s=0.05), max_queued=10)  # type: ignore[arg-type]
        accepted = [writer.offer(row(i)) for i in range(25)]
        assert accepted == [True] * 10 + [False] * 15
        await writer.drain()
        return writer

    writer = asyncio.run(scenario())
    assert writer.written == 10 and writer.dropped == 15


def test_a_batch_redis_did_not_take_is_counted_and_the_writer_goes_on() -> None:
    async def scenario() -> tuple[WriteBehind, SlowRedis]:
        redis = SlowRedis(pause_s=0.0, answers=False)
        writer = WriteBehind(redis)  # type: ignore[arg-type]
        writer.offer(row(1))
        await writer.drain()
        redis.answers = True
        writer.offer(row(2))  # the writer starts again on the next write
        await writer.drain()
        return writer, redis

    writer, redis = asyncio.run(scenario())
    assert (writer.dropped, writer.written, len(redis.batches)) == (1, 1, 2)
