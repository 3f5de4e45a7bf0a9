"""The registry in PostgreSQL: shared by every server of a cluster."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

import psycopg

from surge.core.errors import SurgeError
from surge.store.registry import redact
from surge.store.sql import SqlRegistryStore

T = TypeVar("T")

# At start-up a slow network gets time; a reconnect runs inside a store call (an admin
# request, a heartbeat), which should fail fast with a 503 rather than hang.
CONNECT_TIMEOUT_S = 10
RECONNECT_TIMEOUT_S = 2
# No store statement should take seconds: one that does waits on a lock a stuck process
# holds, or on an overloaded server, and its caller is better told (a 503) than stalled.
STATEMENT_TIMEOUT = "5s"
# A server that vanishes (host down, no TCP reset) never answers, and no server-side timeout
# fires: the kernel gives up on unacknowledged data after tcp_user_timeout, and keepalives
# find a silent peer while a reply is awaited. libpq options; a URL that sets one wins.
KEEPALIVES = {
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 2,
    "tcp_user_timeout": 10_000,  # ms
}


class PostgresRegistryStore(SqlRegistryStore):
    """One autocommit connection guarded by the base class's lock (admin operations are
    rare, so a pool would only hold idle connections); a write opens its own transaction."""

    placeholder = "%s"
    json_param = "CAST(%s AS JSONB)"
    json_type = "JSONB"
    real = "DOUBLE PRECISION"
    serial = "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY"
    # The route's row exists by then (inserted if missing), so every change of an endpoint
    # queues here; a fenced change locks the lease's row too, so the lease cannot change
    # hands between the check and the commit.
    lock_row = " FOR UPDATE"
    # Servers starting at once would otherwise migrate side by side (and even concurrent
    # CREATE TABLE IF NOT EXISTS can collide in the catalog); a lock per namespace, held
    # to the end of the migration's transaction, makes them take turns. The same key the
    # releases before schema versions took, so they wait for a migration too. Waiting for
    # another server's migration (or migrating a big table) may outlast the statement
    # timeout, so this transaction has none.
    migration_lock = (
        "SET LOCAL statement_timeout = 0",
        "SELECT pg_advisory_xact_lock(hashtext('{v}'))",
    )
    # Resolved through the search_path, as the store's unqualified table names are.
    table_exists = "SELECT COUNT(to_regclass(?))"

    def __init__(self, url: str, namespace: str = "surge") -> None:
        self.url = url
        super().__init__(namespace)

    def _connect(self, timeout_s: float = CONNECT_TIMEOUT_S) -> psycopg.Connection[Any]:
        defaults: dict[str, Any] = {"connect_timeout": timeout_s, **KEEPALIVES}
        if psycopg.pq.version() < 120000:  # tcp_user_timeout came with libpq 12
            del defaults["tcp_user_timeout"]
        options = {key: value for key, value in defaults.items() if key not in self.url}
        try:
            conn = psycopg.connect(self.url, autocommit=True, **options)
        except psycopg.ProgrammingError as exc:  # the URL itself does not parse
            why = _without_password(exc, self.url)
            raise SurgeError(
                "bad_config", f"registry_url {redact(self.url)!r} is not valid: {why}", 500
            ) from exc
        except psycopg.Error as exc:
            raise self._unavailable(exc) from exc
        try:
            conn.execute(f"SET statement_timeout = '{STATEMENT_TIMEOUT}'")
        except psycopg.Error as exc:
            conn.close()
            raise self._unavailable(exc) from exc
        return conn

    def _unavailable(self, exc: Exception) -> SurgeError:
        reason = str(exc).strip() or type(exc).__name__
        return SurgeError(
            "store_unavailable",
            f"cannot reach the registry at {redact(self.url)}: {reason}",
            503,
            retry_after_s=1.0,
        )

    def _location(self) -> str:
        return f"the registry at {redact(self.url)}"

    def _transaction(self, work: Callable[[Any], T]) -> T:
        with self._conn.transaction():
            return work(self._conn)

    def _attempt(self, operation: Callable[[], T]) -> T:
        """Run `operation`, reconnecting once if the connection was lost (a database restart
        or failover). A lost connection rolled its transaction back, so a retry is safe,
        except in the rare loss between COMMIT and its acknowledgement. A server that
        cannot be reached again, or that timed the statement out, is `store_unavailable`:
        the caller (an admin request, a heartbeat) can tell its client to retry."""
        try:
            return self._unless_unreachable(operation)
        except psycopg.OperationalError:
            if not self._lost():
                raise
        self._conn.close()
        self._conn = self._connect(RECONNECT_TIMEOUT_S)  # raises store_unavailable
        try:
            return self._unless_unreachable(operation)
        except psycopg.OperationalError as exc:
            if not self._lost():
                raise
            raise self._unavailable(exc) from exc

    def _unless_unreachable(self, operation: Callable[[], T]) -> T:
        try:
            return operation()
        except psycopg.errors.QueryCanceled as exc:  # the statement timeout, or a lock wait
            if self._lost():
                raise
            raise self._unavailable(exc) from exc

    def _lost(self) -> bool:
        return bool(self._conn.closed or self._conn.broken)


def _without_password(exc: Exception, url: str) -> str:
    """libpq quotes the part of a URL it could not parse, which may be the password."""
    text = str(exc)
    password = urlsplit(url).password
    if password:
        for form in {password, unquote(password)}:
            text = text.replace(form, "***")
    return text
