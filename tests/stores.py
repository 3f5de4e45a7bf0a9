"""A registry store of a fresh namespace for a test, on SQLite or the real PostgreSQL
(skipped with the reason when it is not reachable), its tables dropped afterwards."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from surge.store import open_store

POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
TABLES = (
    *("audit", "routes", "versions", "reviews", "receipts", "schema_version"),
    *("processes", "leases", "pending_feedback", "keys", "secrets"),
)


@contextlib.contextmanager
def fresh_store(kind: str, tmp_path: Path, prefix: str = "t") -> Iterator[Any]:
    namespace = f"{prefix}_{uuid.uuid4().hex[:12]}"
    url = str(tmp_path / "r.db")
    if kind == "postgresql":
        psycopg = pytest.importorskip("psycopg")
        try:
            psycopg.connect(POSTGRES_URL, connect_timeout=3).close()
        except psycopg.OperationalError as exc:
            pytest.skip(f"PostgreSQL is not reachable: {exc}")
        url = POSTGRES_URL
    store = open_store(url, namespace)
    try:
        yield store
    finally:
        store.close()
        if kind == "postgresql":
            import psycopg

            with psycopg.connect(url, autocommit=True) as conn:
                tables = ", ".join(f"{namespace}_{t}" for t in TABLES)
                conn.execute("DROP TABLE IF EXISTS " + tables)
