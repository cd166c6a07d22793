"""Sizes a run can never have, refused before anything is allocated or written.

Only shapes are read: the model is built from its config on the ``meta`` device (no weights,
no memory, whatever the rank) and LoRA is applied as :func:`declora.learning.adapters.build_model`
applies it. From those shapes: LoRA's rank against the layers it adapts, ``max_length``
against the model's positions, and a floor of the run's memory against what the machine has
free. Each refusal is one line that names the key to change (:class:`ConfigError`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from declora.algorithms.methods import METHODS
from declora.algorithms.tensors import is_lora_a
from declora.config import Config, ConfigError
from declora.learning.adapters import ModelError, attach_lora, resolve_model_path

GB = 1e9
BASE_BYTES = {"none": 4.0, "int8": 1.0, "4bit": 0.5}  # per base weight, by model.quantize
GRAPH_BYTES = 9  # per pair of nodes: the (n, n) bool adjacency and float64 mixing matrix


@dataclass
class Shapes:
    """What a run's sizes depend on, read from the model's config alone."""

    full: list[int]  # values of each base-model tensor (shared, tied tensors once)
    trainable: dict[str, int]  # values of each trainable tensor (LoRA A/B, head), in order
    adapted: dict[str, tuple[int, int]]  # (d_in, d_out) of each layer LoRA adapts
    hidden: int | None  # width of the hidden states, where the config says
    layers: int | None
    positions: int | None  # max_position_embeddings, where the model has such a limit


def model_shapes(cfg: Config, num_labels: int) -> Shapes:
    """The shapes of ``cfg``'s model with LoRA, built on the ``meta`` device."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    path = resolve_model_path(cfg.model.name)
    try:
        config = AutoConfig.from_pretrained(path, num_labels=num_labels)
    except (OSError, ValueError) as err:
        raise ModelError(f"model.name={cfg.model.name}: cannot read its config ({err})") from None
    auto = AutoModelForCausalLM if cfg.task == "causal_lm" else AutoModelForSequenceClassification
    with torch.device("meta"):  # LoRA too: peft builds its factors on the default device
        base = auto.from_config(config)
        full = [p.numel() for p in base.parameters()]
        model = attach_lora(base, cfg)
    adapted = {
        name.removeprefix("base_model.model."): (m.in_features, m.out_features)
        for name, m in model.named_modules()
        if hasattr(m, "lora_A") and hasattr(m, "in_features")
    }
    return Shapes(
        full=full,
        trainable={n: p.numel() for n, p in model.named_parameters() if p.requires_grad},
        adapted=adapted,
        hidden=getattr(config, "hidden_size", None),
        layers=getattr(config, "num_hidden_layers", None),
        positions=getattr(config, "max_position_embeddings", None),
    )


def check_shapes(cfg: Config, shapes: Shapes) -> None:
    """Refuse a LoRA rank above the smallest dimension of an adapted layer (its factors could
    not be full rank; at 100000 they would fill the machine) and a ``max_length`` beyond the
    model's positions (an encoder fails on the first row that long)."""
    if not shapes.adapted:
        raise ConfigError("lora.targets matched no trainable tensors")
    name, (d_in, d_out) = min(shapes.adapted.items(), key=lambda item: min(item[1]))
    smallest = min(d_in, d_out)
    if cfg.lora.rank > smallest:
        raise ConfigError(
            f"lora.rank={cfg.lora.rank} is larger than the smallest adapted dimension "
            f"({smallest} in {name}, {d_in} -> {d_out}); choose lora.rank <= {smallest}"
        )
    if shapes.positions is not None and cfg.max_length > shapes.positions:
        raise ConfigError(
            f"max_length={cfg.max_length} is longer than the model's {shapes.positions} "
            f"positions; choose max_length <= {shapes.positions}"
        )


def held_nodes(cfg: Config) -> int:
    """Adapters one simulator process holds at once: every node's, unless only pooled
    (centralized) training runs."""
    return 1 if all(METHODS[m].pooled for m in cfg.methods) else cfg.nodes


def memory_needed(cfg: Config, shapes: Shapes, held: int, processes: int = 1) -> dict[str, float]:
    """A floor of the run's peak memory in bytes, by part, over ``processes`` processes that
    each hold ``held`` nodes' adapters.

    Counted, per process: the frozen base once (4 bytes a value; 1 under model.quantize=int8,
    0.5 under 4bit); per node held, the trainable tensors (LoRA A and B, head) as weights,
    gradients and AdamW's two moments, 4 bytes each (SGD keeps no moments; frozen_a's A has
    weights only); the activations as one float32 hidden state per layer and row at
    ``max_length`` (batch_size x max_length x hidden x layers; the real backward keeps several
    per layer, on rows padded to the batch's longest only); the dense (n, n) adjacency and
    mixing matrix, 9 bytes a pair. Left out, so the real peak is higher: the tokenized data,
    evaluation, CHOCO's public copies, messages in flight, Python, torch and the libraries.
    """
    moments = 2 if cfg.optimizer == "adamw" else 0
    frozen = cfg.consensus == "frozen_a"
    per_node = sum(
        v * (1 if frozen and is_lora_a(k) else 2 + moments) for k, v in shapes.trainable.items()
    )
    hidden, layers = shapes.hidden or 0, shapes.layers or 0
    parts = {
        "base model": sum(shapes.full) * BASE_BYTES[cfg.model.quantize],
        f"adapters of {held} node{'s' * (held != 1)}": 4.0 * per_node * held,
        "activations": 4.0 * cfg.batch_size * cfg.max_length * hidden * layers,
        "mixing matrix": float(GRAPH_BYTES * cfg.nodes**2),
    }
    return {k: v * processes for k, v in parts.items()}


def available_memory() -> int:
    """Bytes this machine can give without swapping (what a run is compared against)."""
    import psutil

    return psutil.virtual_memory().available


# the key to lower when a part is the largest of the estimate
LOWER = {
    "base model": "a smaller model.name or model.quantize=4bit",
    "adapters": "nodes or lora.rank",
    "activations": "batch_size or max_length",
    "mixing matrix": "nodes",
}


def check_memory(cfg: Config, shapes: Shapes, held: int, processes: int = 1) -> None:
    """Refuse a run whose :func:`memory_needed` is more than the memory available."""
    parts = memory_needed(cfg, shapes, held, processes)
    need, free = sum(parts.values()), available_memory()
    if need <= free:
        return
    biggest = max(parts, key=parts.get)
    key = next(v for k, v in LOWER.items() if biggest.startswith(k))
    shown = ", ".join(f"{k} {v / GB:.2f} GB" for k, v in parts.items())
    where = f" in {processes} processes" if processes > 1 else ""
    raise ConfigError(
        f"memory: this run needs at least {need / GB:.1f} GB{where} ({shown}) but "
        f"{free / GB:.1f} GB is available; lower {key}"
    )


LABEL_BYTES = 300  # memory of one class's names in a model's config (id2label, label2id)


def check_labels(num_labels: int, key: str) -> None:
    """Refuse a task head of ``num_labels`` classes whose names alone (transformers' config
    holds two dicts of them, built before any weight) need more memory than is available."""
    need, free = num_labels * LABEL_BYTES, available_memory()
    if need > free:
        raise ConfigError(
            f"{key} {num_labels}: the model's config alone would need about {need / GB:,.0f} "
            f"GB of memory for the class names, but {free / GB:.1f} GB is available"
        )


def check_sizes(cfg: Config, held: int | None = None, processes: int = 1) -> None:
    """Refuse sizes that cannot run (:func:`check_shapes`, :func:`check_memory`) before
    anything is allocated or written. ``held``: adapters one process holds (default
    :func:`held_nodes`; 1 in a distributed process); ``processes``: processes on this machine
    (``declora launch``: one per node). The data is not read yet: the task head is counted
    at two classes, its least."""
    shapes = model_shapes(cfg, num_labels=2)
    check_shapes(cfg, shapes)
    check_memory(cfg, shapes, held_nodes(cfg) if held is None else held, processes)
