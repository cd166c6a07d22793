"""Tests for declora.algorithms.graphs (time-varying graphs and spanning trees).

Expected values come from computations independent of the module: explicit permutation matrices,
the Fourier (circulant) formula for the one-peer graph, closed forms, period lengths produced by
the reference implementation (github.com/yukiTakezawa/BaseGraph, ``len(BaseGraph(n, k).w_list)``),
the Base-2 figure of that repository, and Floyd-Warshall distances for the spanning trees.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from declora.algorithms import graphs as tv

ATOL = 1e-12
POWERS_OF_TWO = [1, 2, 4, 8, 16, 32, 64]
NOT_POWERS = [n for n in range(3, 34) if n & (n - 1)]

# len(BaseGraph(n, k).w_list) of the reference code for n = 2 .. 33 (run once, torch, offline).
REFERENCE_PERIODS = {
    1: [1, 3, 2, 5, 4, 5, 3, 7, 6, 7, 5, 7, 6, 7, 4, 9, 8, 9, 7, 9, 8, 9, 6, 9, 8, 9, 7, 9, 8, 9]
    + [5, 11],
    2: [1, 1, 2, 3, 2, 4, 3, 2, 4, 5, 3, 5, 5, 4, 4, 5, 3, 6, 5, 5, 6, 6, 4, 6, 6, 3, 6, 7, 5, 7]
    + [5, 6],
    3: [1, 1, 1, 3, 2, 3, 2, 2, 4, 4, 2, 4, 4, 4, 2, 5, 3, 5, 4, 4, 5, 5, 3, 5, 5, 3, 4, 5, 5, 5]
    + [3, 5],
}


# ------------------------------------------------------------------------------------------
# Independent helpers
# ------------------------------------------------------------------------------------------


def assert_doubly_stochastic(w: np.ndarray) -> None:
    assert (w >= 0).all()
    np.testing.assert_allclose(w.sum(axis=0), 1.0, atol=ATOL)
    np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=ATOL)


def product(ws: list[np.ndarray]) -> np.ndarray:
    """W_T ... W_1 written out independently of tv.mixing_product."""
    out = np.eye(ws[0].shape[0])
    for w in ws:
        out = w @ out
    return out


def one_peer_expected(n: int, hop: int) -> np.ndarray:
    """(I + P) / 2 with P the permutation matrix taking row i to column (i - hop) mod n."""
    eye = np.eye(n)
    return 0.5 * (eye + np.roll(eye, -hop, axis=1))


def fourier_error(n: int, hops: list[int]) -> float:
    """||prod_t (I + P_t)/2 - J||_2 from the eigenvalues (1 + w^(j h)) / 2 of circulants."""
    j = np.arange(1, n)
    factors = np.ones(n - 1)
    for h in hops:
        factors *= np.abs(np.cos(np.pi * j * h / n))
    return float(factors.max())


def hops_of(n: int, rounds: int) -> list[int]:
    tau = math.ceil(math.log2(n))
    return [2 ** ((t - 1) % tau) for t in range(1, rounds + 1)]


def floyd_warshall(adj: np.ndarray) -> np.ndarray:
    n = adj.shape[0]
    d = np.where(adj, 1.0, np.inf)
    np.fill_diagonal(d, 0.0)
    for m in range(n):
        d = np.minimum(d, d[:, [m]] + d[[m], :])
    return d


def ring(n: int) -> np.ndarray:
    i = np.arange(n)
    a = np.zeros((n, n), dtype=bool)
    a[i, (i + 1) % n] = a[(i + 1) % n, i] = True
    return a


def path(n: int) -> np.ndarray:
    i = np.arange(n - 1)
    a = np.zeros((n, n), dtype=bool)
    a[i, i + 1] = a[i + 1, i] = True
    return a


def star(n: int, hub: int) -> np.ndarray:
    a = np.zeros((n, n), dtype=bool)
    a[hub, :] = a[:, hub] = True
    a[hub, hub] = False
    return a


def complete(n: int) -> np.ndarray:
    return ~np.eye(n, dtype=bool)


# ------------------------------------------------------------------------------------------
# One-peer exponential graph
# ------------------------------------------------------------------------------------------


def test_one_peer_hops():
    assert [tv.one_peer_hop(8, t) for t in range(1, 8)] == [1, 2, 4, 1, 2, 4, 1]
    assert [tv.one_peer_hop(5, t) for t in range(1, 5)] == [1, 2, 4, 1]
    assert [tv.one_peer_hop(2, t) for t in range(1, 4)] == [1, 1, 1]
    assert tv.one_peer_hop(1, 3) == 0
    periods = [tv.one_peer_period(n) for n in (1, 2, 3, 4, 5, 8, 9, 33, 64)]
    assert periods == [1, 1, 2, 2, 3, 3, 4, 6, 6]


@pytest.mark.parametrize("n", range(1, 34))
def test_one_peer_matrices(n):
    tau = tv.one_peer_period(n)
    for t in range(1, tau + 2):
        w = tv.one_peer_exponential(n, t)
        hop = hops_of(n, t)[-1] if n > 1 else 0
        np.testing.assert_array_equal(w, one_peer_expected(n, hop) if n > 1 else np.ones((1, 1)))
        assert_doubly_stochastic(w)
        adj = tv.edges_of(w)
        if n >= 2:  # one message per node per round: one in-neighbour, one out-neighbour
            assert (adj.sum(axis=1) == 1).all() and (adj.sum(axis=0) == 1).all()
            i = np.arange(n)
            assert adj[i, (i - hop) % n].all()
        # directed, except when hop = n/2 (sending to i + n/2 = receiving from i - n/2)
        assert np.array_equal(w, w.T) == (n == 1 or 2 * hop % n == 0)


@pytest.mark.parametrize("n", POWERS_OF_TWO)
def test_one_peer_power_of_two_exact(n):
    tau = tv.one_peer_period(n)
    j = np.full((n, n), 1.0 / n)
    for t0 in range(1, tau + 1):  # any tau consecutive rounds
        ws = [tv.one_peer_exponential(n, t) for t in range(t0, t0 + tau)]
        np.testing.assert_allclose(product(ws), j, atol=ATOL)
    if n >= 4:  # and not fewer
        ws = [tv.one_peer_exponential(n, t) for t in range(1, tau)]
        assert np.abs(product(ws) - j).max() > 0.5 / n  # entries are 0 or 2/n
    assert tv.rounds_to_exact("one_peer_exponential", n) == (tau if n > 1 else 1)


@pytest.mark.parametrize("n", NOT_POWERS)
def test_one_peer_not_power_of_two(n):
    tau = tv.one_peer_period(n)
    ws = [tv.one_peer_exponential(n, t) for t in range(1, tau + 1)]
    err = tv.consensus_error(ws)
    assert np.abs(product(ws) - 1.0 / n).max() > 1e-3  # not J
    assert 0.03 < err < 1.0  # but it contracts
    assert err == pytest.approx(fourier_error(n, hops_of(n, tau)), abs=ATOL)
    assert tv.rounds_to_exact("one_peer_exponential", n) is None


@pytest.mark.parametrize("m", [2, 3, 4, 5])
def test_one_peer_closed_form_two_power_minus_one(m):
    n = 2**m - 1
    ws = [tv.one_peer_exponential(n, t) for t in range(1, m + 1)]
    expected = (np.eye(n) + np.ones((n, n))) / (n + 1)  # (I + nJ) / (n + 1)
    np.testing.assert_allclose(product(ws), expected, atol=ATOL)
    assert tv.consensus_error(ws) == pytest.approx(1 / (n + 1), abs=ATOL)


def test_one_peer_documented_table():
    """The table in the module docstring matches the Fourier formula."""
    rows = re.findall(r"(\d+) +(\d) +(0\.\d{4}) +(\d+) +(\d+)", tv.__doc__)
    assert [int(r[0]) for r in rows] == NOT_POWERS
    for n, tau, err, t3, t6 in (
        (int(a), int(b), float(c), int(d), int(e)) for a, b, c, d, e in rows
    ):
        assert tau == math.ceil(math.log2(n))
        assert err == pytest.approx(fourier_error(n, hops_of(n, tau)), abs=6e-5)
        errors = [fourier_error(n, hops_of(n, t)) for t in range(1, t6 + 1)]
        assert errors[t3 - 1] <= 1e-3 < errors[t3 - 2]
        assert errors[t6 - 1] <= 1e-6 < errors[t6 - 2]
    assert tv.one_peer_rounds_to_error(22, 1e-3) == 24
    assert tv.one_peer_rounds_to_error(22, 1e-6) == 48
    assert tv.one_peer_rounds_to_error(16, 1e-9) == 4


# ------------------------------------------------------------------------------------------
# Base-(k+1) graph
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_base_graph_properties_and_exactness(k):
    for n in range(1, 34):
        ws = tv.base_graph(n, k)
        assert len(ws) == tv.base_period(n, k) <= 2 * math.log(n, k + 1) + 2
        for w in ws:
            assert w.shape == (n, n)
            np.testing.assert_array_equal(w, w.T)
            assert_doubly_stochastic(w)
            assert tv.edges_of(w).sum(axis=1).max(initial=0) <= k
        np.testing.assert_allclose(product(ws), np.full((n, n), 1.0 / n), atol=ATOL, rtol=0)
        np.testing.assert_allclose(product(ws[::-1]), np.full((n, n), 1.0 / n), atol=ATOL, rtol=0)
        for m in range(1, len(ws)):  # no shorter prefix is exact
            assert np.abs(product(ws[:m]) - 1.0 / n).max() > 1e-6


@pytest.mark.parametrize("k", [1, 2, 3])
def test_base_period_matches_reference_implementation(k):
    assert [tv.base_period(n, k) for n in range(2, 34)] == REFERENCE_PERIODS[k]


def test_base_period_is_counted_without_building_the_graph():
    """A config resolves ``gossip_steps: period`` from it: the count equals the matrices
    built, and 10,000 nodes (800 MB a matrix) take no time."""
    for k in (1, 2, 3, 5):
        assert [tv.base_period(n, k) for n in range(1, 90)] == [
            len(tv.base_graph(n, k)) for n in range(1, 90)
        ]
    assert tv.base_period(10_000, 1) == 23


def test_base_graph_six_nodes_matches_figure():
    """pic/base_2_graph_with_6_nodes.png of the reference repository (nodes 1-based there)."""
    expected = [
        {(0, 1), (3, 4)},
        {(1, 2), (4, 5)},
        {(0, 1), (3, 4)},
        {(0, 3), (1, 4), (2, 5)},
    ]
    ws = tv.base_graph(6, 1)
    got = [{(int(i), int(j)) for i, j in np.argwhere(np.triu(tv.edges_of(w)))} for w in ws]
    assert got == expected
    np.testing.assert_allclose(ws[1][1:3, 1:3], [[1 / 3, 2 / 3], [2 / 3, 1 / 3]])


def test_base_graph_special_cases():
    np.testing.assert_array_equal(tv.base_graph(1, 3)[0], [[1.0]])
    # (k+1)^m nodes: plain hyper-hypercube, m rounds of cliques of size k + 1
    ws = tv.base_graph(27, 2)
    assert len(ws) == 3
    assert all((tv.edges_of(w).sum(axis=1) == 2).all() for w in ws)
    # fewest factors, better than greedy: 216 = 6 * 6 * 6 for k = 7
    ws = tv.hyper_hypercube(216, 7)
    assert len(ws) == 3
    np.testing.assert_allclose(product(ws), np.full((216, 216), 1 / 216), atol=ATOL)
    assert tv.smooth_part(2 * 3 * 3 * 7 * 11, 2) == 18
    with pytest.raises(ValueError):
        tv.hyper_hypercube(7, 2)
    # tie (4 rounds either way): decomposed form, i.e. 5 + 5 nodes then the pairs {i, i + 5}
    last = tv.edges_of(tv.base_graph(10, 3)[-1])
    np.testing.assert_array_equal(np.argwhere(np.triu(last)), [[i, i + 5] for i in range(5)])
    # inner edges never change the product
    for n, k in [(7, 1), (13, 2), (29, 3)]:
        bare = tv.base_graph(n, k, inner_edges=False)
        np.testing.assert_allclose(product(bare), product(tv.base_graph(n, k)), atol=ATOL)


def test_base_graph_returns_copies():
    ws = tv.base_graph(5, 1)
    ws[0][0, 0] = 42.0
    assert tv.base_graph(5, 1)[0][0, 0] != 42.0
    w = tv.time_varying("base", 5, 1)
    w[0, 0] = 42.0
    assert tv.time_varying("base", 5, 1)[0, 0] != 42.0


# ------------------------------------------------------------------------------------------
# time_varying, rounds_to_exact, edges_of
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "k"), [(1, 1), (6, 1), (10, 2), (25, 3), (33, 4)])
def test_time_varying_base_repeats_period(n, k):
    period = tv.rounds_to_exact("base", n, k)
    assert period == tv.base_period(n, k)
    ws = [tv.time_varying("base", n, t, k) for t in range(1, 2 * period + 1)]
    for t in range(period):
        np.testing.assert_array_equal(ws[t], ws[t + period])
        np.testing.assert_array_equal(ws[t], tv.base_graph(n, k)[t])
    j = np.full((n, n), 1.0 / n)
    np.testing.assert_allclose(product(ws[:period]), j, atol=ATOL)
    np.testing.assert_allclose(product(ws), j, atol=ATOL)
    for s in range(period):  # any window holding an aligned period is exact
        np.testing.assert_allclose(product(ws[s : s + 2 * period - 1]), j, atol=ATOL)


def test_time_varying_misaligned_window_is_not_exact():
    ws = [tv.time_varying("base", 5, t, 1) for t in range(2, 2 + tv.base_period(5, 1))]
    assert tv.consensus_error(ws) > 0.1


def test_time_varying_one_peer_and_errors():
    for t in range(1, 7):
        np.testing.assert_array_equal(
            tv.time_varying("one_peer_exponential", 12, t, k=3), tv.one_peer_exponential(12, t)
        )
    with pytest.raises(ValueError):
        tv.time_varying("ring", 4, 1)
    with pytest.raises(ValueError):
        tv.rounds_to_exact("ring", 4)
    with pytest.raises(ValueError):
        tv.time_varying("base", 4, 0)
    with pytest.raises(ValueError):
        tv.base_graph(0, 1)
    with pytest.raises(ValueError):
        tv.base_graph(4, 0)
    with pytest.raises(TypeError):
        tv.one_peer_exponential(4, True)
    with pytest.raises(TypeError):
        tv.base_graph(4.0, 1)


def test_edges_of():
    w = np.array([[0.5, 0.5, 0.0], [0.0, 0.5, 0.5], [0.5, 0.0, 0.5]])
    expected = np.array([[False, True, False], [False, False, True], [True, False, False]])
    np.testing.assert_array_equal(tv.edges_of(w), expected)
    np.testing.assert_array_equal(tv.edges_of(np.eye(3)), np.zeros((3, 3), dtype=bool))
    with pytest.raises(ValueError):
        tv.edges_of(np.ones(3))


# ------------------------------------------------------------------------------------------
# Spanning trees
# ------------------------------------------------------------------------------------------


def assert_spanning_tree(tree: np.ndarray, adj: np.ndarray) -> None:
    n = adj.shape[0]
    assert tree.dtype == bool and np.array_equal(tree, tree.T)
    assert not tree.diagonal().any()
    assert tree.sum() == 2 * (n - 1)  # n - 1 edges
    assert not (tree & ~adj).any()  # subset of the graph
    assert np.isfinite(floyd_warshall(tree)).all()  # connected


@pytest.mark.parametrize(
    ("name", "adj", "center", "depth", "diameter"),
    [
        ("ring8", ring(8), 0, 4, 7),
        ("ring7", ring(7), 0, 3, 6),
        ("star6", star(6, hub=3), 3, 1, 2),
        ("complete5", complete(5), 0, 1, 2),
        ("path7", path(7), 3, 3, 6),
        ("path6", path(6), 2, 3, 5),
        ("single", np.zeros((1, 1), dtype=bool), 0, 0, 0),
        ("pair", path(2), 0, 1, 1),
    ],
)
def test_spanning_tree_known_graphs(name, adj, center, depth, diameter):
    tree = tv.spanning_tree(adj)
    assert_spanning_tree(tree, adj)
    assert tv.graph_center(adj) == center
    assert floyd_warshall(tree)[center].max() == depth
    assert tv.tree_diameter(tree) == diameter


def test_spanning_tree_ring8_is_two_arms():
    tree = tv.spanning_tree(ring(8))
    expected = np.zeros((8, 8), dtype=bool)
    for i, j in [(0, 1), (1, 2), (2, 3), (3, 4), (0, 7), (7, 6), (6, 5)]:  # arms from centre 0
        expected[i, j] = expected[j, i] = True
    np.testing.assert_array_equal(tree, expected)
    assert tv.tree_diameter(tree) == 7
    np.testing.assert_array_equal(tv.spanning_tree(complete(5)), star(5, hub=0))


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 12), st.integers(0, 2**32 - 1), st.floats(0.0, 0.6))
def test_spanning_tree_random_connected_graphs(n, seed, density):
    rng = np.random.default_rng(seed)
    adj = np.zeros((n, n), dtype=bool)
    for v in range(1, n):  # random tree keeps it connected
        u = int(rng.integers(v))
        adj[u, v] = adj[v, u] = True
    extra = np.triu(rng.random((n, n)) < density, 1)
    adj |= extra | extra.T
    tree = tv.spanning_tree(adj)
    assert_spanning_tree(tree, adj)
    dist = floyd_warshall(adj)
    ecc = dist.max(axis=1)
    center = int(np.argmin(ecc))
    assert tv.graph_center(adj) == center
    np.testing.assert_array_equal(tv.eccentricities(adj), ecc)
    assert floyd_warshall(tree)[center].max() == ecc.min()  # depth = radius: optimal
    tree_diam = floyd_warshall(tree).max()
    assert tv.tree_diameter(tree) == tree_diam
    assert dist.max() <= tree_diam <= 2 * ecc.min()


def test_spanning_tree_of_base_graph_union_and_errors():
    adj = np.zeros((13, 13), dtype=bool)
    for w in tv.base_graph(13, 2):
        adj |= tv.edges_of(w)
    assert_spanning_tree(tv.spanning_tree(adj), adj)
    disconnected = np.zeros((4, 4), dtype=bool)
    disconnected[0, 1] = disconnected[1, 0] = True
    with pytest.raises(ValueError):
        tv.spanning_tree(disconnected)
    with pytest.raises(ValueError):
        tv.spanning_tree(np.triu(complete(3)))
    with pytest.raises(ValueError):
        tv.tree_diameter(complete(3))
