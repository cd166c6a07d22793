"""Scores (:mod:`declora.algorithms.scores`): macro-F1 as scikit-learn defines it, on cases worked by hand."""

from __future__ import annotations

import numpy as np
import pytest

from declora.algorithms.scores import macro_f1

CASES = [  # pred, gold, classes, macro-F1 by hand
    # both classes seen: F1 = 2TP / (2TP + FP + FN) = 2/3 for each
    ([0, 0, 1], [0, 1, 1], 3, 2 / 3),  # class 2 appears nowhere: left out, not a 0
    # class 1 only predicted (F1 0); class 0: TP 1, FP 0, FN 2, so 2 / (2 + 0 + 2)
    ([0, 1, 1], [0, 0, 0], 2, (2 / 4 + 0.0) / 2),
    ([2, 2, 2, 2], [2, 2, 2, 2], 5, 1.0),  # one class, all right
    ([1, 0], [0, 1], 2, 0.0),  # all wrong
]


@pytest.mark.parametrize("pred, gold, n, want", CASES)
def test_macro_f1_by_hand(pred, gold, n, want):
    assert macro_f1(np.array(pred), np.array(gold), n) == pytest.approx(want, abs=1e-12)


def test_a_class_id_outside_the_range_is_an_error():
    with pytest.raises(ValueError, match="outside"):
        macro_f1(np.array([0, 3]), np.array([0, 1]), 2)
