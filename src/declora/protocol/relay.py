"""Relay averaging along a spanning tree (``exchange=relay``): one node's side.

RelaySum/Model (Vogels et al., NeurIPS 2021, arXiv 2110.04175; reference code
epfml/relaysgd): every round node i sends each tree neighbour j the sum of its own weighted
model and of everything it heard last round from its other tree neighbours, with the matching
count::

    m_{i->j} = w_i v_i + sum_{k in N(i) \\ j} R_{k->i}      c_{i->j} = w_i + sum_{k in N(i) \\ j} r_{k->i}

where v_i is what node i holds after its local steps and (R_{k->i}, r_{k->i}) is the last sum
and count it received from k. A sum never comes back the way it came, so node k's model
reaches node i after d(i, k) - 1 rounds (d the tree distance), once, with its weight. Node i
then holds::

    x_i = (w_i v_i + sum_{j in N(i)} R_{j->i} + (W - C_i) x_0) / W,   C_i = w_i + sum_j r_{j->i}

W the total weight and x_0 the shared initial adapter, which fills the weight that has not
arrived yet. From round ecc(i) <= the tree's diameter on, C_i = W: every node holds the exact
weighted average of every node's model, node k's as it was d(i, k) - 1 rounds ago. Weights:
``weighting=uniform`` gives w_i = 1 (W = n); ``rows`` relays row counts (w_i = n_i, the
pooled objective), so a neighbour learns the rows of the subtree behind each edge.

A lost message (a link or node down under ``faults``, or a refused frame) is handled by
keeping the last sum and count heard on that edge: since every message carries a full sum,
the next one that arrives replaces it, and the fixed point is kept (the exactness above
returns a diameter's rounds after the last loss). Cost: one message of the adapter plus its
count per directed tree edge per round, at most the ring's two a node.
"""

from __future__ import annotations

import torch

from declora.algorithms.compress import compress, decompress
from declora.algorithms.consensus import exchanged_keys
from declora.algorithms.tensors import State, flatten, unflatten
from declora.config import CompressionConfig, Rule


class RelayExchange:
    """Node ``node_id``'s relay to its ``tree`` neighbours, with weight ``weight`` out of
    ``total`` (see the module docstring)."""

    alone = True  # a node that heard nothing this round still averages what it heard before

    def __init__(
        self,
        node_id: int,
        template: State,
        tree: list[int],
        weight: float = 1.0,
        total: float = 1.0,
        consensus: Rule = "ab",
    ):
        self.node_id = node_id
        keys = exchanged_keys(template, consensus)
        self.template = {k: template[k].detach().clone() for k in keys}
        self.spec = (
            CompressionConfig()
        )  # float32: a compressed sum would carry every hop's rounding
        self.sizes = [v.numel() for v in self.template.values()] + [1]  # the sum, then its count
        self.start = flatten(self.template).double()  # x_0, which fills what has not arrived (m,)
        self.weight, self.total = float(weight), float(total)
        # last (sum (m,), count) heard from each tree neighbour: nothing yet
        self.heard = {j: (torch.zeros_like(self.start), 0.0) for j in sorted(tree)}

    def state_dict(self) -> State:
        out = {}
        for j, (s, c) in self.heard.items():
            out[f"heard.{j}"] = torch.cat([s, torch.tensor([c], dtype=torch.float64)])
        return out

    def load_state_dict(self, state: State) -> None:
        for key, vec in state.items():
            j = int(key.split(".", 1)[1])
            self.heard[j] = (vec[:-1].double().clone(), float(vec[-1]))

    def _own(self, state: State) -> torch.Tensor:
        """w_i v_i, float64 (m,)."""
        return self.weight * flatten({k: state[k] for k in self.template}).double()

    def outgoing(self, state: State, round_: int, step: int = 0, peers=None) -> dict[int, bytes]:
        """To each tree neighbour j in ``peers``: its own weighted model plus what the other
        neighbours relayed last round, and the count."""
        own = self._own(state)
        out = {}
        for j in peers if peers is not None else self.heard:
            others = [self.heard[k] for k in self.heard if k != j]
            s = own + sum((v for v, _ in others), torch.zeros_like(own))
            c = self.weight + sum(n for _, n in others)
            message = torch.cat([s, torch.tensor([c], dtype=torch.float64)])
            out[j] = compress(message, self.spec, sizes=self.sizes)
        return out

    def incoming(
        self, state: State, received: dict[int, bytes], weights: dict[int, float], committed=None
    ) -> State:
        """The weighted average of every model heard, the start filling what has not arrived."""
        for j in sorted(received):
            if j in self.heard:
                vec = decompress(received[j], self.sizes).double()
                self.heard[j] = (vec[:-1], float(vec[-1]))
        total = self._own(state)
        count = self.weight
        for s, c in self.heard.values():
            total, count = total + s, count + c
        x = (total + (self.total - count) * self.start) / self.total
        return {**state, **unflatten(x.float(), self.template)}
