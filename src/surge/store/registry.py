"""The registry: which model versions exist, what each endpoint routes to, and who changed it;
and beside it the human-review queue, whose labelled items are the feedback a retraining reads.

Every change of an endpoint's route is one transaction that writes the new state and
appends an audit entry, so the audit log and the live state can never disagree, and a
restarted server (or a second worker process) reads exactly what the last change left.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from surge.core.errors import SurgeError

# Table names are formatted into SQL, so the namespace must never carry anything but a name.
_NAMESPACE = re.compile(r"[a-z_][a-z0-9_]*")

# Computes an endpoint's new doc from its current one (None before the first change).
RouteUpdate = Callable[[dict[str, Any] | None], dict[str, Any]]


@dataclass(frozen=True)
class VersionRecord:
    model: str
    version: str
    checksum: str  # sha256 hex over the version's files (the caller computes it)
    registered_at: float  # unix seconds, wall clock, passed in by the caller
    registered_by: str  # the admin key's name, or "config"


@dataclass(frozen=True)
class AuditEntry:
    id: int  # increasing: the order of the changes
    at: float  # unix seconds
    actor: str  # admin key name, "config", or "controller"
    action: str  # "deploy", "promote", "rollback", "advance", "register", ...
    endpoint: str | None
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ReviewItem:
    """An answer the last model was unsure of, waiting for (or given) a human's label."""

    id: int  # increasing: the order items were queued in
    endpoint: str  # the public endpoint the client called
    request_id: str
    created_at: float  # unix seconds, passed in by the caller
    inputs: dict[str, Any]  # the request's input tensors, as lists
    answer: dict[str, Any]  # what the client was answered
    confidence: float
    served_by: str  # model@version that produced the answer
    label: Any | None  # the human's label (any JSON but null) once reviewed
    labelled_by: str | None
    labelled_at: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class RegistryStore(Protocol):
    """Persistence for versions, routes and the audit log; every method blocks (call it
    from a worker thread) and is safe to call from any thread."""

    def register_version(
        self, model: str, version: str, checksum: str, actor: str, now: float
    ) -> VersionRecord:
        """Pin a version's checksum. Registering the same checksum again returns the existing
        record; another checksum under the same version raises `checksum_conflict` (409)."""
        ...

    def get_version(self, model: str, version: str) -> VersionRecord | None: ...

    def list_versions(self, model: str | None = None) -> list[VersionRecord]:
        """Ordered by model, then registration time."""
        ...

    def load_route(self, endpoint: str) -> dict[str, Any] | None: ...

    def load_routes(self) -> dict[str, dict[str, Any]]: ...

    def route_revisions(self) -> dict[str, int]:
        """Each route's revision (the keys of `load_routes`): every write of a route adds
        one, so a process that remembers them can tell which routes changed since."""
        ...

    def apply_change(
        self,
        endpoint: str,
        after: dict[str, Any],
        *,
        actor: str,
        action: str,
        reason: str,
        now: float,
    ) -> AuditEntry:
        """Replace the endpoint's doc with `after` and audit it, atomically; concurrent
        callers (other threads or processes) are serialised, so no update is lost."""
        ...

    def update_state(self, key: str, change: RouteUpdate, *, now: float) -> dict[str, Any]: ...

    def update_route(
        self,
        endpoint: str,
        change: RouteUpdate,
        *,
        actor: str,
        action: str,
        reason: str,
        now: float,
    ) -> AuditEntry:
        """`apply_change` with `after = change(before)` computed inside the transaction: a
        read-modify-write that another process cannot interleave with."""
        ...

    def audit(
        self, endpoint: str | None = None, limit: int = 100, action: str | None = None
    ) -> list[AuditEntry]:
        """Newest first."""
        ...

    def add_review(
        self,
        *,
        endpoint: str,
        request_id: str,
        inputs: dict[str, Any],
        answer: dict[str, Any],
        confidence: float,
        served_by: str,
        now: float,
    ) -> ReviewItem:
        """Queue an answer for human review; a value that is not JSON is `invalid_input`."""
        ...

    def list_reviews(
        self, *, endpoint: str | None = None, pending: bool | None = True, limit: int = 100
    ) -> list[ReviewItem]:
        """Pending items oldest first (the queue's order); `pending=False` the labelled ones
        and `pending=None` all of them, newest first."""
        ...

    def label_review(self, item_id: int, label: Any, *, actor: str, now: float) -> ReviewItem:
        """Record a human's label. The first label wins, across threads and processes: a
        missing item is `review_not_found` (404), a labelled one `already_labelled` (409)."""
        ...

    def labelled_feedback(
        self, *, endpoint: str | None = None, limit: int = 1000
    ) -> list[ReviewItem]:
        """Labelled items, most recently labelled first: what a retraining job reads."""
        ...

    def count_reviews(self, endpoint: str | None = None) -> dict[str, int]:
        """`{"pending": n, "labelled": m}`."""
        ...

    def close(self) -> None: ...


def checksum_conflict(model: str, version: str, stored: str, offered: str) -> SurgeError:
    return SurgeError(
        "checksum_conflict",
        f"{model} version {version} is registered with checksum {stored[:12]}... but its "
        f"files now hash to {offered[:12]}...; a changed model needs a new version number",
        409,
    )


def open_store(url: str, namespace: str = "surge") -> RegistryStore:
    """Open the store `url` names, creating or migrating its schema (`migrations.py`).

    `sqlite:///<path>` (relative or, with a fourth slash, absolute), `sqlite://:memory:`,
    `:memory:` or a bare path open SQLite; `postgresql://...` or `postgres://...` open
    PostgreSQL. Tables are named `<namespace>_versions`, `<namespace>_routes`,
    `<namespace>_audit`, `<namespace>_reviews`, `<namespace>_receipts` and
    `<namespace>_schema_version`, so several stores (or test runs) can share one database.
    A database migrated by a newer surge is refused (`schema_too_new`).
    """
    if not _NAMESPACE.fullmatch(namespace):
        raise SurgeError(
            "bad_config",
            f"registry namespace must match [a-z_][a-z0-9_]*, got {namespace!r}",
            500,
        )
    if url.startswith(("postgresql://", "postgres://")):
        # Imported here: psycopg is an optional extra, needed only by PostgreSQL users.
        from surge.store.postgres import PostgresRegistryStore

        return PostgresRegistryStore(url, namespace)
    path = sqlite_path(url)
    from surge.store.sqlite import SqliteRegistryStore

    return SqliteRegistryStore(path, namespace)


def sqlite_path(url: str) -> str:
    """The file (or ":memory:") a SQLite URL names; anything unrecognised is a config error."""
    if url in (":memory:", "sqlite://:memory:", "sqlite:///:memory:"):
        return ":memory:"
    if url.startswith("sqlite:///") and len(url) > len("sqlite:///"):
        return url[len("sqlite:///") :]
    if url and "://" not in url and not url.startswith("sqlite:"):
        return url
    raise SurgeError(
        "bad_config",
        f"registry_url {redact(url)!r} is not a store surge knows: use sqlite:///<path>, "
        "sqlite://:memory:, a file path, or postgresql://user@host:port/db",
        500,
    )


def redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    return re.sub(r"(//[^/:@]*):[^/@]*@", r"\1:***@", url)
