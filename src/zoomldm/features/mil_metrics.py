"""Slide-level MIL metrics: AUC (one-vs-rest macro over classes for more than two), balanced accuracy,
and the mean and standard deviation over folds (see :mod:`.mil`)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np

# ---------------------------------------------------------------------------------------------- metrics


def auc_score(y: np.ndarray, probs: np.ndarray) -> float:
    """ROC AUC: binary (positive = class 1) or one-vs-rest macro over the classes present in ``y``.

    NaN when ``y`` has a single class. With every class present this equals scikit-learn's
    ``roc_auc_score(multi_class="ovr", average="macro")``; computing it per class also covers small
    validation sets that miss a class.
    """
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y)
    if len(np.unique(y)) < 2:
        return math.nan
    if probs.shape[1] == 2:
        return float(roc_auc_score(y, probs[:, 1]))
    present = [c for c in range(probs.shape[1]) if (y == c).any()]
    return float(np.mean([roc_auc_score(y == c, probs[:, c]) for c in present]))


def balanced_accuracy(y: np.ndarray, probs: np.ndarray) -> float:
    """Balanced accuracy of the arg-max prediction (mean recall over the classes present in ``y``)."""
    from sklearn.metrics import balanced_accuracy_score

    with warnings.catch_warnings():  # sklearn warns when a predicted class is absent from y
        warnings.simplefilter("ignore", UserWarning)
        return float(balanced_accuracy_score(y, probs.argmax(axis=1)))


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[~np.isnan(arr)]
    if arr.size == 0:
        return math.nan, math.nan
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0
