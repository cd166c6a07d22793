"""Intermittent links and nodes: which edges and nodes are up in a round, and the mixing on them.

Pure numpy, shared by both runtimes. Every draw comes from a generator seeded by the run seed,
the round and the edge (or node) alone, so the two ends of an edge, every process of a
distributed run and the simulator all agree on what is down without exchanging a byte.

- ``link_drop``: each graph edge is down for a round with this probability.
- ``node_drop``: each node sits a round out with this probability. A node that sits out takes no
  local steps (its site is offline: no compute, no sampler or RNG advance) and neither sends nor
  receives; its edges are down for that round.

When anything is down, W for the round is Metropolis on the surviving graph
(:func:`declora.algorithms.topology.surviving_mixing`): symmetric and doubly stochastic, so the network
average is preserved; a node with no live edge keeps W_ii = 1. A round with nothing down keeps
the configured mixing matrix, so ``link_drop = node_drop = 0`` is exactly the fault-free run.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from declora.algorithms import topology as topo

# first entropy word of each stream, so a node's draw and its edges' draws are independent
_LINK, _NODE = 0x4C494E4B, 0x4E4F4445


@dataclass(frozen=True)
class RoundPlan:
    """What runs in one round."""

    W: np.ndarray | None  # (n, n) mixing weights for the round; None = no communication
    active: np.ndarray  # (n,) bool: False = the node sits the round out
    later: tuple[np.ndarray, ...] = ()  # W of gossip steps 2.. where they differ from step 1's

    def at_step(self, step: int) -> np.ndarray | None:
        """W of the round's gossip step ``step`` (0-based): step 1's W on a static graph."""
        return self.W if step == 0 or not self.later else self.later[step - 1]


def _uniform(*words: int) -> float:
    """One U[0, 1) draw determined by ``words`` alone (negative seeds wrap to 64 bits)."""
    return float(np.random.default_rng([w % 2**64 for w in words]).random())


def node_up(seed: int, round_: int, i: int, p: float) -> bool:
    """Whether node ``i`` takes part in round ``round_``."""
    return p == 0 or _uniform(_NODE, seed, round_, i) >= p


def link_up(seed: int, round_: int, i: int, j: int, p: float) -> bool:
    """Whether edge {i, j} carries messages in round ``round_`` (the same answer at both ends)."""
    return p == 0 or _uniform(_LINK, seed, round_, min(i, j), max(i, j)) >= p


def round_plan(
    adj: np.ndarray, W: np.ndarray, link_drop: float, node_drop: float, seed: int, round_: int
) -> RoundPlan:
    """Mixing matrix and active nodes of round ``round_`` (1-based) under the given drop rates."""
    adj = np.asarray(adj) != 0
    n = len(adj)
    active = np.array([node_up(seed, round_, i, node_drop) for i in range(n)])
    if link_drop == 0 and active.all():
        return RoundPlan(W, active)
    up = np.zeros((n, n), dtype=bool)
    for i, j in zip(*np.nonzero(np.triu(adj, 1))):
        live = active[i] and active[j] and link_up(seed, round_, int(i), int(j), link_drop)
        up[i, j] = up[j, i] = live
    if up[adj].all():
        return RoundPlan(W, active)
    return RoundPlan(topo.surviving_mixing(adj, up), active)


def no_faults(W: np.ndarray | None, n: int) -> RoundPlan:
    """Every node active and the given W (methods that the faults do not apply to)."""
    return RoundPlan(W, np.ones(n, dtype=bool))
