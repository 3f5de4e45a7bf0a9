"""Who a request is, decided once: the key's tenant and priority (a gateway's headers),
and what every later reader then sees, rules and bandit routes included."""

from __future__ import annotations

import asyncio

import pytest

from surge.config import Config
from surge.core.errors import SurgeError
from surge.security.auth import Authenticator, Principal
from surge.security.keys import KeyRing, hash_token, new_key_id, new_token
from surge.serving.target import Hints
from surge.store.keys import KeyRecord

NOW = 1_800_000_000.0


def ring_with(*records: tuple[str, tuple[str, ...], dict]) -> tuple[KeyRing, list[str]]:
    ring, tokens, rows = KeyRing(), [], []
    for tenant, scopes, settings in records:
        key_id = new_key_id()
        token = new_token(key_id)
        tokens.append(token)
        rows.append(KeyRecord(key_id, "", tenant, scopes, hash_token(token, rounds=1000),
                              NOW - 10, "test", settings=settings))  # fmt: skip
    ring.replace(rows)
    return ring, tokens


def request(**headers: str) -> dict:
    raw = [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()]
    return {"headers": raw, "surge.headers": {k: v.decode() for k, v in raw}}


def identify(auth: Authenticator, scope: dict) -> Principal:
    return asyncio.run(auth.identify(scope))


CONFIG = Config.model_validate(
    {"auth": {"required": True}, "tenants": {"acme": {"priority": 3}, "globex": {}}}
)


def test_a_keys_requests_get_its_tenant_whatever_they_claim() -> None:
    ring, (plain,) = ring_with(("acme", ("infer",), {}))
    auth = Authenticator(CONFIG, ring, clock=lambda: NOW)
    scope = request(authorization=f"Bearer {plain}", x_tenant="globex", x_priority="9")
    principal = identify(auth, scope)
    assert (principal.tenant, principal.priority) == ("acme", 3)  # the tenant's priority
    collected = scope["surge.headers"]
    assert collected[b"x-tenant"] == "acme" and collected[b"x-priority"] == "3"
    assert b"authorization" not in collected
    # A rules or bandit route reads the decision, never the raw claim, nor the key.
    hints = Hints(scope["headers"], decided=collected)
    facts = hints.facts(rows=1)
    assert (facts.tenant, facts.priority) == ("acme", 3)
    assert "authorization" not in facts.headers
    assert hints.header("X-Tenant") == "acme" and hints.header("Authorization") is None


def test_only_a_gateway_key_speaks_for_its_users() -> None:
    ring, (gateway,) = ring_with(("edge", ("infer", "gateway"), {"priority": 2}))
    auth = Authenticator(CONFIG, ring, clock=lambda: NOW)
    principal = identify(auth, request(authorization=f"Bearer {gateway}", x_tenant="globex"))
    assert (principal.tenant, principal.priority) == ("globex", 2)
    with pytest.raises(SurgeError) as bad:
        identify(auth, request(authorization=f"Bearer {gateway}", x_tenant="a/b"))
    assert bad.value.status == 400


def test_required_auth_refuses_no_key_a_wrong_key_and_an_expired_one() -> None:
    ring, (token,) = ring_with(("acme", ("infer",), {}))
    auth = Authenticator(CONFIG, ring, clock=lambda: NOW)
    for scope in (request(), request(authorization="Bearer nope"),
                  request(authorization=f"Bearer {token[:-2]}xx")):  # fmt: skip
        with pytest.raises(SurgeError) as refused:
            identify(auth, scope)
        assert refused.value.status == 401
        assert refused.value.headers == {"WWW-Authenticate": 'Bearer realm="surge"'}
    later = Authenticator(CONFIG, ring, clock=lambda: NOW + 10)
    record = next(iter(ring.records.values()))
    ring.replace([KeyRecord(**{**record.__dict__, "expires_at": NOW + 5})])
    with pytest.raises(SurgeError, match="expired"):
        identify(later, request(authorization=f"Bearer {token}"))


def test_without_required_auth_a_placeholder_key_is_anonymous() -> None:
    open_config = Config.model_validate({})
    ring, _ = ring_with()
    auth = Authenticator(open_config, ring, clock=lambda: NOW)
    principal = identify(auth, request(authorization="Bearer unused", x_tenant="acme"))
    assert principal.key_id is None and principal.tenant == "acme"  # a trusted network
    assert not principal.allows("feedback")  # an answer's token is still needed
    strict = Config.model_validate({"auth": {"anonymous_identity_headers": False}})
    scope = request(x_tenant="acme", x_priority="9")
    principal = identify(Authenticator(strict, ring), scope)
    assert principal.tenant is None and scope["surge.headers"][b"x-priority"] == "1"


def test_scopes() -> None:
    one = Principal("k", "acme", frozenset({"infer:digits"}), 1)
    assert one.allows("infer", "digits") and not one.allows("infer", "embed")
    assert one.allows("infer")  # may infer somewhere: the endpoint is checked later
    assert not one.allows("feedback")
    admin = Principal("k", "acme", frozenset({"admin"}), 1)
    assert admin.allows("receipts:read") and admin.allows("infer", "embed")
