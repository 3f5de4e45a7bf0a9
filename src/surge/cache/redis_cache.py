"""The cache tier shared by every process: encoded values in Redis under a namespace,
and the locks that coalesce one computation across processes.

Never on the failure path of a request: every call is bounded by `timeout_s` through
`GuardedRedis` (cluster/guarded_redis.py), and a call that gets no answer returns what
an empty cache would (a miss; `claim` says "compute it yourself"), counted in
`unavailable`. Repeated late answers or a lost connection mark Redis down: calls then
answer at once without trying, a line is logged when the outage starts and one when a
background ping finds Redis again, and serving goes on uncached meanwhile.

Stale answers for emergency mode: a value lives in Redis for its time to live plus
`stale_window_s`, with its logical expiry (unix seconds: a clock every process shares,
near enough) in a 12-byte header, so a read can tell fresh from stale and emergency
mode may serve the latter.

Across processes, the first process to miss `claim`s the key (SET NX PX of a lock) and
computes; the others `wait_for` the value by polling. Polling rather than pub/sub: a
subscription needs a connection of its own per process, kept alive and re-subscribed
after every outage, and a value published between a waiter's GET and its SUBSCRIBE is
lost unless it reads again anyway. Polling costs a few GETs per waiter, and waiters are
few: in-process single-flight already folds a process's identical requests into one,
so at most one per process polls a key. The poll reads the lock too, so a leader that
died or gave up (lock released or expired) sends its waiters to compute at once.
"""

from __future__ import annotations

import asyncio
import struct
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from surge.cluster.guarded_redis import GuardedRedis
from surge.cluster.redis_link import RedisUnavailable

HEADER = struct.Struct("<4sd")  # magic, logical expiry (unix seconds)
MAGIC = b"SRV1"
POLL_FIRST_S = 0.002  # a waiter's first poll interval ...
POLL_MAX_S = 0.05  # ... doubling up to this: adds at most this to a coalesced answer
PURGE_BATCH = 500  # keys per SCAN step and per UNLINK
PURGE_DEADLINE_S = 10.0  # a purge stops here and says it is incomplete

# Deletes the lock only if this process holds it: a lock that expired and was taken by
# another process must not be released by the first.
RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass(slots=True)
class Write:
    """One miss's writes: its rows (for `ttl_s`), and the flight it claimed, whose lock
    is released after `hand_over` (the flight's answer, kept `hand_over_ttl_s`) is
    stored; with no rows and no hand-over, only the release."""

    rows: list[tuple[str, bytes]]
    ttl_s: float
    flight: str | None = None
    hand_over: bytes | None = None
    hand_over_ttl_s: float = 0.0


@dataclass(frozen=True, slots=True)
class RedisEntry:
    value: bytes
    expires_at: float  # unix seconds, the logical expiry
    stale: bool  # past its expiry (served only when a read allowed staleness)


@dataclass(frozen=True, slots=True)
class PurgeResult:
    deleted: int
    complete: bool  # False: Redis failed or the deadline passed before the scan ended


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


class RedisCache:
    def __init__(
        self,
        url: str,
        namespace: str = "surge",
        *,
        timeout_s: float = 0.05,
        stale_window_s: float = 0.0,
        max_connections: int = 64,
        wall: Callable[[], float] = time.time,
    ) -> None:
        if stale_window_s < 0:
            raise ValueError(f"stale_window_s must not be negative, got {stale_window_s}")
        self.namespace = namespace
        self.stale_window_s = stale_window_s
        self.wall = wall
        self.redis = GuardedRedis(
            url,
            timeout_s=timeout_s,
            what="response cache",
            on_down_note="serving continues uncached",
            max_connections=max_connections,
        )
        self._token = uuid.uuid4().hex.encode()  # whose lock is whose
        self.hits = 0
        self.misses = 0
        self.stale_hits = 0
        self.unavailable = 0  # calls that got no answer from Redis (reads: misses too)
        self.corrupt = 0  # values this process could not read (counted as misses too)

    @property
    def healthy(self) -> bool:
        return self.redis.healthy

    async def start(self) -> None:
        await self.redis.start()

    async def stop(self) -> None:
        await self.redis.stop()

    def redis_key(self, key: str) -> str:
        return f"{self.namespace}:cache:{key}"

    def lock_key(self, key: str) -> str:
        return f"{self.namespace}:cache-lock:{key}"

    async def _call(self, command: Callable[[Any], Any]) -> Any:
        """The answer, or None when Redis could not give one."""
        try:
            return await self.redis.call(command)
        except RedisUnavailable:
            self.unavailable += 1
            return None

    async def _execute(self, *commands: Sequence[Any]) -> list[Any] | None:
        """Raw commands in one round trip (GuardedRedis.execute); None when Redis could
        not answer."""
        try:
            return await self.redis.execute(*commands)
        except RedisUnavailable:
            self.unavailable += 1
            return None

    def _read(self, raw: bytes | None, max_stale_s: float) -> RedisEntry | None:
        if raw is None:
            return None
        if len(raw) < HEADER.size or not raw.startswith(MAGIC):
            self.corrupt += 1
            return None
        _, expires_at = HEADER.unpack_from(raw)
        now = self.wall()
        if now >= expires_at + max_stale_s:
            return None
        return RedisEntry(raw[HEADER.size :], expires_at, stale=now >= expires_at)

    def _count(self, entry: RedisEntry | None) -> RedisEntry | None:
        if entry is None:
            self.misses += 1
        elif entry.stale:
            self.stale_hits += 1
        else:
            self.hits += 1
        return entry

    async def get(self, key: str, *, max_stale_s: float = 0.0) -> RedisEntry | None:
        """The value if fresh, or expired for at most `max_stale_s` (emergency mode);
        None on a miss and when Redis cannot answer."""
        replies = await self._execute(("GET", self.redis_key(key)))
        return self._count(self._read(None if replies is None else replies[0], max_stale_s))

    async def get_many(
        self, keys: Sequence[str], *, max_stale_s: float = 0.0
    ) -> list[RedisEntry | None]:
        """One MGET for many keys (the rows of a batched request), in their order."""
        if not keys:
            return []
        replies = await self._execute(("MGET", *(self.redis_key(k) for k in keys)))
        return self._entries(None if replies is None else replies[0], len(keys), max_stale_s)

    async def get_many_and_claim(
        self, keys: Sequence[str], flight: str, ttl_ms: int, *, max_stale_s: float = 0.0
    ) -> tuple[list[RedisEntry | None], bool]:
        """`get_many(keys)` and `claim(flight)` in one round trip: a miss, the common
        case, then needs no second one before computing. The claim is True also when
        Redis cannot say (compute yourself); a caller that found rows after all gives the
        lock back with `release`."""
        answers = await self._execute(
            ("MGET", *(self.redis_key(k) for k in keys)),
            ("SET", self.lock_key(flight), self._token, "NX", "PX", max(1, ttl_ms)),
        )
        raws, taken = (None, True) if answers is None else answers
        return self._entries(raws, len(keys), max_stale_s), bool(taken)

    def _entries(
        self, raws: list[bytes | None] | None, count: int, max_stale_s: float
    ) -> list[RedisEntry | None]:
        if raws is None:
            self.misses += count
            return [None] * count
        return [self._count(self._read(raw, max_stale_s)) for raw in raws]

    def _stored(self, value: bytes, ttl_s: float) -> tuple[bytes, int]:
        """The value with its header, and its physical time to live in ms."""
        header = HEADER.pack(MAGIC, self.wall() + ttl_s)
        return header + value, max(1, round((ttl_s + self.stale_window_s) * 1000))

    async def put(self, key: str, value: bytes, ttl_s: float) -> bool:
        """Store for `ttl_s` (plus the stale window); False if Redis did not take it."""
        if not ttl_s > 0:
            return False
        data, px = self._stored(value, ttl_s)
        replies = await self._execute(("SET", self.redis_key(key), data, "PX", px))
        return replies is not None and bool(replies[0])

    async def put_many(
        self, items: Mapping[str, bytes] | Iterable[tuple[str, bytes]], ttl_s: float
    ) -> bool:
        """Store many values in one round trip (a pipeline of SET PX)."""
        pairs = list(items.items() if isinstance(items, Mapping) else items)
        if not ttl_s > 0:
            return False
        if not pairs:
            return True
        answers = await self._execute(*self._write_commands(Write(pairs, ttl_s)))
        return answers is not None and all(answers)

    async def write_batch(self, writes: Sequence[Write]) -> bool:
        """Many misses' writes (write_behind.py) in one pipeline; whether Redis took it.
        A claimed flight's answer is stored before its lock is released (one pipeline
        keeps the order), or a waiter seeing neither would compute too."""
        commands = [command for write in writes for command in self._write_commands(write)]
        return not commands or await self._execute(*commands) is not None

    def _write_commands(self, write: Write) -> list[tuple[Any, ...]]:
        commands: list[tuple[Any, ...]] = []
        if write.ttl_s > 0:
            for key, value in write.rows:
                data, px = self._stored(value, write.ttl_s)
                commands.append(("SET", self.redis_key(key), data, "PX", px))
        if write.flight is not None:
            if write.hand_over is not None:
                data, px = self._stored(write.hand_over, write.hand_over_ttl_s)
                commands.append(("SET", self.redis_key(write.flight), data, "PX", px))
            commands.append(self._release_command(write.flight))
        return commands

    async def delete(self, key: str) -> bool:
        return bool(await self._call(lambda c: c.unlink(self.redis_key(key))))

    async def purge(self, prefix: str, *, deadline_s: float = PURGE_DEADLINE_S) -> PurgeResult:
        """Delete every key that starts with `prefix` (an endpoint's `<endpoint>:`), in
        batches of SCAN + UNLINK, each bounded by the timeout, the whole by `deadline_s`:
        an admin operation must not hold a huge keyspace's Redis or its caller for long."""
        pattern = _glob_escape(self.redis_key(prefix)) + "*"
        give_up_at = time.monotonic() + deadline_s
        cursor, deleted = 0, 0
        while True:
            step = await self._call(
                lambda c, at=cursor: c.scan(cursor=at, match=pattern, count=PURGE_BATCH)
            )
            if step is None:
                return PurgeResult(deleted, False)
            cursor, names = step
            if names:
                removed = await self._call(lambda c, n=names: c.unlink(*n))
                if removed is None:
                    return PurgeResult(deleted, False)
                deleted += removed
            if cursor == 0:
                return PurgeResult(deleted, True)
            if time.monotonic() > give_up_at:
                return PurgeResult(deleted, False)

    async def claim(self, key: str, ttl_ms: int) -> bool:
        """Whether this process should compute `key`: True when it took the lock (for
        `ttl_ms`, about the longest a computation may take) or when Redis cannot say;
        False when another process holds it: `wait_for` its answer."""
        lock = ("SET", self.lock_key(key), self._token, "NX", "PX", max(1, ttl_ms))
        replies = await self._execute(lock)
        return True if replies is None else bool(replies[0])

    async def release(self, key: str) -> None:
        """Give the lock back (after `put`, so waiters find the value, not an empty key:
        a waiter that sees neither value nor lock computes on its own)."""
        await self._execute(self._release_command(key))

    def _release_command(self, key: str) -> tuple[Any, ...]:
        return ("EVAL", RELEASE_SCRIPT, 1, self.lock_key(key), self._token)

    async def wait_for(
        self, key: str, deadline: float, *, poll_max_s: float = POLL_MAX_S
    ) -> RedisEntry | None:
        """The value another process is computing, polled until it appears; None when
        `deadline` (the event loop's clock, i.e. monotonic seconds) passes, when its lock
        is gone without a value (the leader failed: compute it yourself), or when Redis
        cannot answer."""
        loop = asyncio.get_running_loop()
        names = [self.redis_key(key), self.lock_key(key)]
        pause = POLL_FIRST_S
        while True:
            replies = await self._execute(("MGET", *names))
            if replies is None:
                return None
            value, lock = replies[0]
            entry = self._read(value, 0.0)
            if entry is not None:
                return self._count(entry)
            if lock is None:
                return None
            left = deadline - loop.time()
            if left <= 0:
                return None
            await asyncio.sleep(min(pause, left))
            pause = min(pause * 2, poll_max_s)

    def stats(self) -> dict[str, int]:
        return {
            "hits": self.hits,
            "misses": self.misses,
            "stale_hits": self.stale_hits,
            "unavailable": self.unavailable,
            "corrupt": self.corrupt,
            "healthy": int(self.healthy),
        }
