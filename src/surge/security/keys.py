"""Client API keys: their format, their hash, and the ring of live keys a process checks.

A key is `sgk_<id>_<secret>`: `id` (12 characters) is its visible prefix, the row the
registry keeps it under and what `surge keys list` and the audit name; `secret` is 32
random bytes. The registry stores only a salted PBKDF2-SHA256 of the whole key, so a
copy of the database does not hand out working keys. The hash is deliberately slow, so a
process checks a key once (off the event loop) and then remembers the SHA-256 of keys it
has verified: every later request with that key is one dictionary lookup.

Every process holds the same ring: a key change (create, revoke, rotate) bumps the
registry key `KEYS_KEY`, which the route follower watches like any route, so a revoked
key is refused by every process within one poll interval (0.5 s by default), at once
where Redis carries the notification.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
import string
from collections import OrderedDict
from dataclasses import dataclass

from surge.store.keys import KeyRecord

KEYS_KEY = "*keys*"  # the registry key whose revision changes with every key change
PREFIX = "sgk_"
ID_LENGTH = 12
_ID_ALPHABET = string.ascii_lowercase + string.digits
# 50k rounds take ~20 ms here: nothing on the request path (checked once per key and
# process), and enough that a stolen hash cannot be tried at speed.
PBKDF2_ROUNDS = 50_000
SCOPES = ("infer", "feedback", "receipts:read", "metrics", "gateway", "admin")
# Failed checks remembered, so a client repeating a bad key costs one lookup, not a hash.
MAX_REMEMBERED_FAILURES = 4096


@dataclass(frozen=True)
class NewKey:
    """A key as made: `token` is shown to its owner once and never stored."""

    token: str
    record: KeyRecord


def new_key_id() -> str:
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(ID_LENGTH))


def new_token(key_id: str) -> str:
    return f"{PREFIX}{key_id}_{secrets.token_urlsafe(32)}"


def key_id_of(token: str) -> str | None:
    """The id a presented key claims, or None when it does not have a key's shape."""
    if len(token) < len(PREFIX) + ID_LENGTH + 2 or not token.startswith(PREFIX):
        return None
    key_id = token[len(PREFIX) : len(PREFIX) + ID_LENGTH]
    if token[len(PREFIX) + ID_LENGTH] != "_" or not all(c in _ID_ALPHABET for c in key_id):
        return None
    return key_id


def hash_token(token: str, rounds: int = PBKDF2_ROUNDS) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", token.encode("utf-8"), salt, rounds)
    return f"pbkdf2_sha256${rounds}${_b64(salt)}${_b64(digest)}"


def token_matches(token: str, stored: str) -> bool:
    try:
        scheme, rounds, salt, digest = stored.split("$")
        if scheme != "pbkdf2_sha256":
            return False
        expected = base64.urlsafe_b64decode(digest + "==")
        actual = hashlib.pbkdf2_hmac(
            "sha256", token.encode("utf-8"), base64.urlsafe_b64decode(salt + "=="), int(rounds)
        )
    except ValueError:
        return False
    return hmac.compare_digest(actual, expected)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def fingerprint(token: str) -> bytes:
    """What the ring remembers a checked key by: fast, and not the key itself."""
    return hashlib.sha256(token.encode("utf-8")).digest()


def usable(record: KeyRecord, now: float) -> bool:
    return record.revoked_at is None and (record.expires_at is None or record.expires_at > now)


class KeyRing:
    """The keys this process accepts, as the registry last said (`replace`), and the
    outcome of checking each presented key (one slow hash per key and process)."""

    def __init__(self, verify_concurrency: int = 2) -> None:
        self.records: dict[str, KeyRecord] = {}
        self._verified: dict[bytes, str] = {}  # fingerprint -> key id
        self._failed: OrderedDict[bytes, None] = OrderedDict()
        self._verifying = asyncio.Semaphore(verify_concurrency)
        self.used: dict[str, float] = {}  # key id -> last use (unix s), flushed to the store

    def replace(self, records: list[KeyRecord]) -> None:
        """The registry's keys now. A key whose hash changed (or that is gone) must be
        checked again; a failure may have been for a key that now exists."""
        before = self.records
        self.records = {r.id: r for r in records}
        self._verified = {
            mark: key_id
            for mark, key_id in self._verified.items()
            if key_id in self.records
            and key_id in before
            and before[key_id].hash == self.records[key_id].hash
        }
        self._failed.clear()

    def known(self, token: str) -> KeyRecord | None:
        """The key's record if this exact key was verified before (the fast path)."""
        key_id = self._verified.get(fingerprint(token))
        return None if key_id is None else self.records.get(key_id)

    async def verify(self, token: str) -> KeyRecord | None:
        """The key's record, checking its hash (off the event loop) if this process has
        not seen the key before; None for a key that is not one of ours."""
        found = self.known(token)
        if found is not None:
            return found
        key_id = key_id_of(token)
        record = self.records.get(key_id) if key_id else None
        mark = fingerprint(token)
        if record is None or mark in self._failed:
            return None
        async with self._verifying:  # bounded: a flood of wrong keys cannot take every core
            good = await asyncio.to_thread(token_matches, token, record.hash)
        if not good:
            self._failed[mark] = None
            if len(self._failed) > MAX_REMEMBERED_FAILURES:
                self._failed.popitem(last=False)
            return None
        if self.records.get(record.id) is record:  # not replaced while we hashed
            self._verified[mark] = record.id
        return record
