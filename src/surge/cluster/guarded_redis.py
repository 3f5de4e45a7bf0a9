"""A Redis connection for the request path: every call bounded by a timeout, failing at
once while Redis is known to be down, and an outage logged once when it starts and once
when it ends. The rate limits (security/redis_limits.py) and budgets (security/budget.py)
talk to Redis through it.

A late answer alone is not an outage: on a busy machine this process's own event loop
runs late too, and declaring Redis down on one slow call flipped every process to
counting alone. `TIMEOUTS_BEFORE_DOWN` late answers in a row, or any connection error,
are; from then on calls fail at once and a background ping finds Redis again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from surge.cluster.redis_link import RedisUnavailable, redact
from surge.cluster.resp_client import RespClient, RespReplyError, supports

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger("surge.security")

T = TypeVar("T")

TIMEOUTS_BEFORE_DOWN = 3  # late answers in a row that count as an outage
DOWN_PING_EVERY_S = 0.25  # calls fail fast while Redis is down, so notice its return soon


def _reason(exc: BaseException, timeout_s: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout_s:g} s"
    return redact(str(exc)) or type(exc).__name__


class GuardedRedis:
    """A Redis client whose every call is bounded by `timeout_s`, fails at once while
    Redis is known to be down, and reports an outage once (start and end) under `what`.
    Calls raise `RedisUnavailable`; a refusal (an error reply) leaves it healthy."""

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float,
        what: str,
        on_down_note: str,
        max_connections: int = 64,
    ) -> None:
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        self.url, self.safe_url = url, redact(url)
        self.timeout_s = timeout_s
        self.what, self.on_down_note = what, on_down_note
        self.max_connections = max_connections
        # Calls wait here for a connection rather than fail in the pool: a burst of
        # concurrent requests is this process being busy, not Redis being down.
        self._slots = asyncio.Semaphore(max_connections)
        self.failures = 0
        self._timeouts = 0  # late answers in a row (one per stall: see `call`)
        self._late_until = float("-inf")  # the deadline of the last late answer counted
        self.busy = 0  # calls that found no free connection within the timeout
        self._healthy = True
        self._client: Redis | None = None
        self._fast: RespClient | None = None  # raw pipelines (`execute`), where it can
        self._pinger: asyncio.Task[None] | None = None
        self._refusals_logged: set[str] = set()

    @property
    def healthy(self) -> bool:
        return self._client is not None and self._healthy

    @property
    def started(self) -> bool:
        return self._client is not None

    async def start(self) -> None:
        """Connect; a Redis that is down does not make this raise (calls fall back)."""
        if self._client is not None:
            return
        from redis.asyncio import Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        try:
            # No retries inside redis-py: they would hold a request for seconds.
            self._client = Redis.from_url(
                self.url,
                socket_timeout=self.timeout_s,
                socket_connect_timeout=self.timeout_s,
                retry=Retry(NoBackoff(), 0),
                max_connections=self.max_connections,
            )
        except ValueError as exc:
            raise ValueError(f"redis_url {self.safe_url!r} is not valid: {exc}") from None
        if supports(self.url):
            self._fast = RespClient(self.url, connect_timeout_s=self.timeout_s)
        with contextlib.suppress(RedisUnavailable):
            await self.call(lambda c: c.ping())

    async def stop(self) -> None:
        pinger, self._pinger = self._pinger, None
        if pinger is not None:
            pinger.cancel()
            await asyncio.wait([pinger])
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()
        fast, self._fast = self._fast, None
        if fast is not None:
            await fast.aclose()
        self._healthy = True

    async def execute(self, *commands: Sequence[Any]) -> list[Any]:
        """Raw commands (`("MGET", k1, k2)`, `("SET", k, v, "PX", 100)`) in one round
        trip, their raw replies in order (bytes, int, None, lists), under the same
        bounds as `call`. Through the lean client (resp_client.py, a fraction of
        redis-py's CPU) when it can connect as the URL says, else a redis-py pipeline."""
        fast = self._fast
        if fast is not None:
            return await self.call(lambda _: fast.execute(commands))

        async def pipelined(client: Redis) -> list[Any]:
            pipe = client.pipeline(transaction=False)
            for command in commands:
                pipe.execute_command(*command)
            return await pipe.execute()

        return await self.call(pipelined)

    async def eval_script(
        self, sha: str, script: str, keys: Sequence[str], args: Sequence[Any]
    ) -> Any:
        """A Lua script's reply: EVALSHA, then EVAL when Redis does not hold the script
        (a restart flushed it), within one guarded call; through the lean client where
        it can (about a third of redis-py's CPU per call)."""
        fast = self._fast
        if fast is None:
            return await self.call(lambda client: _redis_py_script(client, sha, script, keys, args))

        async def run(_: Redis) -> Any:
            try:
                return (await fast.execute([("EVALSHA", sha, len(keys), *keys, *args)]))[0]
            except RespReplyError as exc:
                if not str(exc).startswith("NOSCRIPT"):
                    raise
            return (await fast.execute([("EVAL", script, len(keys), *keys, *args)]))[0]

        return await self.call(run)

    async def call(self, command: Callable[[Redis], Awaitable[T]]) -> T:
        from redis.exceptions import ResponseError

        client = self._client
        if client is None:
            raise RedisUnavailable(f"{self.what}: the link to redis is not started")
        if not self._healthy:
            raise RedisUnavailable(f"{self.what}: redis at {self.safe_url} is down")
        deadline = asyncio.get_running_loop().time() + self.timeout_s
        if not self._slots.locked():
            await self._slots.acquire()  # a free slot: taken at once, no timer needed
        else:
            try:
                async with asyncio.timeout_at(deadline):
                    await self._slots.acquire()
            except TimeoutError:
                self.busy += 1
                message = "no free connection to redis in time"
                raise RedisUnavailable(f"{self.what}: {message}") from None
        try:
            async with asyncio.timeout_at(deadline):
                result = await command(client)
            self._timeouts = 0
            return result
        except (ResponseError, RespReplyError) as exc:
            self.failures += 1
            message = redact(str(exc))
            if message not in self._refusals_logged and len(self._refusals_logged) < 100:
                self._refusals_logged.add(message)
                log.warning("%s: redis at %s refused: %s", self.what, self.safe_url, message)
            raise RedisUnavailable(f"{self.what}: redis refused: {message}") from exc
        except Exception as exc:
            self.failures += 1
            if isinstance(exc, TimeoutError):
                # Calls in flight together during one stall are one observation, not
                # many: a late answer counts only for a call sent after the last counted
                # one's deadline. Else one 50 ms pause of a busy machine times out every
                # call in flight at once and calls Redis down (seen: 20 false outages in
                # 24 s of load while Redis answered in 2 ms).
                started = deadline - self.timeout_s
                if started >= self._late_until:
                    self._timeouts += 1
                    self._late_until = deadline
                if self._timeouts < TIMEOUTS_BEFORE_DOWN:
                    # One late answer is more often this process's own event loop running
                    # behind (a busy machine) than Redis gone: fall back for this call.
                    raise RedisUnavailable(f"{self.what}: redis answered late") from exc
            self._went_down(_reason(exc, self.timeout_s))
            raise RedisUnavailable(f"{self.what}: redis at {self.safe_url} unreachable") from exc
        finally:
            self._slots.release()

    def _went_down(self, reason: str) -> None:
        if not self._healthy:
            return
        self._healthy = False
        log.warning(
            "%s: redis at %s unreachable (%s); %s until it answers again",
            *(self.what, self.safe_url, reason, self.on_down_note),
        )
        self._pinger = asyncio.get_running_loop().create_task(
            self._ping_until_up(), name=f"{self.what}: redis ping"
        )

    async def _ping_until_up(self) -> None:
        client = self._client
        if client is not None:
            # Every pooled connection may be dead (a restarted server closed them all):
            # used after the return, each would fail once and start a new "outage".
            with contextlib.suppress(Exception):
                await client.connection_pool.disconnect()
            if self._fast is not None:
                await self._fast.aclose()
                self._fast = RespClient(self.url, connect_timeout_s=self.timeout_s)
        while True:
            await asyncio.sleep(DOWN_PING_EVERY_S)
            client = self._client
            if client is None:
                return
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self.timeout_s):
                    await client.ping()
                self._healthy = True
                self._timeouts, self._late_until = 0, float("-inf")
                self._pinger = None
                log.info("%s: redis at %s reachable again", self.what, self.safe_url)
                return


async def _redis_py_script(
    client: Redis, sha: str, script: str, keys: Sequence[str], args: Sequence[Any]
) -> Any:
    from redis.exceptions import NoScriptError

    try:
        return await client.evalsha(sha, len(keys), *keys, *args)
    except NoScriptError:
        return await client.eval(script, len(keys), *keys, *args)
