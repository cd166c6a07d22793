"""Who mixes with whom in round t, and with what weights: a static graph's one mixing matrix
every round, or the round's matrix of a time-varying graph (:mod:`declora.algorithms.graphs`)
that averages exactly after a finite number of rounds. With several gossip steps a round
(``steps``), a time-varying graph walks on through its matrices within the round: Base-2's
3 matrices on 8 nodes, taken 3 a round, average exactly every round.

Pure numpy. The round's plan (:func:`declora.algorithms.faults.round_plan`) takes the round's
edges and W from here; a time-varying W is drawn from t alone, so every process agrees on it
without talking.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np

from declora.algorithms import graphs
from declora.algorithms import topology as topo

TIME_VARYING = graphs.KINDS  # one_peer_exponential, base
KINDS = (*topo.TOPOLOGIES, *TIME_VARYING)  # config topology.kind


@dataclass(frozen=True)
class Schedule:
    """The mixing matrices of a run, round by round.

    ``kind`` is a topology kind; ``W`` the static mixing matrix (None for a time-varying
    kind, whose round t has :func:`declora.algorithms.graphs.time_varying`); ``adj`` every
    edge some round may use (the static graph's; for a time-varying kind, the union of one
    period's, symmetrised); ``degree`` the Base-(k+1) graph's k; ``steps`` the gossip steps
    a round (a time-varying graph's mixing step m = (t - 1) x steps + step + 1 takes its
    m-th matrix; a static graph's W every step). ``period``, ``gap`` and ``messages`` count
    mixing steps.
    """

    kind: str
    n: int
    adj: np.ndarray  # (n, n) bool
    W: np.ndarray | None = None  # (n, n) static mixing matrix
    degree: int = 1
    steps: int = 1

    @classmethod
    def static(cls, kind: str, adj: np.ndarray, W: np.ndarray) -> Schedule:
        return cls(kind, len(W), np.asarray(adj, dtype=bool), W)

    @classmethod
    def varying(cls, kind: str, n: int, degree: int = 1) -> Schedule:
        """A time-varying graph of ``n`` nodes (``degree`` peers a round for ``base``)."""
        if kind not in TIME_VARYING:
            raise ValueError(f"{kind} is not a time-varying graph ({', '.join(TIME_VARYING)})")
        rounds = [
            graphs.time_varying(kind, n, t, degree)
            for t in range(1, period_of(kind, n, degree) + 1)
        ]
        adj = np.zeros((n, n), dtype=bool)
        for W in rounds:
            adj |= graphs.edges_of(W)
        return cls(kind, n, adj | adj.T, None, degree)

    def with_steps(self, steps: int) -> Schedule:
        """This graph with ``steps`` gossip steps a round."""
        return self if steps == self.steps else replace(self, steps=steps)

    @property
    def varies(self) -> bool:
        return self.W is None

    @property
    def directed(self) -> bool:
        """Whether some round sends along an edge one way only (one_peer_exponential)."""
        return self.varies and any(not np.array_equal(W, W.T) for W in self._one_period())

    @property
    def period(self) -> int:
        """Mixing steps after which the matrices repeat (1 for a static graph)."""
        return period_of(self.kind, self.n, self.degree)

    def _step(self, m: int) -> np.ndarray:
        """W of mixing step m (1-based)."""
        if self.W is not None:
            return self.W
        return graphs.time_varying(self.kind, self.n, m, self.degree)

    def _one_period(self) -> list[np.ndarray]:
        return [self._step(m) for m in range(1, self.period + 1)]

    def at(self, t: int, step: int = 0) -> np.ndarray:
        """W of round t (1-based), gossip step ``step`` (0-based), shape (n, n)."""
        return self._step((t - 1) * self.steps + step + 1)

    def edges(self, t: int, step: int = 0) -> np.ndarray:
        """The (n, n) symmetric boolean edges of round t's gossip step ``step``: the links
        faults may drop."""
        if not self.varies:
            return self.adj
        support = graphs.edges_of(self.at(t, step))
        return support | support.T

    @cached_property
    def rounds_to_exact(self) -> int | None:
        """Rounds from round 1 after which every node holds the exact average of what the
        nodes held (None: never exactly, only geometrically)."""
        if not self.varies:
            return 1 if np.allclose(self.W, 1.0 / self.n, atol=1e-12) else None
        mixing_steps = graphs.rounds_to_exact(self.kind, self.n, self.degree)
        return None if mixing_steps is None else -(-mixing_steps // self.steps)

    def exact_within(self, after: int, limit: int) -> int | None:
        """The fewest rounds k <= ``limit`` after round ``after`` whose matrices (every gossip
        step's) multiply to J within 1e-12 (every node then holds the exact average of what
        the nodes held after round ``after``); None if no k <= ``limit`` does."""
        out, J = np.eye(self.n), graphs.consensus_matrix(self.n)
        for k in range(1, limit + 1):
            for step in range(self.steps):
                out = self.at(after + k, step) @ out
            if np.allclose(out, J, rtol=0.0, atol=1e-12):
                return k
        return None

    @cached_property
    def gap(self) -> float:
        """Per-round contraction of disagreement, as a gap: 1 - |lambda_2(W)| for a static
        graph; 1 - ||W_T ... W_1 - J||_2 ** (1 / T) over one period T of a time-varying one
        (1.0 when the period averages exactly)."""
        if not self.varies:
            return topo.spectral_gap(self.W)
        error = graphs.consensus_error(self._one_period())
        return 1.0 - error ** (1.0 / self.period) if error > 1e-12 else 1.0

    def messages(self) -> np.ndarray:
        """(n,) messages each node sends a mixing step, averaged over one period."""
        sent = sum(graphs.edges_of(W).sum(axis=0) for W in self._one_period())
        return np.asarray(sent, dtype=np.float64) / self.period


def period_of(kind: str, n: int, degree: int = 1) -> int:
    """Mixing steps after which a graph's matrices repeat: 1 for a static graph; Base-(k+1)'s
    or one-peer exponential's period for a time-varying one (Base-2 on 8 nodes: 3)."""
    if kind not in TIME_VARYING:
        return 1
    if kind == "one_peer_exponential":
        return graphs.one_peer_period(n)
    return graphs.base_period(n, degree)


def schedule_for(
    kind: str,
    n: int,
    rule: str = "metropolis",
    p: float = 0.3,
    edges=None,
    seed: int = 0,
    degree: int = 1,
) -> Schedule:
    """The configured graph's schedule: a static graph with its ``rule`` weights, or a
    time-varying one with its own; bad settings raise ValueError."""
    if kind in TIME_VARYING:
        return Schedule.varying(kind, n, degree)
    adj = topo.build_graph(kind, n, p=p, edges=edges, seed=seed)
    return Schedule.static(kind, adj, topo.mixing_matrix(adj, rule))


def server(n: int) -> Schedule:
    """A server's exact average every round: W = J (fedavg)."""
    return Schedule.static("server", ~np.eye(n, dtype=bool), np.full((n, n), 1.0 / n))


def relay_tree(graph: Schedule) -> Schedule:
    """A spanning tree of ``graph``'s edges (:func:`declora.algorithms.graphs.spanning_tree`),
    with Metropolis weights: relay's messages go along its edges only."""
    tree = graphs.spanning_tree(graph.adj)
    return Schedule.static("tree", tree, topo.mixing_matrix(tree, "metropolis"))
