"""Split training rows across nodes, IID or with label / quantity skew.

Every split is driven by ``np.random.default_rng(seed)`` alone, so the same inputs and seed
always give the same parts. Parts are sorted int64 row-index arrays and never overlap.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

PARTITIONS = ("iid", "dirichlet", "label_skew", "quantity_skew")

_TRIES = 100


def partition(
    labels: np.ndarray,
    n_nodes: int,
    kind: str = "iid",
    *,
    alpha: float = 0.5,
    proportions: Sequence[Sequence[float]] | None = None,
    seed: int = 0,
    min_size: int = 1,
) -> list[np.ndarray]:
    """Split row indices ``0..len(labels)-1`` over ``n_nodes`` nodes (at least 1).

    ``labels`` are integer class ids ``0..C-1``, shape ``(N,)``. ``kind`` is one of
    ``PARTITIONS``: ``iid`` shuffles and splits evenly; ``dirichlet`` splits each class by
    ``Dir(alpha)`` shares (Hsu et al. 2019); ``label_skew`` gives every node the same size with
    class mix ``proportions[i]`` (one length-C vector per node, each summing to 1);
    ``quantity_skew`` draws node sizes from ``Dir(alpha)`` with IID labels. ``alpha`` is the
    Dirichlet concentration, > 0 (smaller means more skew), ``seed`` seeds
    ``np.random.default_rng``, and ``min_size`` (at least 1) is the fewest rows any node may
    hold. Returns one sorted int64 index array per node, disjoint; ``iid``, ``dirichlet`` and
    ``quantity_skew`` cover every row, ``label_skew`` may leave rows unused. Raises ValueError
    on bad arguments, or when some node would hold fewer than ``min_size`` rows.
    """
    if kind not in PARTITIONS:
        raise ValueError(f"partition.kind must be one of {', '.join(PARTITIONS)}; got {kind!r}")
    y = _as_labels(labels)  # (N,)
    _check_sizes(len(y), n_nodes, min_size, alpha)
    n_nodes, min_size = int(n_nodes), int(min_size)
    rng = np.random.default_rng(seed)

    if kind == "iid":
        parts = np.array_split(rng.permutation(len(y)), n_nodes)
    elif kind == "label_skew":
        parts = _label_skew(y, n_nodes, proportions, rng, min_size)
    else:
        parts = _dirichlet_retry(y, n_nodes, kind, float(alpha), rng, min_size)
    return [np.sort(p).astype(np.int64) for p in parts]


def _check_sizes(rows: int, n_nodes, min_size, alpha) -> None:
    """The node count, minimum size and concentration are valid and the rows suffice."""
    if isinstance(n_nodes, bool) or not isinstance(n_nodes, (int, np.integer)) or n_nodes < 1:
        raise ValueError(f"partition needs an integer node count >= 1; got n_nodes={n_nodes!r}")
    if isinstance(min_size, bool) or not isinstance(min_size, (int, np.integer)) or min_size < 1:
        raise ValueError(f"partition.min_size must be an integer >= 1; got {min_size!r}")
    if not (isinstance(alpha, (int, float, np.integer, np.floating)) and 0 < alpha < np.inf):
        raise ValueError(
            f"partition.alpha must be a finite number > 0 (smaller = more skew); got {alpha!r}"
        )
    if rows < n_nodes * min_size:
        raise ValueError(
            f"partition needs at least n_nodes * min_size = {n_nodes * min_size} rows; got "
            f"{rows} rows for {n_nodes} nodes; use fewer nodes or more training data"
        )


def _as_labels(labels: np.ndarray) -> np.ndarray:
    """Validate labels as a 1-D array of non-negative integer class ids."""
    y = np.asarray(labels)
    if y.ndim != 1:
        raise ValueError(f"labels must be a 1-D array of class ids; got shape {y.shape}")
    if len(y) and not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be integer class ids 0..C-1; got dtype {y.dtype}")
    if len(y) and y.min() < 0:
        raise ValueError(f"labels must be class ids 0..C-1; got a negative id {int(y.min())}")
    return y.astype(np.int64)


def _cut(rows: np.ndarray, q: np.ndarray) -> list[np.ndarray]:
    """Split rows by shares q (n,) at cumulative cut points; the last part takes the tail."""
    cuts = (np.cumsum(q) * len(rows)).astype(np.int64)[:-1]  # (n-1,)
    return np.split(rows, cuts)


def _dirichlet_retry(
    y: np.ndarray, n: int, kind: str, alpha: float, rng: np.random.Generator, min_size: int
) -> list[np.ndarray]:
    """Dirichlet label split or quantity split, redrawn until every node has min_size rows."""
    classes = [np.flatnonzero(y == c) for c in np.unique(y)]  # row ids per present class
    conc = np.full(n, alpha)  # (n,)
    for _ in range(_TRIES):
        if kind == "quantity_skew":
            parts = _cut(rng.permutation(len(y)), rng.dirichlet(conc))
        else:  # dirichlet: each class is split on its own draw
            per_class = [_cut(rng.permutation(rows), rng.dirichlet(conc)) for rows in classes]
            parts = [np.concatenate([pc[i] for pc in per_class]) for i in range(n)]
        if min(len(p) for p in parts) >= min_size:
            return parts
    raise ValueError(
        f"partition.kind={kind} left a node with fewer than min_size={min_size} rows in "
        f"{_TRIES} draws (alpha={alpha}, nodes={n}, rows={len(y)}); raise partition.alpha "
        f"or use fewer nodes"
    )


def _round_to_sum(shares: np.ndarray, m: int) -> np.ndarray:
    """Integer counts (C,) close to shares * m that add to exactly m (largest remainder)."""
    raw = shares * m  # (C,)
    counts = np.floor(raw).astype(np.int64)
    short = m - int(counts.sum())
    if short > 0:
        # Stable sort so ties go to the lower class id, keeping the result deterministic.
        order = np.argsort(-(raw - counts), kind="stable")
        counts[order[:short]] += 1
    return counts


def _label_skew(
    y: np.ndarray,
    n: int,
    proportions: Sequence[Sequence[float]] | None,
    rng: np.random.Generator,
    min_size: int,
) -> list[np.ndarray]:
    """Equal-size parts with per-node class mix given by proportions."""
    P = _check_proportions(proportions, n, y)  # (n, C)
    avail = np.bincount(y, minlength=P.shape[1])  # (C,)

    def demand(m: int) -> np.ndarray:  # (n, C) rows of each class wanted by each node
        return np.stack([_round_to_sum(P[i], m) for i in range(n)])

    # Continuous bound on m from total class demand; rounding can move the exact answer by up
    # to n rows either way, so step down from slightly above it.
    share = P.sum(axis=0)  # (C,)
    need = share > 0
    bound = int(np.min(avail[need] / share[need])) if need.any() else len(y)
    m = min(len(y) // n, bound + n)
    while m >= min_size and np.any(demand(m).sum(axis=0) > avail):
        m -= 1
    if m < min_size:
        worst = int(np.argmin(np.where(need, avail / np.where(need, share, 1), np.inf)))
        raise ValueError(
            f"partition.proportions ask for too many rows of class {worst} ({avail[worst]} "
            f"available) to give each of {n} nodes min_size={min_size} rows; balance "
            f"partition.proportions or use fewer nodes"
        )
    want = demand(m)  # (n, C)
    parts: list[list[np.ndarray]] = [[] for _ in range(n)]
    for c in range(P.shape[1]):
        rows = rng.permutation(np.flatnonzero(y == c))
        # Hand consecutive slices of the shuffled class to the nodes: no row is used twice.
        for i, chunk in enumerate(np.split(rows[: want[:, c].sum()], np.cumsum(want[:-1, c]))):
            parts[i].append(chunk)
    return [np.concatenate(p) for p in parts]


def _check_proportions(
    proportions: Sequence[Sequence[float]] | None, n: int, y: np.ndarray
) -> np.ndarray:
    """Validate label_skew proportions and return them as (n, C) float64."""
    if proportions is None:
        raise ValueError(
            "partition.kind=label_skew needs partition.proportions, one class-share vector per "
            "node, e.g. [[0.15, 0.85], [0.85, 0.15], [0.5, 0.5]]"
        )
    try:
        P = np.asarray(proportions, dtype=np.float64)  # (n, C)
    except (TypeError, ValueError):
        raise ValueError(
            "partition.proportions must be a list of equal-length number lists, one per node"
        ) from None
    if P.ndim != 2 or P.shape[0] != n:
        raise ValueError(
            f"partition.proportions must hold one class-share vector per node ({n} nodes); "
            f"got an array of shape {P.shape}"
        )
    n_classes = P.shape[1]
    if len(y) and y.max() >= n_classes:
        raise ValueError(
            f"labels have class ids up to {int(y.max())} but partition.proportions vectors have "
            f"length {n_classes}; give one share per class"
        )
    if not np.all(np.isfinite(P)) or np.any(P < 0):
        raise ValueError("partition.proportions must be finite and non-negative")
    sums = P.sum(axis=1)  # (n,)
    bad = np.flatnonzero(np.abs(sums - 1.0) > 1e-6)
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"partition.proportions[{i}] sums to {sums[i]:.6g}, not 1; each node's class "
            f"shares must add up to 1"
        )
    return P / sums[:, None]  # exact sums keep the rounded counts adding up to m
