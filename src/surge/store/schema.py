"""The registry's tables, in SQL both SQLite and PostgreSQL accept.

`{v}`, `{r}` and `{a}` are the namespaced table names; `{real}`, `{json_type}` and
`{serial}` the column types each backend spells its own way.
"""

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS {v} (
        model TEXT NOT NULL,
        version TEXT NOT NULL,
        checksum TEXT NOT NULL,
        registered_at {real} NOT NULL,
        registered_by TEXT NOT NULL,
        PRIMARY KEY (model, version))""",
    # doc is NULL only in a row a change inserts to lock on, inside the transaction that
    # then writes the doc, so no committed row keeps a NULL doc.
    """CREATE TABLE IF NOT EXISTS {r} (
        endpoint TEXT PRIMARY KEY,
        doc {json_type},
        updated_at {real} NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS {a} (
        id {serial},
        recorded_at {real} NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        endpoint TEXT,
        before_doc {json_type},
        after_doc {json_type},
        reason TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS {a}_by_endpoint ON {a} (endpoint, id)",
)
