"""Tests for declora.algorithms.topology: graphs, mixing rules, spectral gap and link drops."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from declora.algorithms.topology import (
    MIXING_RULES,
    TOPOLOGIES,
    build_graph,
    check_mixing,
    is_connected,
    mixing_matrix,
    spectral_gap,
    surviving_mixing,
)
from tests.reference import neighbours

SIZES = (1, 2, 3, 4, 6, 9, 12)


def _graph(kind: str, n: int) -> np.ndarray:
    if kind == "custom":
        # A path plus one chord: connected, irregular degrees.
        edges = [(i, i + 1) for i in range(n - 1)] + ([(0, n - 1)] if n > 3 else [])
        return build_graph(kind, n, edges=edges)
    if kind == "erdos_renyi":
        return build_graph(kind, n, p=0.6, seed=1)
    return build_graph(kind, n)


def _laplacian(adj: np.ndarray) -> np.ndarray:
    a = adj.astype(float)
    return np.diag(a.sum(1)) - a


@pytest.mark.parametrize(
    ("kind", "rule", "n"), list(itertools.product(TOPOLOGIES, MIXING_RULES, SIZES))
)
def test_every_topology_and_rule_gives_valid_mixing(kind: str, rule: str, n: int) -> None:
    adj = _graph(kind, n)
    assert adj.shape == (n, n) and adj.dtype == bool
    assert np.array_equal(adj, adj.T) and not adj.diagonal().any()
    assert is_connected(adj)
    W = mixing_matrix(adj, rule)
    check_mixing(W, adj)
    assert W.dtype == np.float64
    assert np.array_equal(W, W.T)
    assert 0.0 <= spectral_gap(W) <= 1.0 + 1e-12


@pytest.mark.parametrize(
    ("kind", "n", "degrees"),
    [
        ("ring", 1, [0]),
        ("ring", 2, [1, 1]),
        ("ring", 5, [2] * 5),
        ("complete", 4, [3] * 4),
        ("star", 5, [4, 1, 1, 1, 1]),
        ("grid", 6, [2, 3, 2, 2, 3, 2]),  # 2 x 3
        ("grid", 9, [2, 3, 2, 3, 4, 3, 2, 3, 2]),  # 3 x 3
        ("grid", 3, [1, 2, 1]),  # 1 x 3 line allowed for n <= 3
        ("exponential", 8, [5] * 8),  # hops 1, 2, 4; +4 == -4 mod 8
        ("exponential", 2, [1, 1]),
    ],
)
def test_graph_shapes(kind: str, n: int, degrees: list[int]) -> None:
    adj = build_graph(kind, n)
    assert adj.sum(1).tolist() == degrees


def test_grid_is_r_by_c_without_wrap() -> None:
    adj = build_graph("grid", 12)  # r = 3, c = 4, row-major ids
    assert neighbours(adj, 0) == [1, 4]
    assert neighbours(adj, 5) == [1, 4, 6, 9]
    assert neighbours(adj, 11) == [7, 10]


def test_star_hub_is_node_zero() -> None:
    adj = build_graph("star", 4)
    assert neighbours(adj, 0) == [1, 2, 3]
    assert neighbours(adj, 2) == [0]


@pytest.mark.parametrize("n", [3, 4, 5, 8, 11])
def test_ring_uniform_is_one_third(n: int) -> None:
    adj = build_graph("ring", n)
    W = mixing_matrix(adj, "uniform")
    expected = np.where(adj | np.eye(n, dtype=bool), 1 / 3, 0.0)
    np.testing.assert_allclose(W, expected, atol=1e-15)


@pytest.mark.parametrize("kind", ["ring", "star", "grid", "erdos_renyi", "custom"])
def test_laplacian_rule_matches_formula(kind: str) -> None:
    adj = _graph(kind, 6)
    L = _laplacian(adj)
    lam_max = np.linalg.eigvalsh(L).max()
    expected = np.eye(6) - 2 * L / (3 * lam_max)
    np.testing.assert_allclose(mixing_matrix(adj, "laplacian"), expected, atol=1e-12)


def test_laplacian_without_edges_is_identity() -> None:
    np.testing.assert_array_equal(mixing_matrix(np.zeros((3, 3), bool), "laplacian"), np.eye(3))


@pytest.mark.parametrize("kind", ["ring", "star", "grid", "erdos_renyi", "custom"])
def test_metropolis_rule_matches_formula(kind: str) -> None:
    adj = _graph(kind, 6)
    deg = adj.sum(1)
    W = mixing_matrix(adj, "metropolis")
    for i, j in itertools.product(range(6), repeat=2):
        if i != j:
            want = 1 / (1 + max(deg[i], deg[j])) if adj[i, j] else 0.0
            assert W[i, j] == pytest.approx(want)
    for i in range(6):
        assert W[i, i] == pytest.approx(1 - sum(W[i, j] for j in range(6) if j != i))


@pytest.mark.parametrize("n", [1, 2, 5, 10])
def test_complete_uniform_gap_is_one(n: int) -> None:
    W = mixing_matrix(build_graph("complete", n), "uniform")
    np.testing.assert_allclose(W, np.full((n, n), 1 / n))
    assert spectral_gap(W) == pytest.approx(1.0)


@pytest.mark.parametrize("n", [3, 4, 5, 8, 16, 31])
def test_ring_uniform_gap_closed_form(n: int) -> None:
    W = mixing_matrix(build_graph("ring", n), "uniform")
    expected = 1 - (1 / 3 + 2 / 3 * np.cos(2 * np.pi / n))
    assert spectral_gap(W) == pytest.approx(expected, abs=1e-12)


def test_spectral_gap_disconnected_is_zero() -> None:
    assert spectral_gap(np.eye(3)) == pytest.approx(0.0)


def test_erdos_renyi_reproducible_and_seeded() -> None:
    a = build_graph("erdos_renyi", 20, p=0.3, seed=7)
    b = build_graph("erdos_renyi", 20, p=0.3, seed=7)
    c = build_graph("erdos_renyi", 20, p=0.3, seed=8)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert is_connected(a) and is_connected(c)


def test_custom_edges_accept_lists_and_duplicates() -> None:
    adj = build_graph("custom", 3, edges=[[0, 1], [1, 0], [2, 1]])
    assert adj.sum() == 4
    assert neighbours(adj, 1) == [0, 2]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"kind": "torus", "n": 4}, r"topology\.kind must be one of ring, complete"),
        ({"kind": "ring", "n": 0}, r"node count >= 1; got nodes=0"),
        ({"kind": "grid", "n": 7}, r"grid needs .* r x c, r>=2; got nodes=7 .*ring"),
        ({"kind": "grid", "n": 13}, r"got nodes=13"),
        ({"kind": "erdos_renyi", "n": 5, "p": 0.0}, r"topology\.p must be in \(0, 1\]"),
        ({"kind": "erdos_renyi", "n": 5, "p": 1.5}, r"topology\.p must be in \(0, 1\]"),
        ({"kind": "erdos_renyi", "n": 40, "p": 0.01}, r"disconnected .* raise topology\.p"),
        ({"kind": "custom", "n": 3}, r"custom needs topology\.edges"),
        ({"kind": "custom", "n": 3, "edges": [(0, 1), (1, 3)]}, r"edge \(1, 3\) .* 0\.\.2"),
        ({"kind": "custom", "n": 3, "edges": [(0, 1), (-1, 2)]}, r"edge \(-1, 2\)"),
        ({"kind": "custom", "n": 3, "edges": [(0, 1), (2, 2)]}, r"self loop \(2, 2\)"),
        ({"kind": "custom", "n": 3, "edges": [(0, 1, 2)]}, r"not a pair"),
        ({"kind": "custom", "n": 3, "edges": [(0, 1.5)]}, r"not a pair"),
        ({"kind": "custom", "n": 4, "edges": [(0, 1), (2, 3)]}, r"disconnected \(2 comp"),
    ],
)
def test_build_graph_rejects_bad_input(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_graph(**kwargs)


def test_mixing_matrix_rejects_bad_input() -> None:
    adj = build_graph("ring", 4)
    with pytest.raises(ValueError, match=r"topology\.mixing must be one of metropolis"):
        mixing_matrix(adj, "max_degree")
    with pytest.raises(ValueError, match="symmetric"):
        mixing_matrix(np.triu(adj), "metropolis")
    with pytest.raises(ValueError, match="self loop at node 0"):
        mixing_matrix(adj | np.eye(4, dtype=bool), "metropolis")
    with pytest.raises(ValueError, match="square"):
        mixing_matrix(np.zeros((2, 3), bool), "metropolis")


def _ring4() -> tuple[np.ndarray, np.ndarray]:
    adj = build_graph("ring", 4)
    return adj, mixing_matrix(adj, "uniform")


def test_check_mixing_rejects_non_symmetric() -> None:
    adj, W = _ring4()
    W[0, 1] += 0.1
    W[0, 0] -= 0.1  # row still sums to 1
    with pytest.raises(ValueError, match=r"not symmetric: W\[0,1\]"):
        check_mixing(W, adj)


def test_check_mixing_rejects_negative() -> None:
    adj = build_graph("complete", 3)
    W = np.array([[-0.2, 0.6, 0.6], [0.6, 0.2, 0.2], [0.6, 0.2, 0.2]])
    with pytest.raises(ValueError, match=r"negative entry W\[0,0\]"):
        check_mixing(W, adj)


def test_check_mixing_rejects_non_stochastic() -> None:
    adj, W = _ring4()
    W[1, 1] += 0.1  # still symmetric, but row and column 1 sum to 1.1
    with pytest.raises(ValueError, match="not doubly stochastic: row 1 sums to 1.1"):
        check_mixing(W, adj)
    with pytest.raises(ValueError, match="not doubly stochastic: row"):
        check_mixing(W * 0.9, adj)


def test_check_mixing_rejects_off_edge_weight() -> None:
    adj, _ = _ring4()
    W = np.full((4, 4), 0.25)  # nodes 0 and 2 are not linked on a 4-ring
    with pytest.raises(ValueError, match=r"W\[0,2\]=0\.25 between nodes 0 and 2 .* not neigh"):
        check_mixing(W, adj)


def test_check_mixing_rejects_shape_mismatch() -> None:
    adj, W = _ring4()
    with pytest.raises(ValueError, match="does not match adjacency"):
        check_mixing(W, adj[:3, :3])
    with pytest.raises(ValueError, match="square"):
        check_mixing(W[:3], adj)


def test_is_connected() -> None:
    assert is_connected(np.zeros((1, 1), bool))
    assert not is_connected(np.zeros((2, 2), bool))
    assert not is_connected(np.zeros((0, 0), bool))


@pytest.mark.parametrize("kind", ["ring", "complete", "grid", "erdos_renyi"])
def test_surviving_mixing_with_links_down(kind: str) -> None:
    adj = _graph(kind, 9)
    rng = np.random.default_rng(0)
    up = np.triu(rng.random((9, 9)) < 0.5, k=1)
    up |= up.T  # (9, 9) symmetric live mask
    W = surviving_mixing(adj, up)
    check_mixing(W, adj & up)
    np.testing.assert_allclose(W.sum(0), 1.0)
    np.testing.assert_allclose(W.sum(1), 1.0)
    assert np.all(W[adj & ~up] == 0.0)


def test_surviving_mixing_isolated_node_keeps_itself() -> None:
    adj = build_graph("ring", 5)
    up = np.ones((5, 5), bool)
    up[2, :] = up[:, 2] = False  # node 2 dropped
    W = surviving_mixing(adj, up)
    assert W[2, 2] == 1.0 and W[2].sum() == 1.0
    check_mixing(W, adj)
    np.testing.assert_array_equal(
        surviving_mixing(adj, np.ones((5, 5), bool)), mixing_matrix(adj, "metropolis")
    )


def test_surviving_mixing_rejects_bad_mask() -> None:
    adj = build_graph("ring", 4)
    with pytest.raises(ValueError, match="does not match"):
        surviving_mixing(adj, np.ones((3, 3), bool))
    with pytest.raises(ValueError, match="live-edge mask must be symmetric"):
        surviving_mixing(adj, np.triu(np.ones((4, 4), bool)))
