"""Scores and sums shared by every task and runtime: macro-F1 and the mean of finite values."""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np


def macro_f1(pred: np.ndarray, gold: np.ndarray, n_classes: int) -> float:
    """Unweighted mean of per-class F1 over the classes that occur in the labels or the
    predictions, as scikit-learn's ``f1_score(average="macro")`` (a class absent from both is
    left out; one with no true positive scores 0). ``n_classes`` bounds the class ids."""
    scores = []
    for c in np.union1d(pred, gold):
        if not 0 <= c < n_classes:
            raise ValueError(f"class id {c} outside 0..{n_classes - 1}")
        tp = np.sum((pred == c) & (gold == c))
        fp = np.sum((pred == c) & (gold != c))
        fn = np.sum((pred != c) & (gold == c))
        scores.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores))


def mean_finite(values: Iterable[float]) -> float:
    """Mean over the finite values (a node that sat a round out reports NaN); NaN if none."""
    finite = [float(v) for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan
