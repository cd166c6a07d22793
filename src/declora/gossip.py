"""One node's side of the exchange: the message it sends, and how it mixes what it receives.

Shared by both runtimes: the simulator calls every node's :class:`Exchange` in turn; a
distributed node calls its own and moves the payload bytes with send/recv. A payload is plain
bytes (never pickled): the adapter state flattened in key order, as float32.
"""

from __future__ import annotations

import numpy as np
import torch

from declora.adapters import State, flatten, unflatten
from declora.consensus import mix_row


def encode(state: State) -> bytes:
    """float32 little-endian bytes of the flattened adapter."""
    return flatten(state).numpy().astype("<f4", copy=False).tobytes()


def decode(payload: bytes, template: State) -> State:
    """Inverse of :func:`encode`; refuses a payload of the wrong size."""
    flat = torch.from_numpy(np.frombuffer(payload, dtype="<f4").copy())
    return unflatten(flat, template)


class Exchange:
    """Node ``node_id``'s exchange with its neighbours (plain Dec-LoRA averaging)."""

    def __init__(self, node_id: int, template: State):
        self.node_id = node_id
        self.template = {k: v.detach().clone() for k, v in template.items()}

    def outgoing(self, state: State, round_: int) -> bytes:
        """The payload this node sends to every neighbour this round."""
        return encode(state)

    def incoming(
        self, state: State, received: dict[int, bytes], weights: dict[int, float]
    ) -> State:
        """New adapter: W_ii * own + sum_j W_ij * neighbour_j (``weights`` holds W_ii too)."""
        others = {j: (weights[j], decode(p, self.template)) for j, p in received.items()}
        return mix_row(state, weights[self.node_id], others)


def row_weights(W: np.ndarray, i: int) -> dict[int, float]:
    """Non-zero entries of row i of W (self included), as {node: weight}."""
    return {int(j): float(W[i, j]) for j in np.flatnonzero(W[i])}
