"""The human-review queue over SQL, mixed into `SqlRegistryStore`: the same connection, lock,
transactions and dialect as the registry, so both backends get it from one set of statements.

An item is pending while its label is NULL. Labelling is one conditional UPDATE
(`... WHERE label IS NULL`), so of two reviewers racing on one item, in one process or
several, exactly one changes the row and the other is told who was first.

The queue is bounded (`prune_reviews`, run in the background): anyone who can call a
cascade can add to it, so unlabelled items go after a retention and past a cap (the
newest kept). Labelled items are the retraining data and cost a human's time, so age
alone never removes them: only their own cap does, the least recently labelled first,
and a flood of unlabelled rows can never push them out.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from surge.core.errors import SurgeError, bad_input
from surge.store.registry import ReviewItem
from surge.store.schema import decode_json, encode_json

T = TypeVar("T")

# Read as text from both backends: psycopg would hand back a JSONB string label already
# parsed, indistinguishable from JSON text that still needs parsing.
_REVIEW_COLUMNS = (
    "id, endpoint, request_id, created_at, CAST(inputs AS TEXT), CAST(answer AS TEXT), "
    "confidence, served_by, CAST(label AS TEXT), labelled_by, labelled_at"
)
# An escaped NUL in JSON text: \u0000 after an even number of backslashes.
_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")
_PENDING = {True: "label IS NULL", False: "label IS NOT NULL", None: None}


class ReviewQueue:
    """The review methods of the store; `SqlRegistryStore` supplies the plumbing below."""

    if TYPE_CHECKING:

        def _sql(self, text: str) -> str: ...

        def _read(self, work: Callable[[Any], T]) -> T: ...

        def _write(self, work: Callable[[Any], T]) -> T: ...

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
        confidence = float(confidence)
        if not math.isfinite(confidence):  # SQLite would store NaN as NULL
            raise bad_input(f"a review's confidence must be a finite number, got {confidence}")
        sql = self._sql(
            "INSERT INTO {q} (endpoint, request_id, created_at, inputs, answer, confidence, "
            f"served_by) VALUES (?, ?, ?, {{j}}, {{j}}, ?, ?) RETURNING {_REVIEW_COLUMNS}"
        )
        params = (
            endpoint,
            request_id,
            float(now),
            _json("inputs", inputs),
            _json("answer", answer),
            confidence,
            served_by,
        )
        # Built from the row as stored: a copy, not the caller's mutable dicts.
        return _review_item(self._write(lambda conn: conn.execute(sql, params).fetchone()))

    def list_reviews(
        self, *, endpoint: str | None = None, pending: bool | None = True, limit: int = 100
    ) -> list[ReviewItem]:
        # The queue is worked oldest first; a history is read newest first.
        order = "created_at, id" if pending else "created_at DESC, id DESC"
        return self._select_reviews(endpoint, _PENDING[pending], order, limit)

    def label_review(self, item_id: int, label: Any, *, actor: str, now: float) -> ReviewItem:
        encoded = _json("label", label)  # never NULL: NULL is what marks an item pending

        def work(conn: Any) -> ReviewItem:
            row = conn.execute(
                self._sql(
                    "UPDATE {q} SET label = {j}, labelled_by = ?, labelled_at = ? "
                    f"WHERE id = ? AND label IS NULL RETURNING {_REVIEW_COLUMNS}"
                ),
                (encoded, actor, float(now), item_id),
            ).fetchone()
            if row is not None:
                return _review_item(row)
            found = conn.execute(
                self._sql("SELECT labelled_by, labelled_at FROM {q} WHERE id = ?"), (item_id,)
            ).fetchone()
            if found is None:
                raise SurgeError("review_not_found", f"no review item {item_id}", 404)
            by, at = found
            when = datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds")
            raise SurgeError(
                "already_labelled",
                f"review {item_id} was already labelled by {by} at {when}; the first label stands",
                409,
            )

        return self._write(work)

    def labelled_feedback(
        self, *, endpoint: str | None = None, limit: int = 1000
    ) -> list[ReviewItem]:
        return self._select_reviews(endpoint, _PENDING[False], "labelled_at DESC, id DESC", limit)

    def count_reviews(self, endpoint: str | None = None) -> dict[str, int]:
        where, params = ("WHERE endpoint = ?", (endpoint,)) if endpoint is not None else ("", ())
        sql = self._sql(f"SELECT COUNT(*) - COUNT(label), COUNT(label) FROM {{q}} {where}")
        pending, labelled = self._read(lambda conn: conn.execute(sql, params).fetchone())
        return {"pending": int(pending), "labelled": int(labelled)}

    def prune_reviews(
        self, *, endpoint: str, unlabelled_before: float, max_unlabelled: int, max_labelled: int
    ) -> dict[str, int]:
        # Three short transactions rather than one long one: each holds the writers'
        # lock only for its own statement.
        expired = self._sql(
            "DELETE FROM {q} WHERE endpoint = ? AND label IS NULL AND created_at < ?"
        )
        over = (
            "DELETE FROM {{q}} WHERE endpoint = ? AND {state} AND id NOT IN "
            "(SELECT id FROM {{q}} WHERE endpoint = ? AND {state} ORDER BY {order} LIMIT ?)"
        )
        unlabelled = self._sql(over.format(state=_PENDING[True], order="created_at DESC, id DESC"))
        labelled = self._sql(over.format(state=_PENDING[False], order="labelled_at DESC, id DESC"))

        def delete(sql: str, params: tuple[Any, ...]) -> int:
            return int(self._write(lambda conn: conn.execute(sql, params).rowcount))

        return {
            "expired": delete(expired, (endpoint, float(unlabelled_before))),
            "unlabelled_over_cap": delete(unlabelled, (endpoint, endpoint, max_unlabelled)),
            "labelled_over_cap": delete(labelled, (endpoint, endpoint, max_labelled)),
        }

    def _select_reviews(
        self, endpoint: str | None, state: str | None, order: str, limit: int
    ) -> list[ReviewItem]:
        conditions = [c for c in ("endpoint = ?" if endpoint is not None else None, state) if c]
        where = f"WHERE {' AND '.join(conditions)} " if conditions else ""
        sql = self._sql(f"SELECT {_REVIEW_COLUMNS} FROM {{q}} {where}ORDER BY {order} LIMIT ?")
        params = (*((endpoint,) if endpoint is not None else ()), max(0, limit))
        rows = self._read(lambda conn: conn.execute(sql, params).fetchall())
        return [_review_item(row) for row in rows]


def _json(field: str, value: Any) -> str:
    try:
        encoded = encode_json(value)
    except (TypeError, ValueError) as exc:
        raise bad_input(f"a review's {field} must be JSON (no NaN or infinity): {exc}") from exc
    if encoded is None:
        raise bad_input(f"a review's {field} must not be null")
    # PostgreSQL's JSONB cannot hold a NUL character; refuse it on SQLite too.
    if _NUL.search(encoded):
        raise bad_input(f"a review's {field} must not contain a NUL character")
    return encoded


def _review_item(row: Any) -> ReviewItem:
    item_id, endpoint, request_id, created_at, inputs, answer, confidence, served_by = row[:8]
    label, labelled_by, labelled_at = row[8:]
    return ReviewItem(
        item_id,
        endpoint,
        request_id,
        float(created_at),
        decode_json(inputs),
        decode_json(answer),
        float(confidence),
        served_by,
        decode_json(label),
        labelled_by,
        None if labelled_at is None else float(labelled_at),
    )
