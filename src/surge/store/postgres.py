"""The registry in PostgreSQL: shared by every server of a cluster."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import psycopg

from surge.core.errors import SurgeError
from surge.store.registry import redact
from surge.store.sql import SqlRegistryStore

T = TypeVar("T")

CONNECT_TIMEOUT_S = 10


class PostgresRegistryStore(SqlRegistryStore):
    """One autocommit connection guarded by the base class's lock (admin operations are
    rare, so a pool would only hold idle connections); a write opens its own transaction."""

    placeholder = "%s"
    json_param = "CAST(%s AS JSONB)"
    json_type = "JSONB"
    real = "DOUBLE PRECISION"
    serial = "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY"
    # The row exists by then (inserted if missing), so every change of an endpoint queues here.
    lock_route = " FOR UPDATE"
    # Servers starting at once would otherwise migrate side by side (and even concurrent
    # CREATE TABLE IF NOT EXISTS can collide in the catalog); a lock per namespace, held
    # to the end of the migration's transaction, makes them take turns. The same key the
    # releases before schema versions took, so they wait for a migration too.
    migration_lock = ("SELECT pg_advisory_xact_lock(hashtext('{v}'))",)
    # Resolved through the search_path, as the store's unqualified table names are.
    table_exists = "SELECT COUNT(to_regclass(?))"

    def __init__(self, url: str, namespace: str = "surge") -> None:
        self.url = url
        super().__init__(namespace)

    def _connect(self) -> psycopg.Connection[Any]:
        options = {} if "connect_timeout" in self.url else {"connect_timeout": CONNECT_TIMEOUT_S}
        try:
            return psycopg.connect(self.url, autocommit=True, **options)
        except psycopg.ProgrammingError as exc:  # the URL itself does not parse
            raise SurgeError(
                "bad_config", f"registry_url {redact(self.url)!r} is not valid: {exc}", 500
            ) from exc
        except psycopg.Error as exc:
            raise SurgeError(
                "store_unavailable",
                f"cannot reach the registry at {redact(self.url)}: {exc}",
                503,
            ) from exc

    def _location(self) -> str:
        return f"the registry at {redact(self.url)}"

    def _transaction(self, work: Callable[[Any], T]) -> T:
        with self._conn.transaction():
            return work(self._conn)

    def _attempt(self, operation: Callable[[], T]) -> T:
        """Run `operation`, reconnecting once if the connection was lost (a database restart
        or failover). A lost connection rolled its transaction back, so a retry is safe,
        except in the rare loss between COMMIT and its acknowledgement."""
        try:
            return operation()
        except psycopg.OperationalError:
            if not (self._conn.closed or self._conn.broken):
                raise
        self._conn.close()
        self._conn = self._connect()
        return operation()
