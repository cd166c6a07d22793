"""Per-node checkpoints: one safetensors file per node and round, written atomically.

``<root>/node_<i>/round_<t>.safetensors`` holds everything a node needs to continue exactly
where it was after round t: its adapter, its optimizer state (kept on the node; under
``second_moment=mixed`` the second moment is also mixed with the neighbours) and learning-rate
schedule, its torch RNG state, its data sampler's state, the exchange's own state (CHOCO's
public copies) and the caller's counters (bytes sent, samples). Tensors go in the file's
tensors, everything else in its string metadata as JSON: nothing is pickled, so loading one
cannot run code. A file is written under a temporary name, flushed to disk and
renamed into place, so a crash leaves either the previous checkpoint or the new one, never half
of one.

Each file carries the fingerprint of the run's config and a digest of its tensors and
metadata (:func:`verify`): an HMAC-SHA256 under the key derived from ``security.key_file``
for checkpoints (:class:`declora.protocol.keys.Keys`), or without a key file a SHA-256,
which catches damage but not a hand that rewrites the file and its digest. A file that is
truncated, altered, from another config or of other shapes is refused by name, and the run
falls back to the newest round every node holds intact. A DP node's file holds its secret
key, the only copy: folders are created 0700 and files 0600.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from declora.algorithms.tensors import State
from declora.config import ConfigError
from declora.harness import restorable
from declora.learning.secret import Secret
from declora.learning.train import Node

KEEP = 3  # fewest checkpoints kept per node; a run keeps keep_for(nodes)
_NAME = re.compile(r"round_(\d+)\.safetensors")
_TMP = re.compile(r"\.round_(\d+)\.tmp")  # a save's file before it is renamed into place


@dataclass(frozen=True)
class Store:
    """Where a run's checkpoints go and what they are checked against."""

    root: Path
    fingerprint: str = ""  # the run's config fingerprint (protocol.handshake.fingerprint)
    keep: int = KEEP
    key: bytes | None = None  # the checkpoint HMAC key (Keys.checkpoint); None: SHA-256

    @staticmethod
    def shapes_of(state: State) -> dict[str, tuple]:
        """The adapter's tensor shapes a checkpoint must have."""
        return {k: tuple(v.shape) for k, v in state.items()}


def keep_for(nodes: int) -> int:
    """Checkpoints each node keeps: a node cannot finish round t before its neighbours have
    sent round t, so when one dies two nodes are at most the graph's diameter (< nodes)
    rounds apart, and the newest round every node holds is among each one's newest nodes + 1."""
    return max(KEEP, nodes + 1)


def node_dir(root: Path, node_id: int) -> Path:
    return Path(root) / f"node_{node_id}"


def check_paths(root: Path, node_id: int) -> None:
    """Refuse, before a round is played, checkpoint paths that a save would fail on: the
    checkpoints folder or the node's folder not a folder, a round file or a save's
    temporary file not a file, a folder this user cannot write in (one ConfigError line)."""
    folder = node_dir(root, node_id)
    for path in (Path(root), folder):
        if path.exists() and not path.is_dir():
            raise ConfigError(f"node {node_id}: {path} is not a folder; move it away")
    if not folder.is_dir():
        return
    for p in folder.iterdir():
        made = _NAME.fullmatch(p.name) or _TMP.fullmatch(p.name)
        if made and not p.is_file():
            raise ConfigError(f"node {node_id}: {p} is not a file; move it away")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"node {node_id}: cannot write in {folder}")


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
    if node.secret is not None:  # DP: the site's own key (this file is the only copy)
        tensors["secret"] = torch.frombuffer(bytearray(node.secret.key), dtype=torch.uint8)
    if node.cuda_rng is not None:
        tensors["rng_cuda"] = node.cuda_rng
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
    return {k: v.cpu().contiguous().clone() for k, v in tensors.items()}, meta


def save(
    root: Path,
    node: Node,
    round_: int,
    counters: dict,
    extra: State | None = None,
    fingerprint: str = "",
    keep: int = KEEP,
    key: bytes | None = None,
) -> Path:
    """Write node's checkpoint for ``round_`` atomically (0600, in a 0700 folder), signed
    with ``key`` (or a SHA-256 without one); keep the newest ``keep``."""
    folder = node_dir(root, node.node_id)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    tensors, meta = _pack(node, extra or {})
    meta.update(round=round_, counters=counters, fingerprint=fingerprint)
    text = json.dumps(meta)
    path = folder / f"round_{round_:06d}.safetensors"
    tmp = folder / f".round_{round_:06d}.tmp"
    tmp.unlink(missing_ok=True)
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))  # 0600 from the start
    save_file(tensors, str(tmp), metadata={"declora": text, **_signature(tensors, text, key)})
    with tmp.open("rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    for old in rounds(root, node.node_id)[:-keep]:
        (folder / f"round_{old:06d}.safetensors").unlink(missing_ok=True)
    return path


def _signature(tensors: dict[str, torch.Tensor], meta: str, key: bytes | None) -> dict:
    """The file's digest: an HMAC-SHA256 under ``key``, or a SHA-256 without one."""
    if key is None:
        return {"sha256": _digest(tensors, meta)}
    return {"hmac": _digest(tensors, meta, key)}


def _digest(tensors: dict[str, torch.Tensor], meta: str, key: bytes | None = None) -> str:
    """SHA-256 (HMAC-SHA256 under ``key``) over every tensor's name, dtype, shape and bytes
    (in name order) and the metadata."""
    h = hmac.new(key, digestmod=hashlib.sha256) if key is not None else hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    h.update(meta.encode())
    return h.hexdigest()


def _read(path: Path, key: bytes | None = None) -> tuple[dict, dict[str, torch.Tensor], str]:
    """(metadata, tensors, why it is refused or ""), never an exception; with ``key`` the
    file must carry its HMAC, without one its SHA-256."""
    try:
        with safe_open(str(path), framework="pt") as f:
            stored = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no iter)
        text = stored["declora"]
        meta = json.loads(text)
    except Exception as err:  # noqa: BLE001 (a damaged file can fail anywhere in the parser)
        return {}, {}, f"unreadable ({type(err).__name__}: {str(err)[:80]})"
    if key is not None:
        tag = stored.get("hmac")
        if tag is None or not hmac.compare_digest(tag, _digest(tensors, text, key)):
            return meta, tensors, "HMAC does not match (another key file, or the file was altered)"
    elif stored.get("sha256") != _digest(tensors, text):
        why = (
            "signed with a key file this run does not have"
            if "hmac" in stored
            else ("checksum mismatch (the file was altered or damaged)")
        )
        return meta, tensors, why
    return meta, tensors, ""


def verify(
    root: Path,
    node_id: int,
    round_: int,
    fingerprint: str,
    shapes: dict[str, tuple],
    key: bytes | None = None,
    probe: Node | None = None,
) -> str:
    """Why node ``node_id``'s checkpoint of ``round_`` cannot be resumed from ("" if it can):
    damaged or altered (its digest under ``key``), another config's (``fingerprint``),
    adapter shapes other than ``shapes``, or (with ``probe``, a fresh node of the run) a
    value out of the range the node takes (:mod:`declora.harness.restorable`)."""
    path = node_dir(root, node_id) / f"round_{round_:06d}.safetensors"
    meta, tensors, why = _read(path, key)
    if why:
        return why
    if meta.get("fingerprint") != fingerprint or meta.get("round") != round_:
        return "written by a run of another config"
    for k, shape in shapes.items():
        got = tensors.get(f"adapter.{k}")
        if got is None or tuple(got.shape) != tuple(shape):
            have = None if got is None else tuple(got.shape)
            return f"adapter tensor {k} has shape {have}, this run's is {tuple(shape)}"
    return restorable.check(meta, tensors, probe) if probe is not None else ""


def good_rounds(
    root: Path,
    node_id: int,
    fingerprint: str,
    shapes: dict[str, tuple],
    warn,
    key: bytes | None = None,
    probe: Node | None = None,
) -> list[int]:
    """Rounds this node can resume from, oldest first; each refused file is named by ``warn``
    (``probe``: a fresh node of the run, whose ranges every value must be within)."""
    good = []
    for t in rounds(root, node_id):
        why = verify(root, node_id, t, fingerprint, shapes, key, probe)
        if why:
            warn(f"declora: node {node_id}: checkpoint of round {t} refused: {why}")
        else:
            good.append(t)
    return good


def load(root: Path, node: Node, round_: int, key: bytes | None = None) -> tuple[dict, State]:
    """Restore ``node`` in place from its checkpoint of ``round_`` (checked under ``key``).

    Returns the saved counters and the exchange state (both as the caller saved them).
    """
    path = node_dir(root, node.node_id) / f"round_{round_:06d}.safetensors"
    meta, tensors, why = _read(path, key)
    why = why or restorable.check(meta, tensors, node)  # before any of it is restored
    if why:
        raise ValueError(f"{path}: {why}")
    node.set_state({k: tensors[f"adapter.{k}"] for k in node.params})
    slots: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            slots.setdefault(int(idx), {})[name] = value
    node.optimizer.load_state_dict({"state": slots, "param_groups": meta["param_groups"]})
    node.scheduler.load_state_dict(meta["scheduler"])
    node.rng_state = tensors["rng"]
    if node.secret is not None and "secret" in tensors:  # the same key: the same noise again
        reproducible = node.secret.reproducible
        node.secret = Secret(tensors["secret"].numpy().tobytes(), reproducible)
        node.sampler.secret = node.secret
    if node.cuda_rng is not None and "rng_cuda" in tensors:  # else: its seeded one
        node.cuda_rng = tensors["rng_cuda"]
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
