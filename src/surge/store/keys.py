"""Client API keys and the namespace's shared secrets, over SQL and mixed into
`SqlRegistryStore` like the cluster tables.

A key's row holds its visible id (the prefix of the key a client shows), its tenant and
scopes, and a slow salted hash of the key: never the key itself (security/keys.py makes
and checks the hash). A revoked key keeps its row, so the audit and `surge keys list`
can still name it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from surge.store.schema import decode_json, encode_json

T = TypeVar("T")

_KEY_COLUMNS = (
    "id, name, tenant, CAST(scopes AS TEXT), hash, created_at, created_by, expires_at, "
    "revoked_at, last_used_at, CAST(settings AS TEXT)"
)


@dataclass(frozen=True)
class KeyRecord:
    id: str  # the key's visible prefix
    name: str  # what it is for, as its creator put it
    tenant: str
    scopes: tuple[str, ...]
    hash: str  # security/keys.py's slow salted hash of the whole key
    created_at: float
    created_by: str
    expires_at: float | None = None
    revoked_at: float | None = None
    last_used_at: float | None = None
    # Per-key settings: its rate limits (RateLimitConfig fields) and priority.
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """What the admin API and `surge keys list` show: everything but the hash."""
        shown = asdict(self)
        del shown["hash"]
        shown["scopes"] = list(self.scopes)
        return shown


class KeyTables:
    """The key methods of the store; `SqlRegistryStore` supplies the plumbing below."""

    if TYPE_CHECKING:

        def _sql(self, text: str) -> str: ...

        def _read(self, work: Callable[[Any], T]) -> T: ...

        def _write(self, work: Callable[[Any], T]) -> T: ...

    def create_key(self, record: KeyRecord) -> None:
        sql = self._sql(
            "INSERT INTO {k} (id, name, tenant, scopes, hash, created_at, created_by, "
            "expires_at, revoked_at, last_used_at, settings) "
            "VALUES (?, ?, ?, {j}, ?, ?, ?, ?, ?, ?, {j})"
        )
        params = (
            record.id, record.name, record.tenant, encode_json(list(record.scopes)),
            record.hash, record.created_at, record.created_by, record.expires_at,
            record.revoked_at, record.last_used_at, encode_json(record.settings),
        )  # fmt: skip
        self._write(lambda conn: conn.execute(sql, params))

    def list_keys(self) -> list[KeyRecord]:
        sql = self._sql(f"SELECT {_KEY_COLUMNS} FROM {{k}} ORDER BY created_at, id")
        return [_key_record(row) for row in self._read(lambda conn: conn.execute(sql).fetchall())]

    def get_key(self, key_id: str) -> KeyRecord | None:
        sql = self._sql(f"SELECT {_KEY_COLUMNS} FROM {{k}} WHERE id = ?")
        row = self._read(lambda conn: conn.execute(sql, (key_id,)).fetchone())
        return None if row is None else _key_record(row)

    def end_key(self, key_id: str, *, revoked_at: float | None, expires_at: float | None) -> bool:
        """Revoke a key now, or (rotation) let it expire at `expires_at` unless it expires
        sooner; whether a live key of that id was there to end."""
        if revoked_at is not None:
            sql = self._sql("UPDATE {k} SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL")
            params: tuple[Any, ...] = (revoked_at, key_id)
        else:
            sql = self._sql(
                "UPDATE {k} SET expires_at = ? WHERE id = ? AND revoked_at IS NULL "
                "AND (expires_at IS NULL OR expires_at > ?)"
            )
            params = (expires_at, key_id, expires_at)
        return bool(self._write(lambda conn: conn.execute(sql, params).rowcount))

    def touch_keys(self, used: dict[str, float]) -> None:
        """Record when keys were last used (batched: a process writes these every minute)."""
        if not used:
            return
        sql = self._sql(
            "UPDATE {k} SET last_used_at = ? WHERE id = ? "
            "AND (last_used_at IS NULL OR last_used_at < ?)"
        )
        rows = [(at, key_id, at) for key_id, at in sorted(used.items())]
        self._write(lambda conn: conn.cursor().executemany(sql, rows))

    def shared_secret(self, name: str, make: Callable[[], str], now: float) -> str:
        """The namespace's secret called `name`, made with `make()` by whichever process
        asks first; every later caller (any process) reads that same one."""
        insert = self._sql(
            "INSERT INTO {x} (name, value, created_at) VALUES (?, ?, ?) "
            "ON CONFLICT (name) DO NOTHING"
        )
        select = self._sql("SELECT value FROM {x} WHERE name = ?")

        def work(conn: Any) -> str:
            conn.execute(insert, (name, make(), now))
            return str(conn.execute(select, (name,)).fetchone()[0])

        return self._write(work)


def _key_record(row: Any) -> KeyRecord:
    (key_id, name, tenant, scopes, hashed, created_at, created_by, expires_at, revoked_at,
     last_used_at, settings) = row  # fmt: skip
    return KeyRecord(
        id=key_id,
        name=name,
        tenant=tenant,
        scopes=tuple(decode_json(scopes)),
        hash=hashed,
        created_at=float(created_at),
        created_by=created_by,
        expires_at=_maybe(expires_at),
        revoked_at=_maybe(revoked_at),
        last_used_at=_maybe(last_used_at),
        settings=decode_json(settings) or {},
    )


def _maybe(value: Any) -> float | None:
    return None if value is None else float(value)
