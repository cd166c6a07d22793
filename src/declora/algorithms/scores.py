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


def counts(pred: np.ndarray, gold: np.ndarray, loss_sum: float, n_classes: int) -> np.ndarray:
    """What a site's evaluation may leave it: [rows, correct, loss sum, true positives per
    class, predictions per class, labels per class], float64. Sums of these pool sites."""
    tp = np.bincount(gold[pred == gold], minlength=n_classes)
    return np.concatenate(
        [
            [len(gold), float(np.sum(pred == gold)), loss_sum],
            tp,
            np.bincount(pred, minlength=n_classes),
            np.bincount(gold, minlength=n_classes),
        ]
    ).astype(np.float64)


def from_counts(v: np.ndarray) -> dict:
    """accuracy, macro-F1 (as :func:`macro_f1`) and mean loss from :func:`counts` (or a sum)."""
    c = (len(v) - 3) // 3
    rows, correct, loss_sum = v[:3]
    tp, pred, gold = v[3 : 3 + c], v[3 + c : 3 + 2 * c], v[3 + 2 * c :]
    seen = (pred + gold) > 0
    f1 = np.where(tp > 0, 2 * tp / np.maximum(pred + gold, 1), 0.0)[seen]
    return {
        "accuracy": float(correct / rows),
        "f1": float(f1.mean()),
        "loss": float(loss_sum / rows),
    }
