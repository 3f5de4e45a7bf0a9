"""How far a shadow candidate's answer agrees with the live answer, per request (0..1).

Classifiers: the share of rows whose `label` matches. Embeddings: the mean
cosine of the `embedding` rows. Anything else: the share of output values that
match within a tolerance. Pure numpy, no I/O.
"""

from __future__ import annotations

import numpy as np

from surge.core.tensors import Tensors


def agreement(live: Tensors, candidate: Tensors) -> float:
    if "label" in live and "label" in candidate:
        return float(np.mean(live["label"] == candidate["label"]))
    if "embedding" in live and "embedding" in candidate:
        return mean_cosine(live["embedding"], candidate["embedding"])
    shared = sorted(set(live) & set(candidate))
    if not shared:
        return 0.0
    a, b = live[shared[0]], candidate[shared[0]]
    if a.shape != b.shape:
        return 0.0
    if a.dtype == object:
        return float(np.mean(a == b))
    return float(np.mean(np.isclose(a, b, rtol=1e-3, atol=1e-5)))


def mean_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cos = np.einsum("ij,ij->i", a, b) / np.maximum(norms, 1e-12)
    return float(np.mean(cos))
