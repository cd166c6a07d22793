"""Time-varying communication graphs whose gossip averages exactly in finitely many rounds, and
the spanning trees relay averaging runs on.

Pure numpy. Every node holds adapter weights, and in each round it replaces them by a weighted
average of its own and its in-neighbours' weights.

Conventions
-----------
* ``n`` nodes with ids ``0 .. n-1``. A mixing matrix ``W`` has shape ``(n, n)``. One gossip round
  maps the stacked node states ``X`` (shape ``(n, d)``) to ``W @ X``: row ``i`` of ``W`` is what
  node ``i`` mixes, and ``W[i, j] > 0`` means that node ``i`` receives from node ``j``.
* Rounds are 1-based, ``t = 1, 2, ...``. After rounds ``1 .. T`` the states are
  ``W_T @ ... @ W_1 @ X`` (:func:`mixing_product`).
* ``J = 11^T / n`` (shape ``(n, n)``) is exact averaging. Every matrix here is doubly stochastic
  and non-negative, so ``||W_T ... W_1 - J||_2`` (:func:`consensus_error`) is the exact worst-case
  factor by which ``T`` rounds shrink the disagreement ``X - J X`` (Frobenius norm, any ``d``).

Graphs
------
* :func:`one_peer_exponential` -- one-peer exponential graph (Ying et al., NeurIPS 2021,
  arXiv 2110.13363). One message per node per round, directed. Exact after
  ``tau = ceil(log2 n)`` rounds only when ``n`` is a power of two.
* :func:`base_graph` -- Base-(k+1) graph (Takezawa et al., NeurIPS 2023, arXiv 2305.11420,
  reference code https://github.com/yukiTakezawa/BaseGraph). Symmetric, at most ``k`` peers per
  node per round, exact after one period for every ``n >= 1`` and ``k >= 1``.
* :func:`time_varying` -- round ``t`` of either kind; :func:`rounds_to_exact` -- when it is exact.
* :func:`spanning_tree` / :func:`tree_diameter` -- a minimum-depth BFS spanning tree (for relay
  averaging along a tree).

One-peer exponential graph when n is not a power of two (measured)
------------------------------------------------------------------
All its ``W_t`` are circulant, so they commute and are normal: the error of any ``T`` rounds is
``max_{j=1..n-1} prod_t |cos(pi * j * hop_t / n)|``, whatever the order of the rounds. So no
number of rounds is ever exactly ``J`` for such ``n`` (for ``j = 1`` a factor
``cos(pi * 2^r / n)`` vanishes only if ``n`` divides ``2^(r+1)``), yet one period always contracts
(the hop-1 factor ``|cos(pi * j / n)|`` is ``< 1`` for every ``j``). Measured with
:func:`consensus_error` and :func:`one_peer_rounds_to_error` (rounds counted from ``t = 1``)::

    n tau ||P-J|| T3 T6  |   n tau ||P-J|| T3 T6  |   n tau ||P-J|| T3 T6
    3   2  0.2500 10 20  |    5   3  0.2023 14 26  |    6   3  0.2165 14 28
    7   3  0.1250 12 21  |    9   4  0.1175 15 27  |   10   4  0.1924 19 35
   11   4  0.2196 19 38  |   12   4  0.2091 19 36  |   13   4  0.1732 16 32
   14   4  0.1219 15 28  |   15   4  0.0625 12 20  |   17   5  0.0614 14 24
   18   5  0.1157 19 34  |   19   5  0.1589 19 39  |   20   5  0.1900 23 44
   21   5  0.2091 24 45  |   22   5  0.2173 24 48  |   23   5  0.2162 24 47
   24   5  0.2073 24 45  |   25   5  0.1921 24 44  |   26   5  0.1719 20 40
   27   5  0.1479 20 39  |   28   5  0.1211 19 35  |   29   5  0.0923 15 30
   30   5  0.0622 15 25  |   31   5  0.0313 10 20  |   33   6  0.0311 11 23

``P`` = product of rounds ``1 .. tau``; ``T3`` / ``T6`` = fewest rounds with error ``<= 1e-3`` /
``<= 1e-6``. So for ``3 <= n <= 33`` one period contracts by 0.031 .. 0.25 (worst ``n = 3``,
then ``n = 11, 22, 23``), i.e. about 2 to 5 periods (10 to 24 rounds) reach ``1e-3`` and 4 to 10
periods (20 to 48 rounds) reach ``1e-6``; the Base-2 graph (also one peer per round) is exact
after at most 11 rounds for these ``n``. Closed form for ``n = 2^m - 1``: ``P = (I + n J) / (n+1)``,
so ``||P - J|| = 1 / (n + 1)`` exactly.

Base-(k+1) graph: construction
------------------------------
*Hyper-hypercube* (``n`` whose prime factors are all ``<= k + 1``, e.g. ``n = (k+1)^m``): write
``n = f_1 * ... * f_m`` with factors in ``2 .. k+1`` and number the nodes in that mixed radix;
round ``r`` averages each clique of nodes that differ only in digit ``r``. Each round is a
projection ``I (x) J_{f_r} (x) I``; after the ``m`` rounds every node holds the exact mean.

*Simple Base-(k+1) graph* (any ``n``): write ``n`` in base ``k + 1``,
``n = sum_l a_l (k+1)^p_l`` (``p_1 > ... > p_L``, digits ``1 <= a_l <= k``), and split the nodes
into consecutive groups ``V_l`` of ``a_l (k+1)^p_l`` nodes, each made of ``a_l`` sub-blocks of
``(k+1)^p_l`` nodes. (1) Every group averages internally with its own hyper-hypercube. (2) In
stage ``s = 1 .. L-1`` every node of the later groups ``V_{s+1} u ... u V_L`` (fewer than
``(k+1)^p_s`` nodes) exchanges with one fresh node of each sub-block of ``V_s``, taking the share
``|V_s| / |V_s u ... u V_L|`` of ``V_s``'s mean. Afterwards the later groups hold a value in which
``V_1 .. V_s`` are weighted exactly as in the global mean, and each sub-block of ``V_s`` holds, in
total, exactly ``(k+1)^p_s`` times the global mean. (3) So one hyper-hypercube inside each
sub-block of ``V_s`` (run right after stage ``s``, in parallel with later stages) finishes ``V_s``;
``V_L`` is finished by stage ``L-1``. Period ``2 p_1 + 1 + [a_1 > 1]`` rounds.

*Base-(k+1) graph*: also try ``n = smooth * rest``, with ``smooth`` the largest divisor of ``n``
with prime factors ``<= k + 1``: the simple Base-(k+1) graph inside ``smooth`` blocks of ``rest``
consecutive nodes (in parallel), then a hyper-hypercube across blocks (the ``j``-th nodes of all
blocks form one hyper-hypercube). Keep the shorter of the two (ties: the decomposed one). E.g.
``n = 6, k = 1``: pairs inside ``{0,1,2}`` and ``{3,4,5}`` (3 rounds), then ``{i, i+3}``: 4 rounds,
as in the figure of the reference repository. No shorter prefix of a period is exact, and the
rounds do not commute: a window of ``period`` rounds that starts mid-period is in general not
exact (all nodes must agree on ``t``); any ``2 * period - 1`` consecutive rounds are.

This module follows the paper and the reference repository (MIT licence) but is written anew.
Deliberate differences, none of which changes a period length for ``k <= 6`` (checked against
the reference code for ``n <= 40``, ``k <= 7``) nor any product: in phase (1) smaller groups idle
instead of repeating hyper-hypercube rounds; ``V_L`` runs none of the reference's no-op rounds
after its stage; in a stage, later nodes take partners in increasing id order; hyper-hypercube
factorizations have the fewest factors (the reference's greedy choice can use more when
``k >= 7``, e.g. ``n = 216``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

KINDS: tuple[str, ...] = ("one_peer_exponential", "base")


# --------------------------------------------------------------------------------------------
# Generic helpers
# --------------------------------------------------------------------------------------------


def _check_int(name: str, value: object, minimum: int) -> int:
    """Return ``value`` as an ``int``; raise unless it is an integer (not bool) ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def consensus_matrix(n: int) -> np.ndarray:
    """``J = 11^T / n``, shape ``(n, n)``: one multiplication averages all nodes exactly."""
    n = _check_int("n", n, 1)
    return np.full((n, n), 1.0 / n)


def is_power_of_two(n: int) -> bool:
    """True for ``n = 1, 2, 4, 8, ...``."""
    n = _check_int("n", n, 1)
    return n & (n - 1) == 0


def mixing_product(ws: Sequence[np.ndarray]) -> np.ndarray:
    """``W_T @ ... @ W_1`` for ``ws = [W_1, ..., W_T]``: the map of ``T`` rounds run in order.

    Every ``W`` has shape ``(n, n)``; so has the result. An empty ``ws`` is not allowed (``n``
    would be unknown).
    """
    if len(ws) == 0:
        raise ValueError("need at least one mixing matrix")
    out = np.eye(ws[0].shape[0])  # (n, n)
    for w in ws:
        out = w @ out  # round applied after all previous ones
    return out


def consensus_error(ws: Sequence[np.ndarray]) -> float:
    """``||W_T ... W_1 - J||_2`` for ``ws = [W_1, ..., W_T]``; 0 means exact averaging.

    For doubly stochastic ``W_t`` this is the worst-case contraction of the disagreement
    ``X - J X`` by the ``T`` rounds.
    """
    prod = mixing_product(ws)  # (n, n)
    return float(np.linalg.norm(prod - consensus_matrix(prod.shape[0]), ord=2))


def edges_of(w: np.ndarray, tol: float = 0.0) -> np.ndarray:
    """Boolean support of ``W`` off the diagonal, shape ``(n, n)``.

    ``A[i, j]`` is True when ``W[i, j] > tol`` and ``i != j``, i.e. node ``i`` receives from node
    ``j`` in that round. Symmetric for the Base graph, directed for the one-peer graph.
    """
    w = np.asarray(w)
    if w.ndim != 2 or w.shape[0] != w.shape[1]:
        raise ValueError(f"W must be square, got shape {w.shape}")
    adj = w > tol  # (n, n)
    np.fill_diagonal(adj, False)
    return adj


# --------------------------------------------------------------------------------------------
# One-peer exponential graph (Ying et al., 2021)
# --------------------------------------------------------------------------------------------


def one_peer_period(n: int) -> int:
    """``tau = ceil(log2 n)``, the length of the hop cycle (1 for ``n = 1``, by convention)."""
    n = _check_int("n", n, 1)
    return max(1, (n - 1).bit_length())  # (n-1).bit_length() == ceil(log2 n) for n >= 1


def one_peer_hop(n: int, t: int) -> int:
    """Hop of round ``t`` (1-based): ``2 ** ((t - 1) mod tau)``; 0 for ``n = 1`` (no message).

    So ``t = 1`` uses hop 1, ``t = 2`` hop 2, ..., ``t = tau`` hop ``2^(tau-1)``, and
    ``t = tau + 1`` starts again with hop 1. Always ``hop < n``.
    """
    n = _check_int("n", n, 1)
    t = _check_int("t", t, 1)
    if n == 1:
        return 0
    return 2 ** ((t - 1) % one_peer_period(n))


def one_peer_exponential(n: int, t: int) -> np.ndarray:
    """``W_t = (I + P_t) / 2`` of the one-peer exponential graph, shape ``(n, n)``.

    In round ``t`` node ``i`` sends to ``(i + hop) mod n`` and receives from
    ``(i - hop) mod n``, with ``hop = one_peer_hop(n, t)``; row ``i`` has ``1/2`` on ``i`` and
    ``1/2`` on ``(i - hop) mod n``. Doubly stochastic and directed: symmetric only when
    ``hop = n / 2`` (the last round of a period when ``n`` is a power of two) and for ``n <= 2``.
    ``n = 1`` gives ``[[1.]]``; ``n = 2`` gives ``J`` every round.

    The reference code of Takezawa et al. mixes ``(i + hop) mod n`` instead: the mirror image,
    with the same spectrum and the same exactness properties.
    """
    hop = one_peer_hop(n, t)
    if hop == 0:
        return np.ones((1, 1))
    idx = np.arange(n)  # (n,)
    w = 0.5 * np.eye(n)  # (n, n)
    w[idx, (idx - hop) % n] += 0.5  # hop < n, so never on the diagonal
    return w


def one_peer_rounds_to_error(n: int, eps: float, max_rounds: int = 10_000) -> int:
    """Fewest rounds ``T`` (from ``t = 1``) with ``consensus_error(W_1..W_T) <= eps``.

    Raises ``RuntimeError`` if ``max_rounds`` do not suffice. For ``n`` a power of two the answer
    is at most ``tau`` (exact averaging).
    """
    n = _check_int("n", n, 1)
    j = consensus_matrix(n)  # (n, n)
    prod = np.eye(n)  # (n, n)
    for t in range(1, max_rounds + 1):
        prod = one_peer_exponential(n, t) @ prod
        if np.linalg.norm(prod - j, ord=2) <= eps:
            return t
    raise RuntimeError(f"error > {eps} after {max_rounds} rounds for n = {n}")


# --------------------------------------------------------------------------------------------
# Base-(k+1) graph (Takezawa et al., 2023)
# --------------------------------------------------------------------------------------------


@lru_cache(maxsize=4096)
def _min_factors(m: int, k: int) -> tuple[int, ...] | None:
    """Fewest factors, each in ``2 .. k+1``, with product ``m`` (ascending); None if impossible.

    Exhaustive search with memoisation: plain greedy (largest factor first) is not always
    optimal, e.g. ``216 = 8*3*3*3`` but ``= 6*6*6`` for ``k = 7``.
    """
    if m == 1:
        return ()
    best: tuple[int, ...] | None = None
    for f in range(min(k + 1, m), 1, -1):
        if m % f == 0:
            rest = _min_factors(m // f, k)
            if rest is not None and (best is None or len(rest) + 1 < len(best)):
                best = tuple(sorted((*rest, f)))
    return best


def smooth_part(n: int, k: int) -> int:
    """Largest divisor of ``n`` whose prime factors are all ``<= k + 1``."""
    n = _check_int("n", n, 1)
    k = _check_int("k", k, 1)
    smooth = 1
    for p in range(2, k + 2):  # composite p never divides once its prime factors are removed
        while n % p == 0:
            n //= p
            smooth *= p
    return smooth


def hyper_hypercube(n: int, k: int) -> list[np.ndarray]:
    """The k-peer hyper-hypercube: exact averaging of ``n`` nodes, ``n`` (k+1)-smooth.

    Write ``n = f_1 * ... * f_m`` with the fewest factors ``f_r`` in ``2 .. k+1`` and node ``i``
    in mixed radix, ``i = d_1 + f_1 * (d_2 + f_2 * (d_3 + ...))``. Round ``r`` averages, with
    weight ``1 / f_r``, each clique of the ``f_r`` nodes that differ only in digit ``d_r``
    (``f_r - 1 <= k`` peers). The rounds are commuting projections ``I (x) J_{f_r} (x) I`` and
    their product is ``J``. Returns ``m`` matrices of shape ``(n, n)`` (``[[1.]]`` for ``n = 1``).
    """
    n = _check_int("n", n, 1)
    k = _check_int("k", k, 1)
    factors = _min_factors(n, k)
    if factors is None:
        raise ValueError(f"n = {n} has a prime factor > k + 1 = {k + 1}")
    if not factors:
        return [np.ones((1, 1))]
    ws, before = [], 1
    for f in factors:
        after = n // (before * f)
        clique = np.full((f, f), 1.0 / f)  # (f, f)
        ws.append(np.kron(np.eye(after), np.kron(clique, np.eye(before))))  # (n, n)
        before *= f
    return ws


def _digit_groups(n: int, k: int) -> list[tuple[int, int]]:
    """``[(a_1, p_1), ..., (a_L, p_L)]``: the non-zero base-(k+1) digits of ``n``, leading first.

    ``n = sum_l a_l (k+1)^p_l`` with ``p_1 > ... > p_L >= 0`` and ``1 <= a_l <= k``.
    """
    groups, p = [], 0
    while n:
        n, a = divmod(n, k + 1)
        if a:
            groups.append((a, p))
        p += 1
    return groups[::-1]


def _put(w: np.ndarray, start: int, local: np.ndarray) -> None:
    """Write the ``(m, m)`` matrix ``local`` on the diagonal block of ``w`` at ``start``."""
    m = local.shape[0]
    w[start : start + m, start : start + m] = local


def _stage_round(w: np.ndarray, start: int, a: int, block: int, k: int, inner: bool) -> None:
    """Add, in place, the round in which group ``V_s`` hands its mean to all later groups.

    ``V_s = [start, start + a * block)`` has ``a`` sub-blocks of ``block = (k+1)^p`` nodes, all
    holding the same value; ``R = [start + a * block, n)`` are the later groups. The q-th node of
    ``R`` pairs with the q-th last node of every sub-block (``a <= k`` peers; ``|R| < block``).
    With ``alpha = |V_s| / |V_s u R|`` it keeps ``1 - alpha`` and takes ``alpha / a`` from each
    partner, which keeps ``1 - alpha / a``. With ``inner`` the unpaired nodes of ``V_s`` are
    averaged in cliques of ``k + 1`` (a no-op on values, as in the reference code).
    """
    n = w.shape[0]
    rest = np.arange(start + a * block, n)  # (S,)  nodes of the later groups
    alpha = a * block / (n - start)
    for c in range(a):
        partner = start + (c + 1) * block - 1 - np.arange(rest.size)  # (S,)
        w[rest, partner] = alpha / a
        w[partner, rest] = alpha / a
        w[partner, partner] = 1.0 - alpha / a
    w[rest, rest] = 1.0 - alpha
    if inner:
        idle = [start + c * block + q for c in range(a) for q in range(block - rest.size)]
        for lo in range(0, len(idle) - 1, k + 1):
            clique = idle[lo : lo + k + 1]
            if len(clique) > 1:
                w[np.ix_(clique, clique)] = 1.0 / len(clique)


def simple_base_graph(n: int, k: int, inner_edges: bool = True) -> list[np.ndarray]:
    """One period of the simple Base-(k+1) graph (exact averaging for any ``n``), ``(n, n)`` each.

    ``n`` (k+1)-smooth: the hyper-hypercube. Otherwise split ``n`` by its base-(k+1) digits into
    contiguous groups ``V_l`` of ``a_l (k+1)^p_l`` nodes (see the module docstring): (1) each group
    runs its own hyper-hypercube; (2) stage ``s = 1 .. L-1``: ``V_s`` pairs with all later groups
    (:func:`_stage_round`); (3) right after its stage, each sub-block of ``V_s`` runs its
    hyper-hypercube. Period: ``2 p_1 + 1 + [a_1 > 1]`` rounds.
    """
    n = _check_int("n", n, 1)
    k = _check_int("k", k, 1)
    if _min_factors(n, k) is not None:
        return hyper_hypercube(n, k)
    groups = _digit_groups(n, k)  # L >= 2 because n is not (k+1)-smooth
    sizes = [a * (k + 1) ** p for a, p in groups]
    starts = [sum(sizes[:i]) for i in range(len(sizes))]  # first node of each group
    heads = [hyper_hypercube(size, k) for size in sizes]
    n_head = len(heads[0])
    ws = [np.eye(n) for _ in range(n_head + 1 + groups[0][1])]
    for start, head in zip(starts, heads, strict=True):  # (1) every group in parallel
        for r, local in enumerate(head):
            _put(ws[r], start, local)
    for s, ((a, p), start) in enumerate(zip(groups[:-1], starts[:-1], strict=True)):
        block = (k + 1) ** p
        _stage_round(ws[n_head + s], start, a, block, k, inner_edges)  # (2)
        for r, local in enumerate(hyper_hypercube(block, k)):  # (3) its a sub-blocks
            _put(ws[n_head + s + 1 + r], start, np.kron(np.eye(a), local))
    return ws


@lru_cache(maxsize=256)
def _base_graph_cached(n: int, k: int, inner_edges: bool) -> tuple[np.ndarray, ...]:
    """Read-only matrices of :func:`base_graph` (cached: time_varying asks for them every round)."""
    ws = simple_base_graph(n, k, inner_edges)
    smooth = smooth_part(n, k)
    rest = n // smooth
    if smooth > 1 and rest > 1:
        inner = simple_base_graph(rest, k, inner_edges)  # within `smooth` blocks of `rest` nodes
        outer = hyper_hypercube(smooth, k)  # across the blocks, one node per block per clique
        if len(inner) + len(outer) <= len(ws):
            ws = [np.kron(np.eye(smooth), w) for w in inner]
            ws += [np.kron(w, np.eye(rest)) for w in outer]
    for w in ws:
        w.setflags(write=False)
    return tuple(ws)


def base_graph(n: int, k: int, inner_edges: bool = True) -> list[np.ndarray]:
    """One period ``[W_1, ..., W_T]`` of the Base-(k+1) graph, each of shape ``(n, n)``.

    Every ``W`` is symmetric, doubly stochastic and non-negative, every node has at most ``k``
    peers in it, and ``W_T ... W_1 = J`` exactly (up to rounding) for any ``n, k >= 1``.
    Construction (module docstring): the shorter of the simple Base-(k+1) graph on all ``n`` nodes
    and, with ``n = smooth * rest`` (``smooth`` = (k+1)-smooth part), the simple Base-(k+1) graph
    inside ``smooth`` blocks of ``rest`` consecutive nodes followed by the hyper-hypercube across
    the blocks (ties go to the latter, as in the reference code). ``inner_edges`` adds the no-op
    cliques of the reference code (they do not change any product). Returns fresh copies.
    """
    n = _check_int("n", n, 1)
    k = _check_int("k", k, 1)
    return [w.copy() for w in _base_graph_cached(n, k, bool(inner_edges))]


def base_period(n: int, k: int) -> int:
    """Number of rounds of one period of :func:`base_graph` (``<= 2 log_{k+1} n + 2``),
    counted as the construction counts them, without building a matrix (a config asks it)."""
    n = _check_int("n", n, 1)
    k = _check_int("k", k, 1)
    period = _simple_period(n, k)
    smooth = smooth_part(n, k)
    rest = n // smooth
    if smooth > 1 and rest > 1:
        period = min(period, _simple_period(rest, k) + _cube_period(smooth, k))
    return period


def _cube_period(n: int, k: int) -> int:
    """Rounds of :func:`hyper_hypercube` on ``n`` (k+1)-smooth nodes."""
    return max(1, len(_min_factors(n, k)))


def _simple_period(n: int, k: int) -> int:
    """Rounds of :func:`simple_base_graph` on ``n`` nodes."""
    if _min_factors(n, k) is not None:
        return _cube_period(n, k)
    (a, p), *_ = _digit_groups(n, k)
    return _cube_period(a * (k + 1) ** p, k) + 1 + p


# --------------------------------------------------------------------------------------------
# Unified round-t interface
# --------------------------------------------------------------------------------------------


def time_varying(kind: str, n: int, t: int, k: int = 1) -> np.ndarray:
    """Mixing matrix of round ``t`` (1-based), shape ``(n, n)``.

    ``kind="one_peer_exponential"``: :func:`one_peer_exponential` (``k`` is ignored).
    ``kind="base"``: the period of :func:`base_graph` repeated; round ``t`` uses matrix number
    ``(t - 1) mod base_period(n, k)`` (0-based) of it. Products over rounds ``1 .. m * period`` are
    exactly ``J``; a window starting mid-period is only guaranteed exact once it contains a whole
    aligned period, i.e. after ``2 * period - 1`` rounds.
    """
    t = _check_int("t", t, 1)
    if kind == "one_peer_exponential":
        return one_peer_exponential(n, t)
    if kind == "base":
        ws = _base_graph_cached(_check_int("n", n, 1), _check_int("k", k, 1), True)
        return ws[(t - 1) % len(ws)].copy()
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


def rounds_to_exact(kind: str, n: int, k: int = 1) -> int | None:
    """Rounds from ``t = 1`` after which the product is exactly ``J``, or None if never.

    ``"base"``: :func:`base_period`. ``"one_peer_exponential"``: ``tau = ceil(log2 n)`` when ``n``
    is a power of two (1 for ``n = 1``), None otherwise (it only converges geometrically).
    """
    if kind == "base":
        return base_period(n, k)
    if kind == "one_peer_exponential":
        return one_peer_period(n) if is_power_of_two(n) else None
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


# --------------------------------------------------------------------------------------------
# Spanning trees (relay averaging)
# --------------------------------------------------------------------------------------------


def _as_adjacency(adj: np.ndarray) -> np.ndarray:
    """Validated boolean copy of a symmetric adjacency, diagonal cleared, shape ``(n, n)``."""
    a = np.array(adj, dtype=bool)
    if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape[0] == 0:
        raise ValueError(f"adjacency must be a non-empty square matrix, got shape {a.shape}")
    np.fill_diagonal(a, False)
    if not np.array_equal(a, a.T):
        raise ValueError("adjacency must be symmetric")
    return a


def _bfs(adj: np.ndarray, root: int) -> tuple[np.ndarray, np.ndarray]:
    """Distances and BFS parents from ``root``, both ``(n,)`` ints (-1: unreached / root).

    Neighbours are visited by increasing id, so the tree is deterministic.
    """
    n = adj.shape[0]
    dist = np.full(n, -1)  # (n,)
    parent = np.full(n, -1)  # (n,)
    dist[root] = 0
    queue = deque([root])
    while queue:
        u = queue.popleft()
        for v in np.flatnonzero(adj[u] & (dist < 0)):
            dist[v], parent[v] = dist[u] + 1, u
            queue.append(int(v))
    return dist, parent


def eccentricities(adj: np.ndarray) -> np.ndarray:
    """Eccentricity of every node, ``(n,)`` ints; raises ``ValueError`` if not connected."""
    a = _as_adjacency(adj)
    ecc = np.empty(a.shape[0], dtype=int)  # (n,)
    for root in range(a.shape[0]):
        dist, _ = _bfs(a, root)
        if (dist < 0).any():
            raise ValueError("graph is not connected")
        ecc[root] = dist.max()
    return ecc


def graph_center(adj: np.ndarray) -> int:
    """A node of minimum eccentricity (the lowest id among ties)."""
    return int(np.argmin(eccentricities(adj)))


def spanning_tree(adj: np.ndarray) -> np.ndarray:
    """BFS spanning tree rooted at :func:`graph_center`, as a symmetric boolean ``(n, n)``.

    Its depth from that root equals the graph radius, the smallest depth of any rooted spanning
    tree (tree distances are never shorter than graph distances). Its diameter is at most
    ``2 * radius`` but not always the smallest possible (a tree centred on the middle of an edge
    can be one shorter). On a ring every spanning tree is a path: here two arms from the centre,
    diameter ``n - 1``, depth ``floor(n / 2)``. Costs ``n`` BFS runs, ``O(n^3)`` with a dense
    adjacency, which is fine for the few hundred nodes of a run.
    """
    a = _as_adjacency(adj)
    _, parent = _bfs(a, graph_center(a))
    tree = np.zeros_like(a)  # (n, n)
    child = np.flatnonzero(parent >= 0)  # (n-1,)
    tree[child, parent[child]] = True
    tree[parent[child], child] = True
    return tree


def tree_diameter(tree: np.ndarray) -> int:
    """Longest path (in edges) of a tree given as a symmetric adjacency; raises if not a tree."""
    a = _as_adjacency(tree)
    n = a.shape[0]
    if a.sum() != 2 * (n - 1):
        raise ValueError("not a tree: a tree on n nodes has n - 1 edges")
    dist, _ = _bfs(a, 0)
    if (dist < 0).any():
        raise ValueError("not a tree: not connected")
    far = int(np.argmax(dist))  # an end of a longest path
    return int(_bfs(a, far)[0].max())
