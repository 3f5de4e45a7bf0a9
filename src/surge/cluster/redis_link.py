"""One process's link to the shared Redis: route-change notifications (pub/sub) and
pending bandit feedback (keys with a TTL, taken exactly once by whichever process gets
the feedback).

Serving never depends on Redis being up. Every command is bounded by `timeout_s`, a
failure is caught, counted and turned into a plain answer (`False`, or
`RedisUnavailable` where the caller must tell "absent" from "can't tell"), and an outage
is logged once when it starts and once when it ends, not per call. While the link
knows Redis is unreachable, commands fail at once instead of each waiting out the
timeout (a blackholed Redis would otherwise add `timeout_s` to every request); a
background ping finds out when it is back. The subscription lives on its own
connection, which must not time out while idle: it is watched by pinging it, and on
every (re)subscription the handler is called with `b""` so its owner re-reads what it
may have missed.

The `redis` package is imported only when a link starts, so surge (and this module,
for `RedisUnavailable`) imports without it when no `redis_url` is configured.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.client import PubSub

log = logging.getLogger("surge.redis")

T = TypeVar("T")

HEALTHY_PING_EVERY_S = 1.0  # so an idle link notices an outage within ~1-2 s
UNHEALTHY_PING_EVERY_S = 0.25  # commands fail fast meanwhile, so notice the return soon
RESUBSCRIBE_FIRST_S = 0.1  # backoff of the subscriber after a dropped connection ...
RESUBSCRIBE_MAX_S = 2.0  # ... doubling up to this
POLL_S = 0.2  # the subscriber's wait for a message, and so its delay to add a channel
SUBSCRIBER_PING_AFTER_S = 1.0  # a subscription silent this long is pinged to prove it lives


class RedisUnavailable(Exception):
    """Redis could not answer (down, too slow, or refused the command): the caller
    cannot tell whether what it asked for exists."""


def redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    return re.sub(r"(//[^/:@]*):[^/@]*@", r"\1:***@", url)


def _reason(exc: BaseException, timeout_s: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout_s:g} s"
    return redact(str(exc)) or type(exc).__name__


class RedisLink:
    def __init__(
        self,
        url: str,
        namespace: str,
        *,
        timeout_s: float = 0.5,
        on_state: Callable[[bool], None] | None = None,
    ) -> None:
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        self.url = url
        self.safe_url = redact(url)
        self.namespace = namespace
        self.timeout_s = timeout_s
        self.on_state = on_state
        self.failures = 0  # commands and pings that failed, since the link was made
        self._healthy: bool | None = None  # None: not known yet (not started)
        self._last_reason = "not started"
        self._refusals_logged: set[str] = set()
        self._handlers: dict[str, list[Callable[[bytes], None]]] = {}  # full channel name
        self._client: Redis | None = None
        self._subscriber_client: Redis | None = None
        self._health_task: asyncio.Task[None] | None = None
        self._subscriber_task: asyncio.Task[None] | None = None
        self._resubscribe_wait_s = RESUBSCRIBE_FIRST_S

    @property
    def healthy(self) -> bool:
        """Whether Redis answered the last time the link tried."""
        return self._healthy is True

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Connect and ping once. A Redis that is down does not make this raise: the
        link starts unhealthy and keeps trying. A malformed URL raises ValueError."""
        if self._client is not None:
            raise RuntimeError(f"the redis link to {self.safe_url} is already started")
        from redis.asyncio import Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        # No retries inside redis-py (its default is 10 with backoff, which would hold a
        # caller for seconds): the link's own background loops do the retrying.
        common: dict[str, Any] = {
            "socket_connect_timeout": self.timeout_s,
            "retry": Retry(NoBackoff(), 0),
        }
        try:
            self._client = Redis.from_url(self.url, socket_timeout=self.timeout_s, **common)
            self._subscriber_client = Redis.from_url(self.url, socket_timeout=None, **common)
        except ValueError as exc:
            raise ValueError(f"redis_url {self.safe_url!r} is not valid: {exc}") from None
        loop = asyncio.get_running_loop()
        await self.ping()
        self._health_task = loop.create_task(self._watch_health(), name="redis health")
        if self._handlers:
            self._start_subscriber()

    async def stop(self) -> None:
        """Stop the background loops and close the connections; the link may start again."""
        tasks = [t for t in (self._health_task, self._subscriber_task) if t is not None]
        self._health_task = self._subscriber_task = None
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        clients = [c for c in (self._client, self._subscriber_client) if c is not None]
        self._client = self._subscriber_client = None
        for client in clients:
            await client.aclose()
        self._healthy = None
        self._last_reason = "not started"

    # -- commands ----------------------------------------------------------------------

    async def ping(self) -> bool:
        """Ask Redis now, even while it is known to be down; updates `healthy`."""
        if self._client is None:
            return False
        try:
            async with asyncio.timeout(self.timeout_s):
                await self._client.ping()
        except Exception as exc:
            self.failures += 1
            self._set_healthy(False, _reason(exc, self.timeout_s))
            return False
        self._set_healthy(True)
        return True

    async def publish(self, channel: str, message: bytes | str) -> bool:
        """Publish on `<namespace>:<channel>`; False when Redis could not take it."""
        try:
            await self._command(lambda c: c.publish(self._key(channel), message))
        except RedisUnavailable:
            return False
        return True

    async def put_pending(self, entries: list[tuple[str, bytes]], ttl_s: float) -> bool:
        """Store each (request id, value) for `ttl_s`, all in one round trip; False when
        Redis could not take them."""
        if not entries:
            return True
        ttl_ms = max(1, round(ttl_s * 1000))

        async def put(client: Redis) -> None:
            async with client.pipeline(transaction=False) as pipe:
                for request_id, value in entries:
                    # NX: the first answer under an id keeps it (see PendingFeedback).
                    pipe.set(self._pending_key(request_id), value, px=ttl_ms, nx=True)
                await pipe.execute()

        try:
            await self._command(put)
        except RedisUnavailable:
            return False
        return True

    async def take_pending(self, request_id: str) -> bytes | None:
        """The value stored for `request_id`, removed in the same step (GETDEL), so of
        all processes asking only one gets it; None when absent or expired. Raises
        RedisUnavailable when Redis cannot say."""
        return await self._command(lambda c: c.getdel(self._pending_key(request_id)))

    async def _command(self, call: Callable[[Redis], Awaitable[T]]) -> T:
        client = self._client
        if client is None:
            raise RedisUnavailable(f"the redis link to {self.safe_url} is not started")
        if self._healthy is False:
            raise RedisUnavailable(f"redis at {self.safe_url} unreachable: {self._last_reason}")
        from redis.exceptions import ResponseError

        try:
            async with asyncio.timeout(self.timeout_s):
                return await call(client)
        except ResponseError as exc:
            # Redis answered, with a refusal (a permission, a full memory): it is up, so
            # the link stays healthy, and each distinct refusal is logged once.
            self.failures += 1
            message = redact(str(exc))
            if message not in self._refusals_logged and len(self._refusals_logged) < 100:
                self._refusals_logged.add(message)
                log.warning("redis at %s refused a command: %s", self.safe_url, message)
            raise RedisUnavailable(f"redis at {self.safe_url} refused: {message}") from exc
        except Exception as exc:
            self.failures += 1
            reason = _reason(exc, self.timeout_s)
            self._set_healthy(False, reason)
            raise RedisUnavailable(f"redis at {self.safe_url} unreachable: {reason}") from exc

    # -- health ------------------------------------------------------------------------

    def _set_healthy(self, healthy: bool, reason: str = "") -> None:
        if healthy == self._healthy:
            return
        known_before = self._healthy is not None
        self._healthy = healthy
        if healthy:
            log.info("redis at %s %s", self.safe_url, "reachable again" if known_before else "up")
        else:
            self._last_reason = reason
            log.warning(
                "redis at %s unreachable: %s; serving continues without it, "
                "the link retries in the background",
                self.safe_url,
                reason,
            )
        if self.on_state is not None:
            try:
                self.on_state(healthy)
            except Exception:
                log.exception("the on_state hook of the redis link failed")

    async def _watch_health(self) -> None:
        while True:
            await asyncio.sleep(HEALTHY_PING_EVERY_S if self.healthy else UNHEALTHY_PING_EVERY_S)
            await self.ping()

    # -- subscriptions -----------------------------------------------------------------

    def subscribe(self, channel: str, on_message: Callable[[bytes], None]) -> None:
        """Call `on_message(data)` for each message on `<namespace>:<channel>`, and with
        `b""` each time the subscription is (re)established. Before or after start.
        Handlers run on the event loop, so they should only note or schedule work."""
        self._handlers.setdefault(self._key(channel), []).append(on_message)
        if self._client is not None and self._subscriber_task is None:
            self._start_subscriber()
        # A subscriber already running picks the new channel up within POLL_S.

    def _start_subscriber(self) -> None:
        loop = asyncio.get_running_loop()
        self._subscriber_task = loop.create_task(self._keep_subscribed(), name="redis subscriber")

    async def _keep_subscribed(self) -> None:
        from redis.exceptions import ResponseError

        refusal_logged = False
        while True:
            assert self._subscriber_client is not None
            pubsub = self._subscriber_client.pubsub()
            try:
                await self._listen(pubsub)
            except Exception as exc:
                # An outage is the health loop's to report; a refusal (say, ACLs that
                # forbid SUBSCRIBE) would otherwise go unseen, so say it once.
                reason = _reason(exc, self.timeout_s)
                if isinstance(exc, ResponseError) and not refusal_logged:
                    refusal_logged = True
                    log.warning("redis at %s refused the subscription: %s", self.safe_url, reason)
                else:
                    log.debug("redis subscription lost (%s); resubscribing", reason)
            finally:
                with contextlib.suppress(Exception):  # the connection is gone either way
                    await pubsub.aclose()
            await asyncio.sleep(self._resubscribe_wait_s)
            self._resubscribe_wait_s = min(self._resubscribe_wait_s * 2, RESUBSCRIBE_MAX_S)

    async def _listen(self, pubsub: PubSub) -> None:
        """Hold one subscription until its connection fails (raises)."""
        loop = asyncio.get_running_loop()
        subscribed: set[str] = set()
        last_heard = loop.time()
        pinged_at: float | None = None
        while True:
            wanted = self._handlers.keys() - subscribed
            if wanted:
                async with asyncio.timeout(self.timeout_s):
                    await pubsub.subscribe(*wanted)
                subscribed |= wanted
            message = await pubsub.get_message(timeout=POLL_S)
            now = loop.time()
            if message is not None:
                last_heard, pinged_at = now, None
                self._on_pubsub_message(message)
            elif pinged_at is not None and now - pinged_at > self.timeout_s + POLL_S:
                raise TimeoutError  # the connection is open but nothing answers
            elif pinged_at is None and now - last_heard > SUBSCRIBER_PING_AFTER_S:
                async with asyncio.timeout(self.timeout_s):
                    await pubsub.ping()
                pinged_at = now

    def _on_pubsub_message(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "subscribe":
            # The server confirmed: from here no message is missed, so this is the moment
            # for the owner to re-read the truth.
            self._resubscribe_wait_s = RESUBSCRIBE_FIRST_S
            data = b""
        elif kind == "message":
            data = message["data"]
        else:
            return  # a pong
        channel = message["channel"]
        if isinstance(channel, bytes):
            channel = channel.decode()
        for handler in self._handlers.get(channel, ()):
            try:
                handler(data)
            except Exception:
                log.exception("a handler of redis channel %s failed", channel)

    # -- names -------------------------------------------------------------------------

    def _key(self, name: str) -> str:
        return f"{self.namespace}:{name}"

    def _pending_key(self, request_id: str) -> str:
        return f"{self.namespace}:pending:{request_id}"
