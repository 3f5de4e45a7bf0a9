"""Drift: has what a model sees, or how sure it is, moved away from what it saw first?

Per model version, each batch is reduced to a few numbers per row ("signals": an input's
mean and L2 norm, a text's length, the top class probability, an embedding's norm).
The first `reference_rows` rows of each signal are frozen as its reference window; the
latest `window_rows` rows form the live window, compared with the reference by PSI and
the two-sample KS statistic. A signal at or over either threshold is drifting, and so
is a model with any drifting signal.

Sans-IO: no clock, no I/O. `summarize` runs on the replica thread after each batch (it
touches every value of the batch once, so it stays off the event loop); `observe` and
`status` run on the event loop and only move small arrays around.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np

from surge.config_observe import DriftConfig

# Signal name -> one value per row of the batch (float64, finite).
BatchSummary = dict[str, np.ndarray]

# Fewer live rows than this (or than window_rows, if smaller) and PSI / KS are mostly
# noise: against 1000 reference rows, 50 live rows reach KS 0.2 by chance about 4 % of
# the time; 100 rows, about 0.1 %.
MIN_ROWS = 100
# PSI's bias by chance alone is about (bins - 1) x (1/reference + 1/live rows): 0.09 for
# 10 bins over 200 rows each. Keeping 50 rows per bin keeps it near 0.03 for small windows.
ROWS_PER_BIN = 50
PSI_EPSILON = 1e-4  # stands in for an empty bin's share: ln(0) would make PSI infinite
RECOMPUTE_FRACTION = 0.1  # of window_rows: how much the window moves before a recompute
CONFIDENCE_BUCKETS = tuple(round(0.1 * i, 1) for i in range(1, 11))
PROBABILITY_SUM_TOLERANCE = 1e-3
CONFIDENCE = "confidence"

COLLECTING_REFERENCE = "collecting reference"
COLLECTING_WINDOW = "collecting window"
OK = "ok"
DRIFTING = "drifting"


# -- statistics ------------------------------------------------------------------------------


def psi(reference: np.ndarray, current: np.ndarray, bins: int = 10) -> float:
    """Population stability index of `current` against `reference`, over the reference's
    quantile bins (ties merged, so a lumpy reference gets fewer, fuller bins)."""
    reference = np.asarray(reference, dtype=np.float64).ravel()
    current = np.asarray(current, dtype=np.float64).ravel()
    if reference.size == 0 or current.size == 0:
        raise ValueError("psi needs at least one value in each sample")
    if bins < 2:
        raise ValueError(f"psi needs at least 2 bins, got {bins}")
    edges = np.unique(np.quantile(reference, np.linspace(0.0, 1.0, bins + 1)[1:-1]))
    if edges[0] == reference.min():
        # The lowest quantile is the minimum itself (a lumpy reference; a normalised
        # embedding's norm is one repeated value): give values below it a bin of their own,
        # or a move downwards would land in the bin holding the reference's mass, unseen.
        edges = np.concatenate([[np.nextafter(edges[0], -np.inf)], edges])
    ref_share = _shares(reference, edges)
    cur_share = _shares(current, edges)
    return float(np.sum((cur_share - ref_share) * np.log(cur_share / ref_share)))


def _shares(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    # Bins are (-inf, e0], (e0, e1], ..., (ek, inf).
    counts = np.bincount(np.searchsorted(edges, values, side="left"), minlength=edges.size + 1)
    return np.maximum(counts / values.size, PSI_EPSILON)


def ks_statistic(reference: np.ndarray, current: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov D: the largest gap between the two empirical CDFs
    (the statistic of scipy.stats.ks_2samp, without its p-value)."""
    a = np.sort(np.asarray(reference, dtype=np.float64).ravel())
    b = np.sort(np.asarray(current, dtype=np.float64).ravel())
    if a.size == 0 or b.size == 0:
        raise ValueError("ks_statistic needs at least one value in each sample")
    points = np.concatenate([a, b])
    cdf_a = np.searchsorted(a, points, side="right") / a.size
    cdf_b = np.searchsorted(b, points, side="right") / b.size
    return float(np.max(np.abs(cdf_a - cdf_b)))


# -- per batch, on the replica thread ------------------------------------------------------


def summarize(inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> BatchSummary:
    """The drift signals of one batch, one value per row each."""
    summary: BatchSummary = {}
    for name, array in inputs.items():
        if array.ndim == 0 or array.shape[0] == 0:
            continue
        if _is_text(array):
            _put(summary, f"input:{name}:length", _byte_lengths(array))
        elif _is_numeric(array) and array.size:
            rows = _as_rows(array)
            _put(summary, f"input:{name}:mean", rows.mean(axis=1))
            _put(summary, f"input:{name}:norm", np.sqrt(np.einsum("ij,ij->i", rows, rows)))
    confidence_from = _probabilities_output(outputs)
    if confidence_from is not None:
        _put(summary, CONFIDENCE, outputs[confidence_from].max(axis=1))
    for name, array in outputs.items():
        if name == confidence_from or array.ndim == 0 or array.shape[0] == 0:
            continue
        if array.dtype.kind != "f":
            continue  # labels and ids: their drift shows in the confidence and inputs
        if array.ndim == 1:
            _put(summary, f"output:{name}:value", array)
        elif array.size:
            rows = _as_rows(array)
            _put(summary, f"output:{name}:norm", np.sqrt(np.einsum("ij,ij->i", rows, rows)))
    return summary


def _put(summary: BatchSummary, signal: str, values: np.ndarray) -> None:
    values = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(values)
    # NaN would poison the quantiles of a whole window; such rows say nothing of drift.
    summary[signal] = values if finite.all() else values[finite]


def _is_text(array: np.ndarray) -> bool:
    return array.dtype.kind in "OSU"


def _is_numeric(array: np.ndarray) -> bool:
    return array.dtype.kind in "fiub"


def _as_rows(array: np.ndarray) -> np.ndarray:
    rows = array.reshape(array.shape[0], -1)
    return rows if rows.dtype.kind == "f" else rows.astype(np.float64)


def _byte_lengths(array: np.ndarray) -> np.ndarray:
    if array.dtype.kind == "S":
        lengths = np.char.str_len(array)
    else:
        lengths = np.fromiter(map(_byte_length, array.ravel()), np.int64, array.size)
    return lengths.reshape(array.shape[0], -1).sum(axis=1)


def _byte_length(value: Any) -> int:
    if isinstance(value, bytes | bytearray):
        return len(value)
    return len(str(value).encode("utf-8"))


def _probabilities_output(outputs: dict[str, np.ndarray]) -> str | None:
    """The output whose rows are class probabilities: one named `probabilities`, else the
    first 2-D float output whose rows sum to 1."""
    found = outputs.get("probabilities")
    if found is not None and found.ndim == 2 and found.dtype.kind == "f" and found.size:
        return "probabilities"
    for name, array in outputs.items():
        if array.ndim != 2 or array.dtype.kind != "f" or array.shape[1] < 2 or not array.size:
            continue
        sums = array.sum(axis=1)
        if np.all(np.abs(sums - 1.0) <= PROBABILITY_SUM_TOLERANCE) and array.min() >= 0.0:
            return name
    return None


# -- per model version, on the event loop ------------------------------------------------------


class SlidingRows:
    """The latest `capacity` values of a signal, kept as the chunks they came in."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.chunks: deque[np.ndarray] = deque()
        self.rows = 0

    def add(self, values: np.ndarray) -> None:
        if values.size >= self.capacity:
            self.chunks.clear()
            values = values[-self.capacity :]
            self.rows = 0
        self.chunks.append(values)
        self.rows += values.size
        while self.rows - self.chunks[0].size >= self.capacity:
            self.rows -= self.chunks.popleft().size
        if self.rows > self.capacity:  # trim the oldest chunk to keep exactly `capacity`
            extra = self.rows - self.capacity
            self.chunks[0] = self.chunks[0][extra:]
            self.rows = self.capacity

    def values(self) -> np.ndarray:
        return np.concatenate(self.chunks) if self.chunks else np.empty(0)


class SignalWindows:
    """One signal's frozen reference window and its live window."""

    def __init__(self, reference_rows: int, window_rows: int) -> None:
        self.reference_rows = reference_rows
        self.pending: list[np.ndarray] = []
        self.pending_rows = 0
        self.reference: np.ndarray | None = None  # set (frozen) once full
        self.window = SlidingRows(window_rows)
        self.added = 0  # rows ever added: how far the live window has moved

    def add(self, values: np.ndarray) -> None:
        self.added += values.size
        if self.reference is None:
            room = self.reference_rows - self.pending_rows
            self.pending.append(values[:room])
            self.pending_rows += min(room, values.size)
            values = values[room:]
            if self.pending_rows >= self.reference_rows:
                self.reference = np.concatenate(self.pending)
                self.pending = []
        if values.size:
            self.window.add(values)

    @property
    def reference_count(self) -> int:
        return self.reference.size if self.reference is not None else self.pending_rows


class ConfidenceHistogram:
    """Counts of every confidence value seen, in Prometheus `le` buckets (last: +Inf)."""

    def __init__(self, bounds: tuple[float, ...] = CONFIDENCE_BUCKETS) -> None:
        self.bounds = np.asarray(bounds, dtype=np.float64)
        self.counts = np.zeros(len(bounds) + 1, dtype=np.int64)
        self.sum = 0.0

    def add(self, values: np.ndarray) -> None:
        index = np.searchsorted(self.bounds, values, side="left")
        self.counts += np.bincount(index, minlength=self.counts.size)
        self.sum += float(values.sum())

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def cumulative(self) -> list[tuple[str, float]]:
        labels = [*(str(float(b)) for b in self.bounds), "+Inf"]
        return list(zip(labels, np.cumsum(self.counts).tolist(), strict=True))


class DriftMonitor:
    """Drift of one model version's signals.

    Status is read by every scrape and by the dashboard each second, so each signal's
    figures are cached and recomputed only once its live window has moved by a tenth
    (while a window is still filling, its counts follow every batch: no statistics then).
    """

    def __init__(self, config: DriftConfig) -> None:
        self.config = config
        self.signals: dict[str, SignalWindows] = {}
        self.confidence = ConfidenceHistogram()
        self._cached: dict[str, tuple[int, dict[str, Any]]] = {}  # signal -> (rows, status)
        self._recompute_rows = max(1, int(config.window_rows * RECOMPUTE_FRACTION))

    def observe(self, summary: BatchSummary) -> None:
        for signal, values in summary.items():
            if values.size == 0:
                continue
            windows = self.signals.get(signal)
            if windows is None:
                windows = self.signals[signal] = SignalWindows(
                    self.config.reference_rows, self.config.window_rows
                )
            windows.add(values)
        confidence = summary.get(CONFIDENCE)
        if confidence is not None and confidence.size:
            self.confidence.add(confidence)

    def status(self) -> list[dict[str, Any]]:
        out = []
        for signal, windows in self.signals.items():
            cached = self._cached.get(signal)
            if cached is None or self._stale(cached, windows):
                fresh = self._signal_status(signal, windows)
                cached = self._cached[signal] = (windows.added, fresh)
            out.append(dict(cached[1]))
        return out

    @property
    def drifting(self) -> bool:
        return any(s["drifting"] for s in self.status())

    def _stale(self, cached: tuple[int, dict[str, Any]], windows: SignalWindows) -> bool:
        rows_then, status = cached
        moved = windows.added - rows_then
        if status["psi"] is None:
            return moved > 0
        return moved >= self._recompute_rows

    def _signal_status(self, signal: str, windows: SignalWindows) -> dict[str, Any]:
        psi_value = ks_value = None
        drifting = False
        if windows.reference is None:
            state = COLLECTING_REFERENCE
        elif windows.window.rows < min(MIN_ROWS, self.config.window_rows):
            state = COLLECTING_WINDOW
        else:
            live = windows.window.values()
            fewest = min(live.size, windows.reference.size)
            psi_value = psi(windows.reference, live, bins=min(10, max(2, fewest // ROWS_PER_BIN)))
            ks_value = ks_statistic(windows.reference, live)
            drifting = (
                psi_value >= self.config.psi_threshold or ks_value >= self.config.ks_threshold
            )
            state = DRIFTING if drifting else OK
        return {
            "signal": signal,
            "state": state,
            "psi": psi_value,
            "ks": ks_value,
            "drifting": drifting,
            "reference_rows": windows.reference_count,
            "window_rows": windows.window.rows,
        }


class ModelDriftRegistry:
    """One DriftMonitor per (endpoint, version) the server runs."""

    def __init__(self, config: DriftConfig) -> None:
        self.config = config
        self.monitors: dict[tuple[str, str], DriftMonitor] = {}
        self._holders: dict[tuple[str, str], int] = {}  # deployments using each monitor

    def monitor_for(self, endpoint: str, version: str) -> DriftMonitor:
        """The version's monitor; deployments of the same version (a redeploy beside the
        old one during a swap) share it, and each one that takes it must `discard` it."""
        key = (endpoint, version)
        found = self.monitors.get(key)
        if found is None:
            found = self.monitors[key] = DriftMonitor(self.config)
        self._holders[key] = self._holders.get(key, 0) + 1
        return found

    def discard(self, endpoint: str, version: str) -> None:
        """A deployment of the version stopped; when none is left, its figures stop being
        exported."""
        key = (endpoint, version)
        left = self._holders.get(key, 1) - 1
        if left > 0:
            self._holders[key] = left
            return
        self._holders.pop(key, None)
        self.monitors.pop(key, None)

    def snapshot(self) -> list[dict[str, Any]]:
        return [
            {**signal, "endpoint": endpoint, "version": version}
            for (endpoint, version), monitor in self.monitors.items()
            for signal in monitor.status()
        ]

    def drifting(self, endpoint: str, version: str) -> bool:
        found = self.monitors.get((endpoint, version))
        return found is not None and found.drifting

    def describe(self, endpoint: str, version: str) -> dict[str, Any] | None:
        """What `surge status` shows for one version: its overall state and its signals,
        or None when the version is not watched (drift off, or a shadow)."""
        found = self.monitors.get((endpoint, version))
        if found is None:
            return None
        signals = found.status()
        return {"state": overall_state(signals), "signals": signals}


def overall_state(signals: list[dict[str, Any]]) -> str:
    """A version's state is its least reassuring signal's: drifting, else still collecting,
    else ok. No signals yet means nothing was served."""
    states = {s["state"] for s in signals}
    for state in (DRIFTING, COLLECTING_REFERENCE, COLLECTING_WINDOW):
        if state in states:
            return state
    return OK if states else COLLECTING_REFERENCE
