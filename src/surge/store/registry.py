"""The registry: which model versions exist, what each endpoint routes to, and who changed it;
and beside it the human-review queue, whose labelled items are the feedback a retraining reads,
and what the processes sharing a registry coordinate through (store/cluster.py).

Every change of an endpoint's route is one transaction that writes the new state and
appends an audit entry, so the audit log and the live state can never disagree, and a
restarted server (or a second worker process) reads exactly what the last change left.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from surge.core.errors import SurgeError

if TYPE_CHECKING:
    from surge.store.keys import KeyRecord

# Table names are formatted into SQL, so the namespace must never carry anything but a name.
_NAMESPACE = re.compile(r"[a-z_][a-z0-9_]*")

# Computes an endpoint's new doc from its current one (None before the first change).
RouteUpdate = Callable[[dict[str, Any] | None], dict[str, Any]]
# The same, or None: nothing to change, so nothing is written (nor audited).
RouteChange = Callable[[dict[str, Any] | None], dict[str, Any] | None]
# A bandit answer awaiting feedback: (route, segment, arm, tenant), and with its request id.
PendingEntry = tuple[str, str, str, str | None]
PendingRow = tuple[str, str, str, str, str | None]


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
    # The route's revision after the change, for the process that made it; not part of
    # the log (None in entries read back from it).
    revision: int | None = field(default=None, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        del doc["revision"]
        return doc


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


@dataclass(frozen=True)
class ProcessRecord:
    """A surge process that shares the registry, as of its last heartbeat."""

    id: str  # the process's own id, unique across hosts
    host: str
    pid: int
    started_at: float  # unix seconds
    heartbeat_at: float  # unix seconds, the process's clock
    state: dict[str, Any]  # what it publishes: the route revisions it serves, its measurements

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class LeaseRecord:
    name: str
    holder: str  # the process that holds (or last held) it
    token: int  # the fencing token: larger every time the lease changes hands
    expires_at: float  # unix seconds; 0 once released

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class RegistryStore(Protocol):
    """Persistence for versions, routes and the audit log, and what the processes sharing
    them coordinate through (heartbeats, leases, pending feedback); every method blocks
    (call it from a worker thread) and is safe to call from any thread. A database that
    cannot be reached makes any method raise `store_unavailable` (503, retry after 1 s)."""

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

    def load_routes_with_revisions(self) -> dict[str, tuple[dict[str, Any], int]]:
        """Each route's doc with its revision, read together (one statement), so a process
        that follows the routes never pairs a doc with another write's revision."""
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
        fence: tuple[str, int] | None = None,
    ) -> AuditEntry:
        """Replace the endpoint's doc with `after` and audit it, atomically; concurrent
        callers (other threads or processes) are serialised, so no update is lost.

        With `fence=(lease, token)` the change is written only while that lease still
        holds that token and has not expired (checked in the same transaction); otherwise
        it raises `lease_lost` (409) and writes nothing."""
        ...

    def update_state(self, key: str, change: RouteUpdate, *, now: float) -> dict[str, Any]: ...

    def update_route(
        self,
        endpoint: str,
        change: RouteChange,
        *,
        actor: str,
        action: str,
        reason: str,
        now: float,
        fence: tuple[str, int] | None = None,
    ) -> AuditEntry | None:
        """`apply_change` with `after = change(before)` computed inside the transaction: a
        read-modify-write that another process cannot interleave with. A `change` that
        returns None leaves the route as it is: nothing is written, the revision stays,
        nothing is audited, and the result is None."""
        ...

    def append_audit(
        self,
        *,
        actor: str,
        action: str,
        endpoint: str | None,
        reason: str,
        now: float,
        before: dict[str, Any] | None = None,
        after: dict[str, Any] | None = None,
    ) -> AuditEntry:
        """An audit entry that changes no route: an event one process decided on its own
        (a mode switch), recorded beside the operators' changes."""
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

    def prune_reviews(
        self, *, endpoint: str, unlabelled_before: float, max_unlabelled: int, max_labelled: int
    ) -> dict[str, int]:
        """Bound the endpoint's queue: drop unlabelled items created before
        `unlabelled_before`, then all but the newest `max_unlabelled` unlabelled ones and
        all but the `max_labelled` most recently labelled ones. Labelled items outlive the
        retention (they are the retraining data) but not their cap. How many went, by why:
        `{"expired": n, "unlabelled_over_cap": m, "labelled_over_cap": k}`."""
        ...

    def heartbeat(
        self,
        process_id: str,
        host: str,
        pid: int,
        started_at: float,
        state: dict[str, Any],
        now: float,
    ) -> None:
        """Publish this process's row (created on its first heartbeat), stamped `now`."""
        ...

    def processes(self, since: float) -> list[ProcessRecord]:
        """The processes whose last heartbeat is at or after `since`, ordered by id."""
        ...

    def forget_process(self, process_id: str) -> None:
        """Remove a process's row: its clean shutdown."""
        ...

    def forget_processes_before(self, cutoff: float) -> int:
        """Remove the rows whose last heartbeat is older than `cutoff` (processes that died);
        how many."""
        ...

    def acquire_lease(self, name: str, holder: str, ttl_s: float, now: float) -> int | None:
        """Take or renew the lease `name` until `now + ttl_s`; its fencing token, or None
        while another holder's lease is valid. The token strictly grows each time the
        lease changes hands (1 for the first holder); a renewal of a valid lease keeps it,
        but a holder taking back its own expired or released lease gets a new one, since
        another process may have acted in between."""
        ...

    def release_lease(self, name: str, holder: str) -> None:
        """Make the lease available now, if `holder` holds it; the next holder's token is
        still larger."""
        ...

    def lease(self, name: str) -> LeaseRecord | None: ...

    def put_pending(self, entries: list[PendingRow], expires_at: float) -> None:
        """Remember `(request_id, route, segment, arm, tenant)` until `expires_at`, so the
        request's feedback can reach the arm at any process; a request id already there
        is replaced."""
        ...

    def take_pending(
        self, request_id: str, now: float, check: Callable[[PendingEntry], None] | None = None
    ) -> PendingEntry | None:
        """Remove and return `(route, segment, arm, tenant)` of a request that has not
        expired; of processes taking the same request at once, exactly one gets it. With
        `check`, the entry is removed only if `check(entry)` returns: it runs inside the
        transaction, and what it raises leaves the entry where it was and propagates."""
        ...

    def delete_expired_pending(self, now: float) -> int:
        """Forget the entries that expired before `now`; how many."""
        ...

    # -- client keys and shared secrets (store/keys.py) ---------------------------------------

    def create_key(self, record: KeyRecord) -> None: ...

    def list_keys(self) -> list[KeyRecord]: ...

    def get_key(self, key_id: str) -> KeyRecord | None: ...

    def end_key(self, key_id: str, *, revoked_at: float | None, expires_at: float | None) -> bool:
        """Revoke now (`revoked_at`), or expire at `expires_at` unless sooner; whether a
        live key was there to end."""
        ...

    def touch_keys(self, used: dict[str, float]) -> None: ...

    def shared_secret(self, name: str, make: Callable[[], str], now: float) -> str:
        """The namespace's secret `name`: made by the first caller, the same for all."""
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
    `<namespace>_audit`, `<namespace>_reviews`, `<namespace>_receipts`,
    `<namespace>_processes`, `<namespace>_leases`, `<namespace>_pending_feedback` and
    `<namespace>_schema_version`, so several stores (or test runs) can share one database.
    A database migrated by a newer surge is refused (`schema_too_new`); one that cannot
    be reached is `store_unavailable` (503), at open and on every call.
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
