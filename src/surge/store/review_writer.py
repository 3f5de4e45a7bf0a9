"""Cascade review items, written off the request path (see `background_writer`).

A cascade's answer is ready before its doubtful rows are stored for review; the request
only hands them over. Each record keeps its row's arrays as they are: turning them into
JSON costs time per element, so it happens in the writer's thread, not on the event loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from surge.store.background_writer import BackgroundWriter
from surge.store.registry import RegistryStore

# Reviews are for humans, who label a few items a minute: a thousand unwritten items is
# minutes of a database outage at a high doubt rate, while the memory they hold stays
# bounded (a thousand rows' inputs and answers).
CAPACITY = 1000
BATCH_SIZE = 50  # inserts per thread hop: a healthy database takes them in milliseconds
WRITE_TIMEOUT_S = 2.0  # per batch; a database slower than this is in trouble, not busy
DRAIN_S = 5.0  # at shutdown, after the last request has been answered
METRIC = "surge_review_items_dropped"  # exported with _total and a `reason` label


@dataclass(frozen=True)
class PendingReview:
    endpoint: str
    request_id: str
    inputs: dict[str, Any]  # the row of each tensor: an array, a scalar or bytes
    answer: dict[str, Any]
    confidence: float
    served_by: str
    now: float


def review_writer(store: RegistryStore) -> BackgroundWriter[PendingReview]:
    def write(item: PendingReview) -> None:
        store.add_review(
            endpoint=item.endpoint,
            request_id=item.request_id,
            inputs={k: _jsonable(v) for k, v in item.inputs.items()},
            answer={k: _jsonable(v) for k, v in item.answer.items()},
            confidence=item.confidence,
            served_by=item.served_by,
            now=item.now,
        )

    return BackgroundWriter(
        "review writer",
        write,
        capacity=CAPACITY,
        batch_size=BATCH_SIZE,
        write_timeout_s=WRITE_TIMEOUT_S,
        metric=METRIC,
    )


def pending_reviews(
    endpoint: str,
    request_id: str,
    rows: np.ndarray,
    inputs: dict[str, np.ndarray],
    answer: dict[str, np.ndarray],
    confidence: np.ndarray,
    served_by: str,
    now: float,
) -> list[PendingReview]:
    """One record per doubtful row; a request of several rows numbers its ids `id#row`."""
    several = len(rows) > 1
    return [
        PendingReview(
            endpoint=endpoint,
            request_id=f"{request_id}#{row}" if several else request_id,
            inputs={k: _row(v, i) for k, v in inputs.items()},
            answer={k: _row(v, i) for k, v in answer.items()},
            confidence=float(confidence[i]),
            served_by=served_by,
            now=now,
        )
        for i, row in enumerate(rows.tolist())
    ]


def _row(tensor: np.ndarray, i: int) -> Any:
    """Row `i`, copied: a view would keep the whole request's tensor alive while queued."""
    row = tensor[i]
    return row.copy() if isinstance(row, np.ndarray) else row  # else a scalar, or bytes


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray) and value.dtype == object:
        return [_jsonable(v) for v in value.ravel().tolist()]
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    return value
