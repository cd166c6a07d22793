"""Gradient tracking on the optimizer's update (``correction=tracking``): one node's side.

Under label skew each node's own steps pull it towards its own optimum; gossip pulls the
nodes back together only as fast as the graph mixes. Tracking gives each node a correction
c_i, an estimate of the network's mean update minus its own, and mixes it in with the
adapter. With x_i the node's adapter after its last mixing, Delta_i its displacement over the
round's K local AdamW steps (so x_i + Delta_i is what it holds now), and c = 0 at the start::

    x_i <- sum_j W_ij (x_j + Delta_j + c_j)
    c_i <- sum_j W_ij (c_j + Delta_j) - Delta_i

(relaysgd's ``gradient_tracking``, applied to the optimizer's displacement rather than the
gradient, so AdamW stays the local optimizer; the theory is Koloskova et al., arXiv
2202.03836; K-GT, Liu et al., arXiv 2301.01313, adds c / K at every local step instead.)

For any W whose columns sum to 1 (every mixing matrix here, time-varying ones and the
re-weighted W of a round with faults or refusals included), sum_i c_i stays 0, so the mean
adapter moves by exactly the mean update every round, whatever the graph; the node's own
term only corrects where it sits. A node alone in a round (no live edge) mixes with itself
(W_ii = 1): it adds its correction and keeps it, which keeps both invariants.

The message is two vectors, x_j + Delta_j + c_j and c_j + Delta_j, so twice the bytes of
plain gossip (``consensus=frozen_a`` halves both). The correction and the adapter after the
last mixing are the exchange's state, kept in the node's checkpoint.
"""

from __future__ import annotations

import torch

from declora.algorithms.compress import compress, decompress, message_generator
from declora.algorithms.consensus import exchanged_keys
from declora.algorithms.tensors import State, flatten, unflatten
from declora.config import CompressionConfig, Rule


class TrackingExchange:
    """Node ``node_id``'s exchange under gradient tracking (see the module docstring)."""

    alone = True  # a node with no live edge still mixes, with itself

    def __init__(
        self,
        node_id: int,
        template: State,
        compression: CompressionConfig | None = None,
        seed: int = 0,
        consensus: Rule = "ab",
    ):
        self.node_id = node_id
        keys = exchanged_keys(template, consensus)
        self.template = {k: template[k].detach().clone() for k in keys}
        self.spec = compression or CompressionConfig()
        self.seed = seed
        one = [v.numel() for v in self.template.values()]
        self.sizes = one + one  # the adapter's tensors, then the correction's
        self.anchor = flatten(self.template).double()  # x_i after its last mixing (m,)
        self.c = torch.zeros_like(self.anchor)  # the correction c_i, float64 (m,)

    def state_dict(self) -> State:
        return {"anchor": self.anchor.clone(), "c": self.c.clone()}

    def load_state_dict(self, state: State) -> None:
        self.anchor, self.c = state["anchor"].double().clone(), state["c"].double().clone()

    def _own(self, state: State) -> tuple[torch.Tensor, torch.Tensor]:
        """(what this node sends: x + Delta + c then c + Delta, float64 (2m,); Delta)."""
        x = flatten({k: state[k] for k in self.template}).double()
        delta = x - self.anchor
        return torch.cat([x + self.c, self.c + delta]), delta

    def outgoing(self, state: State, round_: int, step: int = 0, peers=None) -> bytes:
        gen = message_generator(self.seed, self.node_id, round_, step)
        return compress(self._own(state)[0], self.spec, gen, self.sizes)

    def incoming(
        self, state: State, received: dict[int, bytes], weights: dict[int, float], committed=None
    ) -> State:
        """The mixed adapter; the correction and the anchor move to this round's."""
        i = self.node_id
        own, delta = self._own(state)
        decoded = {j: decompress(received[j], self.sizes) for j in sorted(received) if j != i}
        own_weight = sum(w for j, w in weights.items() if j == i or j not in decoded)
        mixed = own * own_weight  # float64, self then neighbours by id
        for j in sorted(decoded):
            mixed = mixed + decoded[j].double() * weights[j]
        m = len(delta)
        x = mixed[:m].float()  # what the node holds: float32, as its tensors
        self.c = mixed[m:] - delta
        self.anchor = x.double()
        return {**state, **unflatten(x, self.template)}
