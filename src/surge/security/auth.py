"""Who is calling: the client key a request shows, and the tenant and priority it gets.

`Authenticator.identify(scope)` runs once per request, before anything else reads the
request: it finds the key (`Authorization: Bearer <key>` or `X-Api-Key`), checks it
against the key ring, and decides the request's tenant and priority. Only a key with the
`gateway` scope (a trusted gateway that authenticated its own users) may set them with
`X-Tenant` and `X-Priority`; any other key's requests get its tenant, and the priority
of the key or else of its tenant. The decision is written over the headers collected
on arrival, which every later reader uses (rules and bandit routes through `Hints`,
receipts, burst-mode shedding): they see the decided identity, never what an untrusted
client sent, and nothing downstream sees the key.

Without `auth.required`, a call without a key is anonymous: it may infer, and (unless
`auth.anonymous_identity_headers` is off) its own X-Tenant and X-Priority are taken as
sent, as on a trusted network. A surge key (`sgk_...`) that is shown is always checked,
required or not; anything else in `Authorization` is then ignored (stock clients send a
placeholder key: the OpenAI client will not start without one).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from surge.config import Config
from surge.config_security import TENANT_PATTERN
from surge.core.errors import SurgeError, bad_input
from surge.security.keys import PREFIX, KeyRing, usable
from surge.serving.target import DEFAULT_PRIORITY, parse_priority
from surge.store.keys import KeyRecord

_TENANT = re.compile(TENANT_PATTERN)
IDENTITY_HEADERS = (b"x-tenant", b"x-priority")
CREDENTIAL_HEADERS = (b"authorization", b"x-api-key")
BEARER = {"WWW-Authenticate": 'Bearer realm="surge"'}


@dataclass(frozen=True, slots=True)
class Principal:
    key_id: str | None  # None: anonymous
    tenant: str | None
    scopes: frozenset[str]
    priority: int
    settings: dict | None = None  # the key's own limits and priority

    def allows(self, scope: str, endpoint: str | None = None) -> bool:
        """`admin` may do anything; `infer` covers every endpoint, `infer:<name>` one."""
        scopes = self.scopes
        if scope in scopes or "admin" in scopes:
            return True
        if scope == "infer":
            if endpoint is None:
                return any(s.startswith("infer:") for s in scopes)
            return f"infer:{endpoint}" in scopes
        return False


# No key, auth not required: it may call the models and read the metrics, nothing
# that acts on someone's behalf (feedback then needs the answer's token).
ANONYMOUS_SCOPES = frozenset({"infer", "metrics"})


def require(principal: Principal, scope: str, endpoint: str | None = None) -> None:
    """Refuse (403) a call whose key lacks `scope` (for `endpoint`)."""
    if principal.allows(scope, endpoint):
        return
    who = f"key {principal.key_id}" if principal.key_id else "a call without a key"
    what = f"'{scope}' for {endpoint!r}" if endpoint else f"'{scope}'"
    raise SurgeError("forbidden", f"{who} lacks the scope {what}", 403)


class Authenticator:
    def __init__(self, config: Config, ring: KeyRing, clock: Callable[[], float] = time.time):
        self.required = config.auth.required
        self.trust_anonymous = config.auth.anonymous_identity_headers
        self.tenants = config.tenants
        self.ring = ring
        self.clock = clock
        self._principals: dict[str, tuple[KeyRecord, Principal]] = {}

    async def identify(self, scope: dict) -> Principal:
        """The caller, with the request's identity headers rewritten to match it."""
        headers: dict[bytes, str] = scope["surge.headers"]
        token = _presented(headers, strict=self.required)
        if token is not None and not self.required and not token.startswith(PREFIX):
            # Not one of ours, and none is needed: stock clients send some key anyway
            # (the OpenAI client requires one), so the call is anonymous, not refused.
            token = None
        if token is None:
            if self.required:
                raise SurgeError(
                    "unauthorized",
                    "this server needs a client key: send 'Authorization: Bearer <key>'",
                    401,
                    headers=BEARER,
                )
            return self._anonymous(scope, headers)
        record = self.ring.known(token) or await self.ring.verify(token)
        now = self.clock()
        if record is None or not usable(record, now):
            raise SurgeError("unauthorized", _refusal(record), 401, headers=BEARER)
        self.ring.used[record.id] = now
        if "gateway" in record.scopes:  # its identity comes with each request
            principal = self._principal(record, headers)
        else:  # one per key (and per version of its row): made once, then reused
            cached = self._principals.get(record.id)
            if cached is None or cached[0] is not record:
                if len(self._principals) > 2 * len(self.ring.records) + 64:
                    self._principals.clear()  # keys ended since: start afresh
                cached = self._principals[record.id] = (record, self._principal(record, headers))
            principal = cached[1]
        _rewrite(scope, principal)
        return principal

    def _anonymous(self, scope: dict, headers: dict[bytes, str]) -> Principal:
        tenant, priority = None, DEFAULT_PRIORITY
        if self.trust_anonymous:
            tenant = _checked_tenant(headers.get(b"x-tenant"))
            if tenant is not None and tenant in self.tenants:
                priority = self.tenants[tenant].priority
            raw = headers.get(b"x-priority")
            priority = parse_priority(raw) if raw is not None else priority
            return Principal(None, tenant, ANONYMOUS_SCOPES, priority)
        principal = Principal(None, None, ANONYMOUS_SCOPES, priority)
        if any(name in headers for name in IDENTITY_HEADERS):
            _rewrite(scope, principal)
        return principal

    def _principal(self, record: KeyRecord, headers: dict[bytes, str]) -> Principal:
        scopes = frozenset(record.scopes)
        tenant = record.tenant
        settings = record.settings
        priority = settings.get("priority")
        if "gateway" in scopes:  # a trusted gateway speaks for its own users
            tenant = _checked_tenant(headers.get(b"x-tenant")) or tenant
            raw = headers.get(b"x-priority")
            if raw is not None:
                priority = parse_priority(raw)
        if priority is None:
            configured = self.tenants.get(tenant)
            priority = configured.priority if configured is not None else DEFAULT_PRIORITY
        return Principal(record.id, tenant, scopes, int(priority), settings)


def _presented(headers: dict[bytes, str], strict: bool) -> str | None:
    api_key = headers.get(b"x-api-key")
    if api_key:
        return api_key.strip()
    authorization = headers.get(b"authorization")
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        if not strict:
            return None
        raise SurgeError(
            "unauthorized", "send the key as 'Authorization: Bearer <key>'", 401, headers=BEARER
        )
    return token.strip()


def _refusal(record: KeyRecord | None) -> str:
    if record is None:
        return "the client key is not valid"
    if record.revoked_at is not None:
        return f"the client key {record.id} was revoked"
    return f"the client key {record.id} has expired"


def _checked_tenant(raw: str | None) -> str | None:
    if raw is None or raw == "":
        return None
    if not _TENANT.fullmatch(raw):
        raise bad_input(f"X-Tenant must match {TENANT_PATTERN}, got {raw[:80]!r}")
    return raw


def _rewrite(scope: dict, principal: Principal) -> None:
    """Put the decided tenant and priority where every later reader looks (the headers
    collected on arrival; `Hints` reads them there too, not from the raw list), and take
    the key out of sight of everything downstream."""
    headers: dict[bytes, str] = scope["surge.headers"]
    for name in CREDENTIAL_HEADERS:
        headers.pop(name, None)
    headers[b"x-priority"] = str(principal.priority)
    if principal.tenant is not None:
        headers[b"x-tenant"] = principal.tenant
    else:
        headers.pop(b"x-tenant", None)
