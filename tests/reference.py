"""Independent reference implementations the tests compare the package against: the mixing
of all nodes at once in matrix form, the product rule for all nodes, graph neighbours, and
class counts per node. Plain loops and numpy, written apart from the code under test."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from declora.algorithms.consensus import product_row
from declora.algorithms.tensors import State
from declora.protocol.exchange import row_weights


def mix(states: list[State], W: np.ndarray) -> list[State]:
    """Dec-LoRA mixing: every tensor of node i becomes sum_j W_ij * tensor_j (A, B, head alike)."""
    w = torch.as_tensor(W, dtype=torch.float64)  # (n, n)
    out: list[State] = [{} for _ in states]
    for key in states[0]:
        stacked = torch.stack([s[key] for s in states]).double()  # (n, *shape)
        mixed = torch.tensordot(w, stacked, dims=1).to(states[0][key].dtype)  # (n, *shape)
        for i, s in enumerate(out):
            s[key] = mixed[i]
    return out


def mix_products(states: list[State], W: np.ndarray) -> list[State]:
    """Matrix form of :func:`product_row` for all nodes at once (row i mixes over W_ij > 0)."""
    out = []
    for i, s in enumerate(states):
        received = {int(j): (float(W[i, j]), states[j]) for j in np.flatnonzero(W[i]) if j != i}
        out.append(product_row(s, float(W[i, i]), received))
    return out


def neighbours(adj: np.ndarray, i: int) -> list[int]:
    """List the neighbours of a node.

    Args:
        adj: Adjacency ``(n, n)``.
        i: Node id in ``0..n-1``.

    Returns:
        Sorted neighbour ids of node ``i`` (excluding ``i`` itself).

    Raises:
        ValueError: If ``i`` is out of range.
    """
    a = np.asarray(adj) != 0
    n = a.shape[0]
    if not 0 <= i < n:
        raise ValueError(f"node id {i} is out of range for a graph with {n} nodes")
    row = a[i].copy()
    row[i] = False
    return [int(j) for j in np.flatnonzero(row)]


def label_counts(
    labels: np.ndarray, parts: Sequence[np.ndarray], n_classes: int | None = None
) -> np.ndarray:
    """Count the classes each node holds.

    Args:
        labels: Integer class ids ``(N,)``.
        parts: Row-index arrays, one per node.
        n_classes: Number of classes; defaults to ``max(labels) + 1``.

    Returns:
        Counts ``(n_nodes, n_classes)`` int64.

    Raises:
        ValueError: If labels are not non-negative integers or exceed ``n_classes``.
    """
    y = np.asarray(labels, dtype=np.int64)
    inferred = int(y.max()) + 1 if len(y) else 0
    c = inferred if n_classes is None else int(n_classes)
    if len(y) and y.max() >= c:
        raise ValueError(f"labels go up to {int(y.max())} but n_classes={c}")
    counts = np.zeros((len(parts), c), dtype=np.int64)  # (n_nodes, C)
    for i, part in enumerate(parts):
        counts[i] = np.bincount(y[np.asarray(part, dtype=np.int64)], minlength=c)
    return counts


def exchange_round(exchanges, states, W: np.ndarray, t: int = 1):
    """A round's messages without frames or transport: every node sends, then mixes what its
    neighbours (row i of W) sent. Returns (new states, payloads)."""
    payloads = [ex.outgoing(x, t) for ex, x in zip(exchanges, states)]
    out = []
    for i, (ex, x) in enumerate(zip(exchanges, states)):
        w = row_weights(W, i)
        out.append(ex.incoming(x, {j: payloads[j] for j in w if j != i}, w))
    return out, payloads
