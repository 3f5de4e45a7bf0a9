"""Fixtures the store tests share: the real PostgreSQL where it runs."""

from __future__ import annotations

import pytest

# Trust auth on 127.0.0.1; the role is `postgres` on most machines, `root` on some.
POSTGRES_URLS = (
    "postgresql://postgres@127.0.0.1:5432/test",
    "postgresql://root@127.0.0.1:5432/test",
)


@pytest.fixture(scope="session")
def postgres_url() -> str:
    psycopg = pytest.importorskip("psycopg")
    errors = []
    for url in POSTGRES_URLS:
        try:
            with psycopg.connect(url, connect_timeout=3):
                return url
        except psycopg.OperationalError as exc:
            errors.append(str(exc).strip())
    pytest.skip(f"PostgreSQL not reachable at {POSTGRES_URLS[0]}: {'; '.join(errors)}")
