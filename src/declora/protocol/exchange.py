"""One node's side of the exchange: the message it sends, and how it mixes what it receives.

Shared by both runtimes: the simulator calls every node's :class:`Exchange` in turn; a
distributed node calls its own and moves the payload bytes with send/recv. A payload is plain
bytes (never pickled): the adapter state flattened in key order, compressed as
``compression`` says (format in :mod:`declora.algorithms.compress`).

Schemes: ``direct`` sends the (compressed) adapter and mixes it with the node's own exact one.
``choco`` (CHOCO-Gossip, Koloskova et al. 2019) keeps public copies x_hat of itself and of each
neighbour, all starting at the shared initial adapter; it sends q_i = Q(x_i - x_hat_i), every
holder of a copy adds the same decoded q, and x_i += gamma * sum_j W_ij (x_hat_j - x_hat_i).
What compression drops stays in x_i - x_hat_i and is sent in later rounds instead of lost.
CHOCO quantizes with least-squares block scales (``refit`` in :mod:`declora.algorithms.compress`): its
copies need a contraction. It assumes every payload arrives: a missed or refused one leaves
that copy behind for good, so the config refuses choco together with ``faults``; a refused
one is handled by the round's commit phase (:mod:`declora.protocol.gossip`): a message that some
neighbour refused updates no copy anywhere.

The consensus rule (``consensus``, explained in :mod:`declora.algorithms.consensus`) decides which keys
the message and ``template`` cover, and how :meth:`Exchange.incoming` mixes them.
"""

from __future__ import annotations

import numpy as np
import torch

from declora.algorithms.compress import compress, decompress, message_generator
from declora.algorithms.consensus import exchanged_keys, mix_row, product_row
from declora.algorithms.tensors import State, flatten, unflatten
from declora.config import CompressionConfig, Rule


class Exchange:
    """Node ``node_id``'s exchange with its neighbours: what it sends and how it mixes.

    ``template`` is the initial adapter, identical on every node (CHOCO's public copies start
    there); ``seed`` is the run seed, so the rounding noise of a message depends only on
    (seed, node, round) and both runtimes draw the same. ``self.template`` keeps only the keys
    that ``consensus`` exchanges: the message is those tensors flattened in key order.
    """

    def __init__(
        self,
        node_id: int,
        template: State,
        compression: CompressionConfig | None = None,
        seed: int = 0,
        consensus: Rule = "ab",
    ):
        self.node_id = node_id
        self.consensus = consensus
        if consensus == "product" and (compression or CompressionConfig()).scheme == "choco":
            raise ValueError("consensus=product needs compression.scheme=direct")
        keys = exchanged_keys(template, consensus)
        self.template = {k: template[k].detach().clone() for k in keys}  # what goes on the wire
        self.spec = compression or CompressionConfig()
        self.seed = seed
        self.sizes = [v.numel() for v in self.template.values()]  # tensor boundaries for scales
        self.public: dict[int, torch.Tensor] = {}  # choco: node -> x_hat, flat float32 (n,)
        self._sent: torch.Tensor | None = None  # choco: this round's decoded q_i

    def state_dict(self) -> State:
        """What a checkpoint keeps: CHOCO's public copies (none for direct exchange)."""
        return {f"public.{j}": v.clone() for j, v in self.public.items()}

    def load_state_dict(self, state: State) -> None:
        self.public = {int(k.split(".", 1)[1]): v.clone() for k, v in state.items()}

    def _copy(self, j: int) -> torch.Tensor:
        if j not in self.public:
            self.public[j] = flatten(self.template).clone()
        return self.public[j]

    alone = False  # a node with no live edge keeps its adapter as it is

    def outgoing(self, state: State, round_: int, step: int = 0, peers=None) -> bytes:
        """The payload this node sends to every neighbour in gossip step ``step`` of a round."""
        flat = flatten(self._message(state))
        choco = self.spec.scheme == "choco"
        if choco:
            flat = flat - self._copy(self.node_id)
        gen = message_generator(self.seed, self.node_id, round_, step)
        payload = compress(flat, self.spec, gen, self.sizes, refit=choco)
        if choco:  # decode our own payload: exactly what every neighbour adds to its copy
            self._sent = decompress(payload, self.sizes)
        return payload

    def incoming(
        self,
        state: State,
        received: dict[int, bytes],
        weights: dict[int, float],
        committed: set[int] | None = None,
    ) -> State:
        """New adapter from the own state and the payloads received this round.

        ``weights`` holds W_ij for this round, the node's own W_ii included. A neighbour in
        ``weights`` whose payload is missing counts as the node itself (its weight goes to self).
        ``committed`` (CHOCO, from the round's commit phase): the nodes whose message every
        neighbour accepted, this node included if its own was; only their messages update the
        public copies, and a payload in ``received`` without a weight only updates a copy.
        None: every received payload and the own message count (no refusal this step).
        """
        i = self.node_id
        stray = set(received) - set(weights) - {i}
        if stray and committed is None:
            raise ValueError(f"node {i} got payloads from {sorted(stray)}, which have no weight")
        decoded = {j: decompress(received[j], self.sizes) for j in sorted(received) if j != i}
        if self.spec.scheme == "choco":
            if committed is None:
                committed = {i, *decoded}
            return self._choco_step(state, decoded, weights, committed)
        own_weight = sum(w for j, w in weights.items() if j == i or j not in decoded)
        others = {j: (weights[j], unflatten(q, self.template)) for j, q in decoded.items()}
        if self.consensus == "product":  # alone this round: keep the factors as they are
            return product_row(state, own_weight, others) if others else dict(state)
        return {**state, **mix_row(self._message(state), own_weight, others)}

    def _message(self, state: State) -> State:
        """The exchanged tensors of ``state`` (all but A under frozen_a), in template order."""
        return {k: state[k] for k in self.template}

    def _choco_step(
        self,
        state: State,
        decoded: dict[int, torch.Tensor],
        weights: dict[int, float],
        committed: set[int],
    ) -> State:
        if self._sent is None:
            raise RuntimeError("choco: incoming() before this round's outgoing()")
        own = self._copy(self.node_id)
        if self.node_id in committed:
            own += self._sent
        self._sent = None
        for j, q in decoded.items():
            if j in committed:
                self._copy(j).add_(q)
        own64 = own.double()
        pull = torch.zeros_like(own64)  # sum_j W_ij (x_hat_j - x_hat_i), float64, fixed order
        for j in sorted(decoded):
            if j in weights:
                pull += weights[j] * (self._copy(j).double() - own64)
        x = flatten(self._message(state)).double() + self.spec.gamma * pull
        return {**state, **unflatten(x.float(), self.template)}


def row_weights(W: np.ndarray, i: int) -> dict[int, float]:
    """Non-zero entries of row i of W (self included), as {node: weight}."""
    return {int(j): float(W[i, j]) for j in np.flatnonzero(W[i])}
