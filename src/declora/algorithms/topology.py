"""Communication graphs and gossip mixing matrices.

This module only decides who talks to whom and with what weight; it never touches devices or
process groups. Adjacency matrices are symmetric boolean ``(n, n)`` arrays without self loops;
mixing matrices are symmetric doubly stochastic ``(n, n)`` float64 arrays supported on the
edges plus the diagonal.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence

import numpy as np

TOPOLOGIES = ("ring", "complete", "star", "grid", "erdos_renyi", "exponential", "custom")
MIXING_RULES = ("metropolis", "laplacian", "uniform")

_ER_TRIES = 100


def build_graph(
    kind: str,
    n: int,
    *,
    p: float = 0.3,
    edges: Sequence[Sequence[int]] | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Build the connected, symmetric boolean ``(n, n)`` adjacency of a named topology.

    ``kind`` is one of ``TOPOLOGIES`` and ``n`` (at least 1) is the node count; the result has
    no self loops. ``p`` (edge probability, in (0, 1]) and ``seed`` are used only by
    ``erdos_renyi``, and ``edges`` (0-based node pairs) only by ``custom``. Raises ValueError
    when the kind is unknown, ``n < 1``, ``p`` is out of range, the edge list is invalid, or
    the graph cannot be made connected.
    """
    if kind not in TOPOLOGIES:
        raise ValueError(f"topology.kind must be one of {', '.join(TOPOLOGIES)}; got {kind!r}")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"topology needs an integer node count >= 1; got nodes={n!r}")
    n = int(n)
    if kind == "erdos_renyi":
        adj = _erdos_renyi(n, p, seed)
    elif kind == "custom":
        adj = _custom(n, edges)
    else:
        adj = _structured(kind, n)
    adj |= adj.T  # symmetrise the one-directional links set above
    np.fill_diagonal(adj, False)
    if not is_connected(adj):
        # Only custom graphs can get here; the structured kinds are connected by construction.
        comps = _components(adj)
        raise ValueError(
            f"topology.edges leaves the graph disconnected ({len(comps)} components: "
            f"{_fmt_components(comps)}); add edges so every node is reachable"
        )
    return adj


def mixing_matrix(adj: np.ndarray, rule: str = "metropolis") -> np.ndarray:
    """Compute gossip weights for a graph: a symmetric doubly stochastic ``(n, n)`` float64 W.

    ``adj`` is a symmetric boolean ``(n, n)`` adjacency without self loops; it need not be
    connected. W is zero off the edges and the diagonal. ``rule`` is one of ``MIXING_RULES``:
    ``metropolis`` uses ``1 / (1 + max(deg_i, deg_j))`` on edges; ``laplacian`` uses
    ``I - 2 L / (3 lambda_max(L))`` as in the Dec-LoRA paper; ``uniform`` uses
    ``1 / (1 + d_max)`` on every edge (1/3 everywhere on a ring). Raises ValueError when the
    rule is unknown or ``adj`` is not a valid adjacency matrix.
    """
    if rule not in MIXING_RULES:
        raise ValueError(f"topology.mixing must be one of {', '.join(MIXING_RULES)}; got {rule!r}")
    a = _as_adj(adj)  # (n, n) bool
    n = a.shape[0]
    af = a.astype(np.float64)  # (n, n)
    deg = af.sum(axis=1)  # (n,)

    if rule == "metropolis":
        W = np.where(a, 1.0 / (1.0 + np.maximum(deg[:, None], deg[None, :])), 0.0)
    elif rule == "uniform":
        d_max = deg.max() if n else 0.0
        W = af / (1.0 + d_max)
    else:  # laplacian
        L = np.diag(deg) - af  # (n, n)
        lam_max = np.linalg.eigvalsh(L)[-1] if n else 0.0
        # No edges at all (lam_max == 0) means nothing to mix: W = I.
        scale = 2.0 / (3.0 * lam_max) if lam_max > 0.0 else 0.0
        W = np.eye(n) - scale * L
    if rule != "laplacian":
        # Diagonal takes the leftover mass so every row (and, by symmetry, column) sums to 1.
        W[np.diag_indices(n)] = 1.0 - W.sum(axis=1)
    check_mixing(W, a)
    return W


def check_mixing(W: np.ndarray, adj: np.ndarray, atol: float = 1e-9) -> None:
    """Validate a candidate mixing matrix ``W`` ``(n, n)`` against the adjacency ``adj``.

    ``W`` may only be non-zero on the edges of ``adj`` ``(n, n)`` and on the diagonal. Raises
    ValueError unless ``W`` is square, finite, symmetric, non-negative, has rows and columns
    summing to 1, and is zero off the edges. ``atol`` is the absolute tolerance for every check.
    """
    W = np.asarray(W, dtype=np.float64)
    adj = np.asarray(adj)
    if W.ndim != 2 or W.shape[0] != W.shape[1]:
        raise ValueError(f"mixing matrix must be square (n, n); got shape {W.shape}")
    if adj.shape != W.shape:
        raise ValueError(
            f"mixing matrix shape {W.shape} does not match adjacency shape {adj.shape}"
        )
    if not np.all(np.isfinite(W)):
        raise ValueError("mixing matrix has NaN or infinite entries")
    asym = np.abs(W - W.T)
    if asym.size and asym.max() > atol:
        i, j = np.unravel_index(np.argmax(asym), asym.shape)
        raise ValueError(
            f"mixing matrix is not symmetric: W[{i},{j}]={W[i, j]:.6g} but W[{j},{i}]={W[j, i]:.6g}"
        )
    if W.size and W.min() < -atol:
        i, j = np.unravel_index(np.argmin(W), W.shape)
        raise ValueError(f"mixing matrix has a negative entry W[{i},{j}]={W[i, j]:.6g}")
    for axis, what in ((1, "row"), (0, "column")):
        err = np.abs(W.sum(axis=axis) - 1.0)  # (n,)
        if err.size and err.max() > atol:
            k = int(np.argmax(err))
            raise ValueError(
                f"mixing matrix is not doubly stochastic: {what} {k} sums to "
                f"{W.sum(axis=axis)[k]:.12g}, not 1"
            )
    off = (adj == 0) & ~np.eye(W.shape[0], dtype=bool)  # (n, n) pairs that must not talk
    bad = np.abs(np.where(off, W, 0.0))
    if bad.size and bad.max() > atol:
        i, j = np.unravel_index(np.argmax(bad), bad.shape)
        raise ValueError(
            f"mixing matrix has weight W[{i},{j}]={W[i, j]:.6g} between nodes {i} and {j} "
            f"that are not neighbours"
        )


def spectral_gap(W: np.ndarray) -> float:
    """Return the spectral gap ``1 - |lambda_2(W)|`` of a symmetric mixing matrix.

    ``W`` is ``(n, n)`` and ``lambda_2`` its second-largest eigenvalue in absolute value; the
    gap is 1.0 for a single node, and larger means faster consensus. Raises ValueError when
    ``W`` is not a non-empty square matrix.
    """
    W = np.asarray(W, dtype=np.float64)
    if W.ndim != 2 or W.shape[0] != W.shape[1] or W.shape[0] == 0:
        raise ValueError(f"spectral_gap needs a non-empty square matrix; got shape {W.shape}")
    if W.shape[0] == 1:
        return 1.0
    mags = np.sort(np.abs(np.linalg.eigvalsh(W)))[::-1]  # (n,) descending
    return float(1.0 - mags[1])


def is_connected(adj: np.ndarray) -> bool:
    """Tell whether every node can reach every other node.

    ``adj`` is a symmetric ``(n, n)`` adjacency. True when the graph has one connected
    component; False for an empty graph.
    """
    a = np.asarray(adj) != 0
    if a.shape[0] == 0:
        return False
    return len(_components(a)) == 1


def surviving_mixing(adj: np.ndarray, up: np.ndarray) -> np.ndarray:
    """Metropolis weights on the edges that are still up.

    Used for link and node drops: nodes that lose all links keep ``W_ii = 1``. ``adj`` is the
    symmetric boolean ``(n, n)`` adjacency of the full graph and ``up`` a symmetric boolean
    ``(n, n)`` mask of live edges (entries off ``adj`` are ignored). Returns a symmetric doubly
    stochastic ``(n, n)`` W supported on ``adj & up`` plus the diagonal; the surviving graph
    may be disconnected. Raises ValueError when the shapes differ or ``up`` is not symmetric.
    """
    a = _as_adj(adj)
    u = np.asarray(up) != 0
    if u.shape != a.shape:
        raise ValueError(f"live-edge mask shape {u.shape} does not match adjacency {a.shape}")
    if not np.array_equal(u, u.T):
        raise ValueError("live-edge mask must be symmetric (a link is up in both directions)")
    return mixing_matrix(a & u, "metropolis")


def _structured(kind: str, n: int) -> np.ndarray:
    """One-directional links of a ring, complete, star, grid or exponential graph."""
    adj = np.zeros((n, n), dtype=bool)  # (n, n)
    idx = np.arange(n)
    if kind == "ring":
        if n >= 2:
            adj[idx, (idx + 1) % n] = True
    elif kind == "complete":
        adj[:] = True
    elif kind == "star":
        adj[0, 1:] = True
    elif kind == "grid":
        r = _grid_rows(n)
        if r == 1 and n > 3:
            raise ValueError(
                f"topology.kind=grid needs a node count with a factorisation r x c, r>=2; "
                f"got nodes={n} (prime); use topology.kind=ring or a composite node count"
            )
        cell = idx.reshape(r, n // r)  # (r, c) node ids, row-major
        adj[cell[:, :-1].ravel(), cell[:, 1:].ravel()] = True  # horizontal links
        adj[cell[:-1, :].ravel(), cell[1:, :].ravel()] = True  # vertical links
    else:  # exponential
        hop = 1
        while hop < n:
            adj[idx, (idx + hop) % n] = True
            hop *= 2
    return adj


def _grid_rows(n: int) -> int:
    """Largest divisor r of n with r <= sqrt(n)."""
    for r in range(math.isqrt(n), 0, -1):
        if n % r == 0:
            return r
    return 1


def _erdos_renyi(n: int, p: float, seed: int) -> np.ndarray:
    """Draw a connected G(n, p), redrawing from the same generator if needed."""
    try:
        p = float(p)
    except (TypeError, ValueError):
        raise ValueError(f"topology.p must be a number in (0, 1]; got p={p!r}") from None
    if not 0.0 < p <= 1.0:  # also rejects NaN
        raise ValueError(f"topology.p must be in (0, 1] for erdos_renyi; got p={p}")
    rng = np.random.default_rng(seed)
    upper = np.triu(np.ones((n, n), dtype=bool), k=1)  # (n, n) each pair once
    for _ in range(_ER_TRIES):
        adj = (rng.random((n, n)) < p) & upper
        adj |= adj.T
        if is_connected(adj):
            return adj
    raise ValueError(
        f"topology.kind=erdos_renyi with p={p} gave a disconnected graph in {_ER_TRIES} draws "
        f"(nodes={n}, seed={seed}); raise topology.p (about 2*ln(n)/n or more is safe)"
    )


def _custom(n: int, edges: Sequence[Sequence[int]] | None) -> np.ndarray:
    """Adjacency from a 0-based edge list, with each bad edge named in the error."""
    if edges is None:
        raise ValueError(
            "topology.kind=custom needs topology.edges, a list of 0-based node pairs like [[0, 1]]"
        )
    adj = np.zeros((n, n), dtype=bool)
    for e in edges:
        try:
            if len(e) != 2:
                raise TypeError
            i, j = operator.index(e[0]), operator.index(e[1])
        except TypeError:
            raise ValueError(
                f"topology.edges entry {e!r} is not a pair of integer node ids like [0, 1]"
            ) from None
        if not (0 <= i < n and 0 <= j < n):
            raise ValueError(
                f"topology.edges has edge ({i}, {j}) with a node id outside 0..{n - 1} "
                f"(nodes={n}); use 0-based ids below the node count"
            )
        if i == j:
            raise ValueError(
                f"topology.edges has self loop ({i}, {j}); remove it (self weights are implicit)"
            )
        adj[i, j] = adj[j, i] = True
    return adj


def _as_adj(adj: np.ndarray) -> np.ndarray:
    """Validate an adjacency matrix and return it as bool (n, n)."""
    a = np.asarray(adj)
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"adjacency must be square (n, n); got shape {a.shape}")
    a = a != 0
    if not np.array_equal(a, a.T):
        raise ValueError("adjacency must be symmetric (links are undirected)")
    if a.diagonal().any():
        i = int(np.flatnonzero(a.diagonal())[0])
        raise ValueError(f"adjacency has a self loop at node {i}; self weights are implicit")
    return a


def _components(adj: np.ndarray) -> list[list[int]]:
    """Connected components as sorted node lists, by breadth-first search."""
    n = adj.shape[0]
    seen = np.zeros(n, dtype=bool)
    comps = []
    for s in range(n):
        if seen[s]:
            continue
        seen[s] = True
        frontier = [s]
        comp = [s]
        while frontier:
            nxt = np.flatnonzero(adj[frontier].any(axis=0) & ~seen)
            seen[nxt] = True
            frontier = nxt.tolist()
            comp.extend(frontier)
        comps.append(sorted(comp))
    return comps


def _fmt_components(comps: list[list[int]], limit: int = 4) -> str:
    """Short human-readable listing of components, e.g. '[0, 1] [2]'."""
    shown = " ".join(str(c) if len(c) <= 8 else f"[{c[0]}..{len(c)} nodes]" for c in comps[:limit])
    return shown + (" ..." if len(comps) > limit else "")
