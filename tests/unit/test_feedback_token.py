"""Bandit feedback needs proof: the answer's token (an HMAC of request id, tenant and arm)
or a key of the answer's tenant with the `feedback` scope; a refused proof leaves the
answer rewardable by its owner, in the local buffer, in the registry (SQLite and the real
PostgreSQL) and in the real Redis."""

from __future__ import annotations

import asyncio
import base64
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from surge.api.feedback import key_may_rate, proof_check
from surge.api.http import response_headers
from surge.cluster.pending import PendingFeedback, RedisPending, RegistryPending
from surge.config_routes import BanditConfig
from surge.core.context import RequestContext
from surge.core.errors import SurgeError
from surge.security.auth import Principal
from surge.serving.bandit_route import BanditRoute, feedback_token, token_matches
from tests.redis_server import needs_redis
from tests.stores import fresh_store

SECRET = b"s3cret"


# -- the token -----------------------------------------------------------------------------


def test_a_token_is_an_unpadded_base64url_hmac_bound_to_request_tenant_and_arm():
    token = feedback_token(SECRET, "req-1", "acme", "large")
    assert len(base64.urlsafe_b64decode(token + "=")) == 32 and "=" not in token
    assert token == feedback_token(SECRET, "req-1", "acme", "large")
    others = {
        feedback_token(SECRET, "req-2", "acme", "large"),
        feedback_token(SECRET, "req-1", "globex", "large"),
        feedback_token(SECRET, "req-1", None, "large"),
        feedback_token(SECRET, "req-1", "acme", "small"),
        feedback_token(b"another", "req-1", "acme", "large"),
        # fields cannot slide into each other
        feedback_token(SECRET, "req-1a", "cme", "large"),
    }
    assert token not in others and len(others) == 6
    assert token_matches(SECRET, token, "req-1", "acme", "large")
    assert not token_matches(SECRET, token, "req-1", "acme", "small")
    assert not token_matches(SECRET, "ünïcode", "req-1", "acme", "large")


@dataclass
class Target:
    name: str
    accepting: bool = True
    calls: list[str] = field(default_factory=list)

    async def infer(self, ctx: Any, tensors: Any, hints: Any) -> str:
        self.calls.append(ctx.request_id)
        return self.name


class Store:
    """The two store calls a bandit route makes, in memory."""

    def __init__(self) -> None:
        self.docs: dict[str, Any] = {}
        self.secrets: dict[str, str] = {}

    def update_state(self, key: str, change: Any, *, now: float) -> dict[str, Any]:
        self.docs[key] = change(self.docs.get(key))
        return self.docs[key]

    def shared_secret(self, name: str, make: Any, now: float) -> str:
        return self.secrets.setdefault(name, make())


def bandit_route(store: Store, remembered: list[tuple]) -> BanditRoute:
    config = BanditConfig(arms=["small", "large"], segment_header="x-tenant")
    targets: list[Any] = [Target("small"), Target("large")]
    return BanditRoute(
        "learner", config, targets, store, lambda *entry: remembered.append(entry),
        rng=random.Random(0),
    )  # fmt: skip


def answer(route: BanditRoute, request_id: str, tenant: str | None) -> RequestContext:
    ctx = RequestContext(request_id, "learner", deadline=10.0, received=0.0)
    ctx.tenant = tenant
    hints = SimpleNamespace(header=lambda name: tenant)
    asyncio.run(route.infer(ctx, None, hints))  # type: ignore[arg-type]
    return ctx


def test_a_bandit_answer_carries_its_token_and_remembers_its_tenant(monkeypatch):
    monkeypatch.delenv("SURGE_FEEDBACK_SECRET", raising=False)
    store, remembered = Store(), []
    route = bandit_route(store, remembered)
    asyncio.run(route.sync())  # at start-up: the shared secret is loaded once
    ctx = answer(route, "req-1", "acme")
    (request_id, name, segment, arm, tenant), = remembered  # fmt: skip
    assert (request_id, name, segment, tenant) == ("req-1", "learner", "acme", "acme")
    secret = store.secrets["feedback"].encode()
    assert ctx.feedback_token == feedback_token(secret, "req-1", "acme", arm)
    assert route.token_matches(ctx.feedback_token, "req-1", "acme", arm)
    # a second process on the same store signs with the same secret
    other = bandit_route(store, [])
    asyncio.run(other.sync())
    assert other.token_matches(ctx.feedback_token, "req-1", "acme", arm)

    served_by = SimpleNamespace(
        version="2", spec=SimpleNamespace(version=SimpleNamespace(ref="m@2"))
    )
    headers = response_headers(ctx, served_by)  # type: ignore[arg-type]
    assert headers["X-Feedback-Token"] == ctx.feedback_token
    plain = RequestContext("req-2", "m", deadline=10.0, received=0.0)
    assert "X-Feedback-Token" not in response_headers(plain, served_by)  # type: ignore[arg-type]


def test_the_operator_can_set_the_secret(monkeypatch):
    monkeypatch.setenv("SURGE_FEEDBACK_SECRET", "from-the-environment")
    store = Store()
    route = bandit_route(store, [])
    asyncio.run(route.sync())
    ctx = answer(route, "req-1", None)
    arm = ctx.decisions[0]["choice"]
    assert ctx.feedback_token == feedback_token(b"from-the-environment", "req-1", None, arm)
    assert store.secrets == {}  # the registry's is not even made


# -- who may rate --------------------------------------------------------------------------


def principal(key_id: str | None, tenant: str | None, scopes: set[str]) -> Principal:
    return Principal(key_id, tenant, frozenset(scopes), 1)


def routes_with_secret() -> dict[str, Any]:
    route = bandit_route(Store(), [])
    route.secret = SECRET
    return {"learner": route}


@pytest.mark.parametrize(
    ("token", "principal", "allowed"),
    [
        (feedback_token(SECRET, "req-1", "acme", "large"), None, True),
        (feedback_token(SECRET, "req-1", "acme", "small"), None, False),  # another arm
        (feedback_token(SECRET, "req-9", "acme", "large"), None, False),  # another request
        (feedback_token(b"guess", "req-1", "acme", "large"), None, False),
        (None, None, False),
        (None, principal(None, None, {"infer", "feedback"}), False),  # anonymous
        (None, principal("k1", "acme", {"feedback"}), True),
        (None, principal("k1", "globex", {"feedback"}), False),  # other tenant
        (None, principal("k1", "acme", {"infer"}), False),  # no feedback scope
        ("wrong", principal("k1", "acme", {"feedback"}), True),  # the key suffices
    ],
)
def test_feedback_is_taken_with_the_answers_token_or_a_feedback_key_of_its_tenant(
    token, principal, allowed
):
    check = proof_check(routes_with_secret(), "req-1", token, principal)
    entry = ("learner", "acme", "large", "acme")
    if allowed:
        check(entry)
    else:
        with pytest.raises(SurgeError) as refused:
            check(entry)
        assert (refused.value.status, refused.value.code) == (403, "feedback_forbidden")


def test_no_key_rates_an_answer_that_had_no_tenant():
    key = principal("k1", None, {"feedback"})
    assert key_may_rate(key)  # it could rate its tenant's answers ...
    with pytest.raises(SurgeError):  # ... but an answer without a tenant is nobody's
        proof_check(routes_with_secret(), "req-1", None, key)(("learner", "", "large", None))


# -- a refused proof does not use the answer up ---------------------------------------------


def refuse(entry: Any) -> None:
    raise SurgeError("feedback_forbidden", "no", 403)


class Nowhere:
    async def put(self, entries: Any, ttl_s: float) -> None:
        raise ConnectionError("down")

    async def take(self, request_id: str, check: Any) -> None:
        return None


def test_a_refused_take_leaves_the_entry_in_the_local_buffer():
    async def main() -> None:
        pending = PendingFeedback(Nowhere(), ttl_s=60)
        pending.remember("req-1", "learner", "acme", "large", "acme")
        with pytest.raises(SurgeError):
            await pending.take("req-1", refuse, wait_s=0)
        assert await pending.take("req-1", wait_s=0) == ("learner", "acme", "large", "acme")
        assert await pending.take("req-1", wait_s=0) is None

    asyncio.run(main())


@pytest.fixture(params=["sqlite", "postgresql"])
def registry(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    with fresh_store(request.param, tmp_path, "ft") as opened:
        yield opened


def test_a_refused_take_leaves_the_entry_in_the_registry(registry):
    async def main() -> None:
        shared = RegistryPending(registry, wall_clock=lambda: 100.0)
        await shared.put([("req-1", ("learner", "acme", "large", "acme"))], ttl_s=60)
        with pytest.raises(SurgeError) as refused:
            await shared.take("req-1", refuse)
        assert refused.value.code == "feedback_forbidden"  # the check's, not the store's
        seen: list[Any] = []
        taken = await shared.take("req-1", seen.append)
        assert taken == ("learner", "acme", "large", "acme") and seen == [taken]
        assert await shared.take("req-1", seen.append) is None  # exactly once

    asyncio.run(main())


@needs_redis
def test_a_refused_take_puts_the_entry_back_in_redis_for_the_rest_of_its_time():
    from surge.cluster.redis_link import RedisLink

    async def main() -> None:
        link = RedisLink("redis://127.0.0.1:6379/0", f"ft_{uuid.uuid4().hex[:12]}")
        await link.start()
        clock = [1000.0]
        try:
            shared = RedisPending(link, wall_clock=lambda: clock[0])
            await shared.put([("req-1", ("learner", "acme", "large", "acme"))], ttl_s=60)
            clock[0] += 59.5  # half a second of its minute left
            with pytest.raises(SurgeError) as refused:
                await shared.take("req-1", refuse)
            assert refused.value.code == "feedback_forbidden"
            ttl_ms = await link._command(lambda c: c.pttl(link._pending_key("req-1")))
            assert 0 < ttl_ms <= 500  # back, but not a minute longer for the stranger's try
            taken = await shared.take("req-1", lambda entry: None)
            assert taken == ("learner", "acme", "large", "acme")
            assert await shared.take("req-1", lambda entry: None) is None
        finally:
            await link.stop()

    asyncio.run(main())
