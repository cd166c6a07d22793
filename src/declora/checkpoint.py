"""Per-node checkpoints: one safetensors file per node and round, written atomically.

``<root>/node_<i>/round_<t>.safetensors`` holds everything a node needs to continue exactly
where it was after round t: its adapter, its optimizer state (Adam moments never leave the
node) and learning-rate schedule, its torch RNG state, its data sampler's state, the exchange's
own state (CHOCO's public copies) and the caller's counters (bytes sent, samples). Tensors go in
the file's tensors, everything else in its string metadata as JSON: nothing is pickled, so
loading one cannot run code. A file is written under a temporary name, flushed to disk and
renamed into place, so a crash leaves either the previous checkpoint or the new one, never half
of one.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from declora.tensors import State
from declora.train import Node

KEEP = 3  # newest checkpoints kept per node (nodes may be a round or two apart when one dies)
_NAME = re.compile(r"round_(\d+)\.safetensors")


def node_dir(root: Path, node_id: int) -> Path:
    return Path(root) / f"node_{node_id}"


def rounds(root: Path, node_id: int) -> list[int]:
    """Rounds this node has a complete checkpoint for, oldest first."""
    folder = node_dir(root, node_id)
    if not folder.is_dir():
        return []
    found = (_NAME.fullmatch(p.name) for p in folder.iterdir())
    return sorted(int(m.group(1)) for m in found if m)


def _pack(node: Node, extra: State) -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {f"adapter.{k}": v.detach() for k, v in node.params.items()}
    opt = node.optimizer.state_dict()
    for idx, slots in opt["state"].items():
        for name, value in slots.items():
            tensors[f"optim.{idx}.{name}"] = torch.as_tensor(value)
    tensors["rng"] = node.rng_state
    sampler = node.sampler.state_dict()
    tensors["sampler.order"] = torch.from_numpy(np.asarray(sampler["order"], dtype=np.int64))
    tensors.update({f"exchange.{k}": v for k, v in extra.items()})
    meta = {
        "param_groups": opt["param_groups"],
        "scheduler": node.scheduler.state_dict(),  # plain numbers (lr_lambdas are not saved)
        "sampler_pos": int(sampler["pos"]),
        "sampler_rng": sampler["rng"],
        "last_loss": node.last_loss,
        "last_grad_norm": node.last_grad_norm,
    }
    return {k: v.contiguous().clone() for k, v in tensors.items()}, meta


def save(root: Path, node: Node, round_: int, counters: dict, extra: State | None = None) -> Path:
    """Write node's checkpoint for ``round_`` atomically; keep the newest ``KEEP``."""
    folder = node_dir(root, node.node_id)
    folder.mkdir(parents=True, exist_ok=True)
    tensors, meta = _pack(node, extra or {})
    meta.update(round=round_, counters=counters)
    path = folder / f"round_{round_:06d}.safetensors"
    tmp = folder / f".round_{round_:06d}.tmp"
    save_file(tensors, str(tmp), metadata={"declora": json.dumps(meta)})
    with tmp.open("rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    for old in rounds(root, node.node_id)[:-KEEP]:
        (folder / f"round_{old:06d}.safetensors").unlink(missing_ok=True)
    return path


def load(root: Path, node: Node, round_: int) -> tuple[dict, State]:
    """Restore ``node`` in place from its checkpoint of ``round_``.

    Returns the saved counters and the exchange state (both as the caller saved them).
    """
    path = node_dir(root, node.node_id) / f"round_{round_:06d}.safetensors"
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["declora"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no iter)
    node.set_state({k: tensors[f"adapter.{k}"] for k in node.params})
    slots: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            slots.setdefault(int(idx), {})[name] = value
    node.optimizer.load_state_dict({"state": slots, "param_groups": meta["param_groups"]})
    node.scheduler.load_state_dict(meta["scheduler"])
    node.rng_state = tensors["rng"]
    node.sampler.load_state_dict(
        {
            "order": tensors["sampler.order"].numpy(),
            "pos": meta["sampler_pos"],
            "rng": meta["sampler_rng"],
        }
    )
    node.last_loss = _float(meta["last_loss"])
    node.last_grad_norm = _float(meta["last_grad_norm"])
    extra = {k.removeprefix("exchange."): v for k, v in tensors.items() if k[:9] == "exchange."}
    return meta["counters"], extra


def _float(value) -> float:
    return float("nan") if value is None else float(value)
