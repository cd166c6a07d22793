"""One DP-SGD step on a node: per-example gradients, each clipped, summed, and Gaussian noise.

Per-example gradients come from hooks on the Linear layers that hold the node's trainable
tensors (LoRA's A and B, the task head), in the analytic form Opacus uses for Linear layers:
for a layer with input ``a`` (rows, ..., in) and output gradient ``g`` (rows, ..., out), row
b's weight gradient is ``g[b]^T a[b]`` and its bias gradient the sum of ``g[b]``. Only the
adapter's small tensors get per-example copies (rows x r x width), never the frozen base, and
one forward and backward serve the whole batch. ``torch.func.vmap`` over a Hugging Face model
fails in its attention-mask checks, and Opacus's GradSampleModule wraps the module and writes
to its own parameters, while a node's tensors are swapped in with ``functional_call``: the
hooks here read only activations and output gradients, so they work with any node's tensors.

Each row's loss is its own (a causal LM's mean over its own target tokens), so a row's gradient
never depends on the other rows of its batch, which the clipping bound needs.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from declora.algorithms.tensors import State
from declora.config import ConfigError
from declora.learning.privacy import Budget

# (model output, batch) -> each row's loss, shape (rows,)
Losses = Callable[[object, dict], torch.Tensor]


def linear_layers(model: nn.Module, names: list[str], what: str) -> dict[str, nn.Linear]:
    """The Linear layers that hold the tensors ``names`` (weights and biases), by module
    name; a tensor anywhere else is a ConfigError naming ``what`` needs Linear layers."""
    layers: dict[str, nn.Linear] = {}
    for name in names:
        prefix, leaf = name.rsplit(".", 1)
        layer = model.get_submodule(prefix)
        if not isinstance(layer, nn.Linear) or leaf not in ("weight", "bias"):
            raise ConfigError(
                f"{what} cover Linear layers; {name} belongs to a {type(layer).__name__}"
            )
        layers[prefix] = layer
    return layers


class ExampleGrads:
    """Per-example gradients of ``names`` (trainable Linear weights and biases) of ``model``,
    captured while the block runs: ``with ExampleGrads(model, names) as eg: ...; eg.grads()``."""

    def __init__(self, model: nn.Module, names: list[str]):
        self.layers = linear_layers(model, names, "privacy: per-example gradients")
        self.names = names
        self._acts: dict[str, list] = defaultdict(list)
        self._grads: dict[str, list] = defaultdict(list)
        self._hooks: list = []

    def __enter__(self) -> ExampleGrads:
        for prefix, layer in self.layers.items():
            self._hooks.append(layer.register_forward_hook(self._capture(prefix)))
        return self

    def __exit__(self, *exc) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()

    def _capture(self, prefix: str):
        def forward_hook(_layer, inputs, output):
            self._acts[prefix].append(inputs[0].detach())
            slot = len(self._acts[prefix]) - 1
            grads = self._grads[prefix]
            grads.append(None)

            def keep(grad):
                grads[slot] = grad.detach()

            output.register_hook(keep)

        return forward_hook

    def grads(self) -> dict[str, torch.Tensor]:
        """name -> (rows, *shape): each row's gradient (summed over a layer's calls), in
        float32 whatever the autocast around it (a bf16 row norm overshoots the clip)."""
        with torch.autocast("cuda", enabled=False), torch.autocast("cpu", enabled=False):
            return self._per_example()

    def _per_example(self) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for prefix in self.layers:
            for a, g in zip(self._acts[prefix], self._grads[prefix]):
                rows = a.shape[0]
                a2 = a.reshape(rows, -1, a.shape[-1]).float()
                g2 = g.reshape(rows, -1, g.shape[-1]).float()
                parts = {"weight": torch.bmm(g2.transpose(1, 2), a2), "bias": g2.sum(1)}
                for leaf, value in parts.items():
                    key = f"{prefix}.{leaf}"
                    if key in self.names:
                        out[key] = out[key] + value if key in out else value
        return {k: out[k] for k in self.names}


def example_grads(
    model: nn.Module, params: State, batch: dict, losses: Losses
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Each row's gradient of its own loss w.r.t. the trainable ``params``, and the losses."""
    names = [k for k, v in params.items() if v.requires_grad]
    with ExampleGrads(model, names) as eg:
        out = functional_call(model, params, args=(), kwargs=batch)
        per_row = losses(out, batch)
        per_row.sum().backward()
    return eg.grads(), per_row.detach()


def clip_and_sum(grads: dict[str, torch.Tensor], clip: float) -> dict[str, torch.Tensor]:
    """Scale each row's whole gradient (all tensors together) to norm at most ``clip``, then
    sum over the rows (in the gradients' own float32, never under autocast)."""
    with torch.autocast("cuda", enabled=False), torch.autocast("cpu", enabled=False):
        return _clip_and_sum(grads, clip)


def _clip_and_sum(grads: dict[str, torch.Tensor], clip: float) -> dict[str, torch.Tensor]:
    norms = torch.linalg.vector_norm(
        torch.stack([g.reshape(g.shape[0], -1).norm(dim=1) for g in grads.values()]), dim=0
    )
    factor = (clip / (norms + 1e-6)).clamp(max=1.0)
    return {k: torch.einsum("b,b...->...", factor, g) for k, g in grads.items()}


def private_grads(
    model: nn.Module,
    params: State,
    batch: dict | None,
    losses: Losses,
    budget: Budget,
    expected_rows: float,
    noise: Callable[[int], np.ndarray],
) -> float:
    """Set each trainable tensor's ``.grad`` to the DP-SGD gradient of ``batch`` (None: no row
    was sampled): clipped per-example sum plus N(0, (noise x clip)^2) noise, divided by the
    expected batch size. ``noise(n)`` gives n standard normals for every trainable value in
    order (the site's secret keystream, :mod:`declora.learning.secret`). Returns the batch's
    mean loss (NaN if empty)."""
    trainable = {k: v for k, v in params.items() if v.requires_grad}
    if batch is None:
        summed, loss = {k: torch.zeros_like(v) for k, v in trainable.items()}, float("nan")
    else:
        grads, per_row = example_grads(model, params, batch, losses)
        summed, loss = clip_and_sum(grads, budget.clip), float(per_row.mean())
    std = budget.noise * budget.clip
    drawn = noise(sum(v.numel() for v in trainable.values())) * std if std else None
    at = 0
    for k, v in trainable.items():
        z = 0.0
        if drawn is not None:
            z = torch.from_numpy(drawn[at : at + v.numel()]).reshape(v.shape).to(v.device)
        at += v.numel()
        value = ((summed[k] + z) / expected_rows).to(v.dtype)
        if v.grad is None:
            v.grad = value
        else:  # keep the buffer train.allocate_state made
            v.grad.copy_(value)
    return loss
