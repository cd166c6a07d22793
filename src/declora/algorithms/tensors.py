"""The adapter as a plain ``dict[str, Tensor]``: PEFT's parameter names, and the flat message.

A node's adapter state is the model's trainable tensors (LoRA A/B and the task head) keyed by
parameter name, in the model's order. Those tensors, flattened in key order, are the message
between nodes. Pure functions: no model, no device logic.
"""

from __future__ import annotations

import torch

State = dict[str, torch.Tensor]


def is_lora_a(name: str) -> bool:
    return ".lora_A." in name


def is_lora_b(name: str) -> bool:
    return ".lora_B." in name


def is_lora(name: str) -> bool:
    """LoRA factor (A or B); every other trainable tensor belongs to the task head."""
    return is_lora_a(name) or is_lora_b(name)


def lora_pairs(state: State) -> list[tuple[str, str]]:
    """(A key, B key) for every adapted module; B @ A is that module's weight update."""
    return [(k, k.replace(".lora_A.", ".lora_B.")) for k in state if is_lora_a(k)]


def numel(state: State) -> int:
    return sum(v.numel() for v in state.values())


def flatten(state: State) -> torch.Tensor:
    """One float32 vector in key order: the message a node sends."""
    return torch.cat([v.reshape(-1).float() for v in state.values()])


def unflatten(flat: torch.Tensor, template: State) -> State:
    """Inverse of :func:`flatten`, shaped like ``template``; refuses a wrong length."""
    if flat.numel() != numel(template):
        raise ValueError(f"message has {flat.numel()} values, expected {numel(template)}")
    out, pos = {}, 0
    for k, v in template.items():
        out[k] = flat[pos : pos + v.numel()].view_as(v).to(v.dtype)
        pos += v.numel()
    return out


def same_as_earlier(states: list[State]) -> list[int]:
    """For each state, the index of the first state equal to it in every tensor, bit for bit
    (its own index when none before it is): nodes that have averaged exactly hold the same
    adapter, and scoring it once gives every one of them the same figures."""

    def equal(a: State, b: State) -> bool:
        return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    first, kept = [], []
    for i, st in enumerate(states):
        j = next((j for j in kept if equal(st, states[j])), i)
        kept += [i] if j == i else []
        first.append(j)
    return first
