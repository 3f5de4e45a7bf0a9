"""Quantiles from histogram buckets, by one rule for every reader.

The dashboard's percentiles and the burst modes' p99 both come from the same latency
buckets; computed by two rules they disagreed on the same traffic, so an operator
watching p99 on the dashboard could not see why a mode switched. Both call this.

The rule is Prometheus' `histogram_quantile`, so the numbers here match what a Grafana
panel over the exported histograms shows: find the bucket holding the q-th observation
and interpolate linearly inside it, the first bucket starting at 0; an observation past
the largest finite bound (the +Inf bucket) answers that bound, since nothing is known
above it. One departure: empty buckets are skipped, so q=0 answers the lower bound of
the first bucket that holds anything instead of Prometheus' NaN.
"""

from __future__ import annotations

from collections.abc import Sequence


def histogram_quantile(counts: Sequence[int], bounds: Sequence[float], q: float) -> float | None:
    """The q-quantile (0 <= q <= 1) of non-cumulative bucket `counts`, one per upper bound
    in `bounds` plus a last one for +Inf; None when the buckets hold no observation."""
    if not 0.0 <= q <= 1.0:  # also refuses NaN
        raise ValueError(f"a quantile lies in [0, 1], got {q}")
    if len(counts) != len(bounds) + 1:
        raise ValueError(f"{len(bounds)} bounds need {len(bounds) + 1} counts, got {len(counts)}")
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    running = 0
    for i, count in enumerate(counts):
        if count > 0 and running + count >= rank:
            if i == len(bounds):
                break  # the +Inf bucket
            lower = float(bounds[i - 1]) if i else 0.0
            return lower + (float(bounds[i]) - lower) * (rank - running) / count
        running += count
    return float(bounds[-1])
