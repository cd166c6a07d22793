"""The simulator's local steps for all of its nodes in one batched forward and backward.

The frozen base sees one batch: node 0's rows, then node 1's, and so on. Each Linear layer that
holds adapter tensors (LoRA A and B, the task head) gets a forward hook that replaces its output
with node n's own factors applied to node n's rows: a batched matmul over the stacked per-node
weights when every node has as many rows (``torch.bmm``), one matmul per node otherwise. The
loss is the sum of the nodes' own losses (each one exactly the loss its loop step would take),
so each node's tensors get exactly their own gradient; each node then takes its own optimizer
step. Memory stays base + N x adapter; activations are those of one batch of N x b rows.

The base's own dropout draws from one stream for the whole batch, so the numbers equal the
per-node loop's only with dropout off (a model whose dropout probabilities are 0, and
``lora.dropout=0``); with dropout on, each step is as valid, but the masks differ.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from declora.learning.adapters import autocast
from declora.learning.devices import to_device
from declora.learning.dpsgd import linear_layers
from declora.learning.train import Collate, Node

# (model output, batch) -> each row's (loss sum, count of what it averages over)
Terms = Callable[[object, dict], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class Together:
    """What the simulator needs to train its nodes in one batch (``vectorize=true``)."""

    terms: Terms  # the task's per-row loss terms
    pad_id: int
    rng: torch.Tensor  # the torch RNG state the stacked batches' dropout draws from


class Stacked:
    """Hooks that apply each node's adapter to its own rows of one stacked batch."""

    def __init__(self, model: nn.Module, names: list[str]):
        self.layers = linear_layers(model, names, "vectorize=true: stacked adapters")
        self.states: list[dict[str, torch.Tensor]] = []
        self.rows: list[int] = []

    def __enter__(self) -> Stacked:
        self._hooks = [
            layer.register_forward_hook(self._hook(prefix, layer))
            for prefix, layer in self.layers.items()
        ]
        return self

    def __exit__(self, *exc) -> None:
        for hook in self._hooks:
            hook.remove()

    def _hook(self, prefix: str, layer: nn.Linear):
        def forward_hook(_layer, inputs, _output):
            x = inputs[0]
            weights = [s[f"{prefix}.weight"] for s in self.states]
            biases = [s.get(f"{prefix}.bias", layer.bias) for s in self.states]
            if len(set(self.rows)) == 1:  # one batched matmul over the stacked factors
                n = len(self.states)
                flat = x.reshape(n, -1, x.shape[-1])
                out = torch.bmm(flat, torch.stack(weights).transpose(1, 2))
                if biases[0] is not None:
                    out = out + torch.stack(biases).unsqueeze(1)
                return out.reshape(*x.shape[:-1], out.shape[-1])
            parts = torch.split(x, self.rows)
            return torch.cat([F.linear(p, w, b) for p, w, b in zip(parts, weights, biases)])

        return forward_hook


def stack_batches(batches: list[dict], pad_id: int) -> dict:
    """One batch of every node's rows, in node order, padded on the right to the longest."""
    width = max(b["input_ids"].shape[1] for b in batches)
    fill = {"input_ids": pad_id, "attention_mask": 0, "token_type_ids": 0, "labels": -100}
    out = {}
    for key in batches[0]:
        parts = []
        for b in batches:
            v = b[key]
            if v.dim() == 2 and v.shape[1] < width:
                v = F.pad(v, (0, width - v.shape[1]), value=fill[key])
            parts.append(v)
        out[key] = torch.cat(parts)
    return out


def train_together(
    model: nn.Module, nodes: list[Node], steps: int, collate: Collate, how: Together
) -> None:
    """``steps`` optimizer steps for every node, each step one stacked forward and backward;
    each node's ``last_loss``, ``diverged`` and ``last_grad_norm`` as :func:`train_steps`
    sets them."""
    model.train()
    saved = torch.get_rng_state()
    torch.set_rng_state(how.rng)
    seen: list[list[float]] = [[] for _ in nodes]
    try:
        with Stacked(model, list(nodes[0].params)) as stacked:
            for _ in range(steps):
                for k, loss in enumerate(_step(model, nodes, collate, how, stacked)):
                    seen[k].append(loss)
        how.rng = torch.get_rng_state()
    finally:
        torch.set_rng_state(saved)
    for node, losses in zip(nodes, seen):
        node.record(losses)


def _step(model, nodes: list[Node], collate: Collate, how: Together, stacked) -> list[float]:
    """One step of every node; their losses."""
    batches = [collate(n.data, n.sampler.next()) for n in nodes]
    stacked.states = [n.params for n in nodes]
    stacked.rows = [len(b["input_ids"]) for b in batches]
    batch = to_device(stack_batches(batches, how.pad_id), nodes[0].device)
    with autocast(nodes[0].device, nodes[0].precision):
        out = model(**{k: v for k, v in batch.items() if k != "labels"})
        sums, counts = how.terms(out, batch)
    bounds = np.cumsum([0, *stacked.rows])
    per_node = [
        sums[a:b].sum() / counts[a:b].sum().clamp(min=1) for a, b in zip(bounds, bounds[1:])
    ]
    for n in nodes:
        n.optimizer.zero_grad(set_to_none=False)
    torch.stack(per_node).sum().backward()
    for n in nodes:
        n.apply_grads()
    return [float(v.detach()) for v in per_node]
