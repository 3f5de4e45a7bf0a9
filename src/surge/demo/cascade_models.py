"""The cascade demo's two tiers, trained on the same fixed digits split as digits/1.

- digits_small/1: the cheap tier, a logistic regression on standardized pixels.
- digits_big/1: the costly tier, an RBF support vector machine with calibrated
  probabilities: more accurate, and about 11x the compute per row in batches of 32
  (benchmarks/cascade_sweep.py measures both; see benchmarks/results/cascade.md).

The `train_*` functions return the fitted estimator so the benchmark times the very
models the builders save; the `build_*` functions have `build_digits`'s signature
(a version directory in, held-out accuracy out) for the demo model repository.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from surge.demo.digits import digits_split, save_digits

# RBF width for raw pixels in [0, 16]: the classic setting for this data set; `C` large
# enough that the margin fits the training set, which the 3-fold calibration then checks.
SVC_GAMMA = 0.001
SVC_C = 10.0


def train_digits_small() -> Any:
    """Logistic regression over standardized pixels. Standardizing first lets lbfgs
    converge in a few hundred iterations (on raw 0-16 pixels it needs thousands and
    warns); max_iter leaves headroom so no ConvergenceWarning is ever raised."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x_train, _, y_train, _ = digits_split()
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
    return model.fit(x_train, y_train)


def train_digits_big() -> Any:
    """An RBF SVC whose decision values are mapped to probabilities by sigmoid
    calibration on 3-fold out-of-fold predictions (`ensemble=False`: one SVC trained on
    all rows is kept, so serving pays for one kernel evaluation, not three).

    Why an SVC, measured on the held-out rows of this split: it is the most accurate of
    what we tried (99.3 %, against 98.7 % for an MLP of 256x256, 98.2 % for 256 units,
    97.8 % for a random forest of 500 trees; the logistic regression gets 96.9 %), and
    its cost is real work: an RBF kernel against each of ~660 support vectors per row,
    about 80 µs a row in batches of 32 against the small model's 7.5 µs (11x). The MLPs
    were no costlier per row than the logistic regression, so there was nothing to save.
    It also has a fixed cost of ~1.5 ms per call (input checks, ten calibrators), which
    is why escalated rows are cheapest batched together. `SVC(probability=True)` is
    avoided: it is deprecated in this scikit-learn and its internal Platt scaling is
    what the calibrator replaces; sigmoid calibration spreads confidences usefully,
    where temperature scaling put every row near 0.98.
    """
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.svm import SVC

    x_train, _, y_train, _ = digits_split()
    svc = SVC(kernel="rbf", gamma=SVC_GAMMA, C=SVC_C)
    model = CalibratedClassifierCV(svc, method="sigmoid", cv=3, ensemble=False)
    return model.fit(x_train, y_train)


def build_digits_small(out: Path) -> float:
    """Train and save the cascade's cheap tier; returns held-out accuracy."""
    return save_digits(out, train_digits_small(), "logistic regression (standardized) on digits")


def build_digits_big(out: Path) -> float:
    """Train and save the cascade's costly tier; returns held-out accuracy."""
    return save_digits(
        out, train_digits_big(), "RBF SVC with sigmoid-calibrated probabilities on digits"
    )
