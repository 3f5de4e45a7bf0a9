"""Bringing a store's database to the schema this code knows (`schema.MIGRATIONS`), when
the store opens.

`{s}` holds a row per applied migration. The whole upgrade is one write transaction
that the backend makes exclusive (SQLite: BEGIN IMMEDIATE; PostgreSQL: an advisory
lock per namespace), so processes opening the same database at once take turns and the
later ones find nothing left to do; and a migration that fails leaves the database as
it was, since both databases roll DDL back with the transaction.
"""

from __future__ import annotations

import logging
import string
import time
from collections.abc import Callable
from typing import Any

from surge.core.errors import SurgeError
from surge.store.schema import INITIAL_COLUMNS, MIGRATIONS, TABLES

log = logging.getLogger("surge.store")

LATEST = MIGRATIONS[-1].version
# `MIGRATIONS[found:]` is what a database at version `found` still needs.
assert [m.version for m in MIGRATIONS] == list(range(1, LATEST + 1))

# Its shape never changes: a surge of any release must be able to read the version
# to tell whether it may use the database at all.
VERSION_TABLE = """CREATE TABLE IF NOT EXISTS {s} (
    version INTEGER PRIMARY KEY,
    description TEXT NOT NULL,
    applied_at {real} NOT NULL)"""


def migrate(conn: Any, sql: Callable[[str], str], exists: Callable[[str], bool], where: str) -> int:
    """Apply what the database lacks, inside the caller's exclusive transaction; return
    the version it was at (0: new, or made before schema versions).

    `sql` formats a statement for the backend (table names, types, placeholders),
    `exists` tells whether the table under a key of `schema.TABLES` is there, and
    `where` names the database in messages.
    """
    conn.execute(sql(VERSION_TABLE))
    (found,) = conn.execute(sql("SELECT MAX(version) FROM {s}")).fetchone()
    found = int(found or 0)
    if found > LATEST:
        raise SurgeError(
            "schema_too_new",
            f"{where} is at schema version {found}, but this surge knows versions up to "
            f"{LATEST}: a newer surge has migrated it. Run that release (or a later one) "
            "against it, or point registry_url at another database; this one will not "
            "touch a schema it does not know.",
            500,
        )
    if found == 0:
        existing = _check_unversioned(conn, sql, exists, where)
    else:
        existing = True
        _recreate_missing(conn, sql, exists, found, where)
    now = time.time()
    for migration in MIGRATIONS[found:]:
        for statement in migration.statements:
            conn.execute(sql(statement))
        conn.execute(
            sql("INSERT INTO {s} (version, description, applied_at) VALUES (?, ?, ?)"),
            (migration.version, migration.description, now),
        )
        if existing and migration.version > 1:  # news: not a new database, nor a stamp
            log.info(
                "%s: migrated to schema version %d: %s",
                where,
                migration.version,
                migration.description,
            )
    return found


def _check_unversioned(
    conn: Any, sql: Callable[[str], str], exists: Callable[[str], bool], where: str
) -> bool:
    """Tables without a version are a release's from before schema versions: version 1,
    since migration 1 is exactly what those releases created. Refuse tables that lack a
    column of it rather than stamp them and let a later migration meet the surprise.
    Whether there were any tables."""
    # The tables of version 1 only: a later migration's table in a database without a
    # version was not made by a release, and is left for that migration to trip over.
    present = [key for key in INITIAL_COLUMNS if exists(key)]
    for key in present:
        cursor = conn.execute(sql(f"SELECT * FROM {{{key}}} WHERE 1 = 0"))
        columns = {column[0] for column in cursor.description}
        missing = [column for column in INITIAL_COLUMNS[key] if column not in columns]
        if missing:
            raise SurgeError(
                "schema_mismatch",
                f"{where}: table {sql('{' + key + '}')} has no schema version and lacks "
                f"column(s) {', '.join(missing)}, so it was not made by a surge release and "
                "surge will not guess how to migrate it. Move it aside, or use another "
                "database or namespace.",
                500,
            )
    if present:
        log.info("%s: tables from before schema versions; stamping them as version 1", where)
    return bool(present)


def _recreate_missing(
    conn: Any, sql: Callable[[str], str], exists: Callable[[str], bool], found: int, where: str
) -> None:
    """A table dropped by hand (the receipts, say, to forget them all at once) comes back
    empty at the version's shape, as CREATE TABLE IF NOT EXISTS on every open used to
    bring it back: by replaying the applied statements that name that table alone."""
    for key in TABLES:
        statements = [
            statement
            for migration in MIGRATIONS[:found]
            for statement in migration.statements
            if _tables_named(statement) == {key}
        ]
        # No statement: a table of a later migration, not missing but not due yet.
        if not statements or exists(key):
            continue
        log.warning("%s: table %s is missing; recreating it empty", where, sql("{" + key + "}"))
        for statement in statements:
            conn.execute(sql(statement))


def _tables_named(statement: str) -> set[str]:
    fields = {field for _, field, _, _ in string.Formatter().parse(statement) if field}
    return fields & set(TABLES)
