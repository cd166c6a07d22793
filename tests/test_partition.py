"""Tests for declora.algorithms.partition: disjointness, coverage, reproducibility and skew."""

from __future__ import annotations

import numpy as np
import pytest

from declora.algorithms.partition import PARTITIONS, partition
from tests.reference import label_counts

PAPER_PROPS = [[0.15, 0.85], [0.85, 0.15], [0.5, 0.5]]


def _labels(n_rows: int = 600, n_classes: int = 4, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n_classes, size=n_rows)


def _split(kind: str, seed: int = 0, n_nodes: int = 3, **kwargs) -> list[np.ndarray]:
    if kind == "label_skew":
        y = _labels(n_classes=2)
        kwargs.setdefault("proportions", PAPER_PROPS)
        n_nodes = 3
    else:
        y = _labels()
    return partition(y, n_nodes, kind, seed=seed, **kwargs)


@pytest.mark.parametrize("kind", PARTITIONS)
def test_parts_are_disjoint_sorted_int64(kind: str) -> None:
    parts = _split(kind)
    assert len(parts) == 3
    for p in parts:
        assert p.dtype == np.int64
        assert np.all(np.diff(p) > 0)  # sorted, no repeats within a part
        assert len(p) >= 1
    allrows = np.concatenate(parts)
    assert len(np.unique(allrows)) == len(allrows)
    assert allrows.min() >= 0 and allrows.max() < 600


@pytest.mark.parametrize("kind", PARTITIONS)
def test_reproducible_for_seed_and_different_across_seeds(kind: str) -> None:
    a, b, c = _split(kind, seed=3), _split(kind, seed=3), _split(kind, seed=4)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


@pytest.mark.parametrize("kind", ["iid", "dirichlet", "quantity_skew"])
@pytest.mark.parametrize("n_nodes", [1, 2, 5, 10])
def test_covering_kinds_use_every_row(kind: str, n_nodes: int) -> None:
    parts = _split(kind, n_nodes=n_nodes)
    assert len(parts) == n_nodes
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(600))


def test_iid_sizes_are_near_equal() -> None:
    sizes = [len(p) for p in partition(_labels(601), 4, "iid")]
    assert sorted(sizes) == [150, 150, 150, 151]


def _mean_max_class_fraction(alpha: float) -> float:
    y = _labels(2000, n_classes=5)
    parts = partition(y, 8, "dirichlet", alpha=alpha, seed=0)
    counts = label_counts(y, parts, n_classes=5)  # (8, 5)
    return float(np.mean(counts.max(1) / counts.sum(1)))


def test_dirichlet_small_alpha_is_more_skewed() -> None:
    skewed, even = _mean_max_class_fraction(0.1), _mean_max_class_fraction(100.0)
    assert skewed > even + 0.2
    assert even < 0.3  # alpha=100 is close to the 1/5 IID fraction


def test_quantity_skew_sizes_vary_with_alpha() -> None:
    y = _labels(2000)
    small = [len(p) for p in partition(y, 8, "quantity_skew", alpha=0.3, seed=0)]
    large = [len(p) for p in partition(y, 8, "quantity_skew", alpha=100.0, seed=0)]
    assert np.std(small) > 3 * np.std(large)


def test_label_skew_matches_paper_proportions() -> None:
    y = _labels(1000, n_classes=2)
    parts = partition(y, 3, "label_skew", proportions=PAPER_PROPS, seed=0)
    counts = label_counts(y, parts, n_classes=2)  # (3, 2)
    sizes = counts.sum(1)
    assert len(set(sizes.tolist())) == 1  # every node gets the same m
    np.testing.assert_allclose(counts / sizes[:, None], PAPER_PROPS, atol=0.02)
    # m is as large as the scarcer class allows: total demand of that class fits, m+1 would not.
    need = np.array(PAPER_PROPS).sum(0)  # (2,) rows of each class per unit of m
    avail = np.bincount(y, minlength=2)
    assert np.all(counts.sum(0) <= avail)
    assert sizes[0] >= int(np.min(avail / need)) - 3


def test_label_skew_size_capped_by_rows_per_node() -> None:
    y = np.repeat([0, 1], 500)  # (1000,) plenty of both classes for an even split
    parts = partition(y, 4, "label_skew", proportions=[[0.5, 0.5]] * 4)
    assert [len(p) for p in parts] == [250] * 4
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(1000))


@pytest.mark.parametrize(
    ("labels", "n_nodes", "kwargs", "match"),
    [
        (_labels(10), 11, {}, r"at least n_nodes \* min_size = 11 rows; got 10 rows"),
        (_labels(10), 3, {"min_size": 4}, r"= 12 rows; got 10 rows .* fewer nodes"),
        (_labels(10), 0, {}, r"node count >= 1; got n_nodes=0"),
        (_labels(10), 2, {"kind": "shards"}, r"partition\.kind must be one of iid, dirichlet"),
        (_labels(10), 2, {"kind": "dirichlet", "alpha": 0.0}, r"partition\.alpha must be"),
        (_labels(10), 2, {"min_size": 0}, r"partition\.min_size must be an integer >= 1"),
        (np.array([0.0, 1.0]), 1, {}, r"labels must be integer class ids"),
        (np.array([0, -1]), 1, {}, r"negative id -1"),
        (np.zeros((2, 2), int), 1, {}, r"1-D array"),
        (
            _labels(40, n_classes=4),
            40,
            {"kind": "dirichlet", "alpha": 0.01},
            r"dirichlet left a node with fewer than min_size=1 rows .* raise partition\.alpha",
        ),
        (
            _labels(40),
            30,
            {"kind": "quantity_skew", "alpha": 0.05},
            r"quantity_skew left a node .* raise partition\.alpha or use fewer nodes",
        ),
    ],
)
def test_bad_input_raises(labels: np.ndarray, n_nodes: int, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        partition(labels, n_nodes, **kwargs)


@pytest.mark.parametrize(
    ("proportions", "match"),
    [
        (None, r"label_skew needs partition\.proportions"),
        ([[0.5, 0.5]] * 2, r"one class-share vector per node \(3 nodes\); got .* \(2, 2\)"),
        ([[0.5, 0.5], [1.0], [0.5, 0.5]], r"partition\.proportions must be a list of equal"),
        ([[0.5, 0.5], [1.2, -0.2], [0.5, 0.5]], r"partition\.proportions must be .*non-negative"),
        ([[0.5, 0.5], [0.6, 0.6], [0.5, 0.5]], r"partition\.proportions\[1\] sums to 1\.2"),
        ([[1.0]] * 3, r"class ids up to 1 but partition\.proportions vectors have length 1"),
    ],
)
def test_label_skew_rejects_bad_proportions(proportions: list | None, match: str) -> None:
    y = _labels(300, n_classes=2)
    with pytest.raises(ValueError, match=match):
        partition(y, 3, "label_skew", proportions=proportions)


def test_label_skew_impossible_demand_raises() -> None:
    y = np.array([0] * 100 + [1] * 2)  # class 1 nearly absent
    with pytest.raises(ValueError, match=r"too many rows of class 1 \(2 available\)"):
        partition(y, 2, "label_skew", proportions=[[0.0, 1.0], [0.0, 1.0]], min_size=5)
