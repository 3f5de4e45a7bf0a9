"""Making, ending and following client keys: what `POST /admin/keys` and `surge keys` do.

Every change writes the key's row, then bumps the registry key `KEYS_KEY` with one audit
entry (who, what, which key: never the key itself). The process that made the change
reloads its ring at once; every other process reloads when its route follower sees the
new revision of `KEYS_KEY` (a Redis notification, or its next poll).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import ValidationError

from surge.config_security import TENANT_PATTERN, RateLimitConfig
from surge.core.errors import SurgeError, bad_input, not_found
from surge.security.keys import (
    KEYS_KEY,
    SCOPES,
    KeyRing,
    NewKey,
    hash_token,
    new_key_id,
    new_token,
    usable,
)
from surge.store.keys import KeyRecord
from surge.store.registry import RegistryStore

log = logging.getLogger("surge.keys")

_TENANT = re.compile(TENANT_PATTERN)
_ENDPOINT_SCOPE = re.compile(r"^infer:[A-Za-z0-9._-]{1,128}$")
MAX_LIVE_KEYS = 10_000  # keys live in every process's memory
MAX_NAME_CHARS = 200
USAGE_FLUSH_S = 60.0  # how often a process records its keys' last use


class KeyAdmin:
    def __init__(
        self,
        store: RegistryStore,
        ring: KeyRing,
        announce: Callable[[str], Awaitable[Any]] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.ring = ring
        self.announce = announce
        self.clock = clock
        self._flusher: asyncio.Task[None] | None = None

    # -- operations ---------------------------------------------------------------------------

    async def create(self, body: dict[str, Any], actor: str) -> NewKey:
        tenant = body.get("tenant")
        if not isinstance(tenant, str) or not _TENANT.fullmatch(tenant):
            raise bad_input(f"'tenant' is required and must match {TENANT_PATTERN}")
        scopes = _scopes(body.get("scopes", ["infer"]))
        name = body.get("name", "")
        if not isinstance(name, str) or len(name) > MAX_NAME_CHARS:
            raise bad_input(f"'name' must be a string of at most {MAX_NAME_CHARS} characters")
        now = self.clock()
        expires_at = _expiry(body.get("expires_in_s"), now)
        settings = _settings(body)
        live = sum(1 for r in self.ring.records.values() if usable(r, now))
        if live >= MAX_LIVE_KEYS:
            raise SurgeError(
                "too_many_keys", f"{live} live keys: revoke some before making more", 409
            )
        key_id = new_key_id()
        token = new_token(key_id)
        record = KeyRecord(
            id=key_id, name=name, tenant=tenant, scopes=scopes,
            hash=await asyncio.to_thread(hash_token, token), created_at=now,
            created_by=actor, expires_at=expires_at, settings=settings,
        )  # fmt: skip
        await asyncio.to_thread(self.store.create_key, record)
        scope_list = ", ".join(scopes)
        await self._changed(actor, "key_create", key_id, f"for {tenant} ({scope_list})")
        return NewKey(token, record)

    async def revoke(self, key_id: str, actor: str) -> KeyRecord:
        record = await self._existing(key_id)
        now = self.clock()
        ended = await asyncio.to_thread(self.store.end_key, key_id, revoked_at=now, expires_at=None)
        if ended:
            await self._changed(actor, "key_revoke", key_id, f"of {record.tenant}")
        return await self._existing(key_id)

    async def rotate(self, key_id: str, grace_s: Any, actor: str) -> NewKey:
        """A new key with the old one's tenant, scopes and settings; the old one keeps
        working for `grace_s` so its users can switch over."""
        if isinstance(grace_s, bool) or not isinstance(grace_s, int | float) or grace_s < 0:
            raise bad_input("'grace_s' must be a number of seconds >= 0")
        old = await self._existing(key_id)
        if not usable(old, self.clock()):
            raise SurgeError("key_ended", f"key {key_id} was revoked or has expired", 409)
        body = {**old.settings, "tenant": old.tenant, "scopes": list(old.scopes),
                "name": old.name}  # fmt: skip
        if old.expires_at is not None:
            body["expires_in_s"] = max(1.0, old.expires_at - self.clock())
        made = await self.create(body, actor)
        await asyncio.to_thread(
            self.store.end_key, key_id, revoked_at=None, expires_at=self.clock() + float(grace_s)
        )
        await self._changed(actor, "key_rotate", key_id, f"replaced by {made.record.id}")
        return made

    async def all_keys(self) -> list[KeyRecord]:
        return await asyncio.to_thread(self.store.list_keys)

    async def get(self, key_id: str) -> KeyRecord:
        return await self._existing(key_id)

    # -- following -------------------------------------------------------------------------

    async def reload(self) -> None:
        self.ring.replace(await asyncio.to_thread(self.store.list_keys))

    async def follow(self, key: str, doc: dict[str, Any], revision: int) -> bool:
        """The follower's hook for `KEYS_KEY`: some process changed a key."""
        await self.reload()
        return True

    def start(self) -> None:
        self._flusher = asyncio.create_task(self._flush_usage(), name="key-usage")

    async def stop(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            await asyncio.gather(self._flusher, return_exceptions=True)
        await self._record_usage()

    async def _flush_usage(self) -> None:
        while True:
            await asyncio.sleep(USAGE_FLUSH_S)
            await self._record_usage()

    async def _record_usage(self) -> None:
        used, self.ring.used = self.ring.used, {}
        try:
            await asyncio.to_thread(self.store.touch_keys, used)
        except Exception as exc:  # last use is a courtesy: never worth failing over
            log.warning("could not record when keys were last used: %s", exc)

    # -- helpers -----------------------------------------------------------------------------

    async def _existing(self, key_id: str) -> KeyRecord:
        record = await asyncio.to_thread(self.store.get_key, key_id)
        if record is None:
            raise not_found(f"no key with id {key_id!r}")
        return record

    async def _changed(self, actor: str, action: str, key_id: str, detail: str) -> None:
        now = self.clock()
        doc = {"key": key_id, "action": action, "at": now}
        await asyncio.to_thread(
            self.store.update_route, KEYS_KEY, lambda _: doc, actor=actor, action=action,
            reason=f"key {key_id} {detail}", now=now,
        )  # fmt: skip
        await self.reload()
        if self.announce is not None:
            await self.announce(KEYS_KEY)


def _scopes(raw: Any) -> tuple[str, ...]:
    if not isinstance(raw, list) or not raw or not all(isinstance(s, str) for s in raw):
        raise bad_input("'scopes' must be a non-empty list of strings")
    bad = [s for s in raw if s not in SCOPES and not _ENDPOINT_SCOPE.fullmatch(s)]
    if bad:
        raise bad_input(f"unknown scopes {bad[:5]}: use {', '.join(SCOPES)} or infer:<endpoint>")
    return tuple(dict.fromkeys(raw))  # deduplicated, in the order given


def _expiry(raw: Any, now: float) -> float | None:
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not 0 < raw <= 10 * 365 * 86400:
        raise bad_input("'expires_in_s' must be seconds in (0, 10 years]")
    return now + float(raw)


def _settings(body: dict[str, Any]) -> dict[str, Any]:
    settings: dict[str, Any] = {}
    priority = body.get("priority")
    if priority is not None:
        if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= 9:
            raise bad_input("'priority' must be a whole number in 0..9")
        settings["priority"] = priority
    limits = body.get("limits")
    if limits is not None:
        try:
            checked = RateLimitConfig.model_validate(limits)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "limits"
            raise bad_input(f"'limits.{where}': {first['msg']}") from None
        settings["limits"] = checked.model_dump(exclude_none=True)
    return settings
