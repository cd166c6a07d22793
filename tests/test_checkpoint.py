"""Per-node checkpoints: a restored node continues exactly as the original, files appear only
whole (write, then rename), old ones are pruned, and nothing in them is pickled."""

from __future__ import annotations

import json
import math
import re
import shutil

import pytest
import torch

from declora.config import load_config
from declora.harness import checkpoint
from declora.harness.session import prepare
from declora.learning.train import Node, train_steps
from tests.helpers import tiny_args


@pytest.fixture(scope="module")
def setup(tiny_model_dir, tiny_csv, tmp_path_factory):
    args = tiny_args(tiny_model_dir, tiny_csv, tmp_path_factory.mktemp("ck") / "run")
    cfg = load_config(None, [*args, "lora.dropout=0.1", "warmup=0.2", "schedule=cosine"])
    return cfg, prepare(cfg, node=1)


def fresh(cfg, s) -> Node:
    return Node.create(1, s.train, s.init, cfg, stream=1)


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_restored_node_continues_exactly(setup, tmp_path, optimizer):
    cfg, s = setup
    cfg = cfg.model_copy(update={"optimizer": optimizer})
    a = fresh(cfg, s)
    train_steps(s.model, a, 5, s.collate)  # mid-epoch, mid-schedule, dropout RNG advanced
    extra = {"public.0": torch.arange(4.0), "public.2": torch.ones(3)}
    checkpoint.save(tmp_path, a, 3, {"sent": 123, "samples": 40}, extra)
    b = fresh(cfg, s)
    counters, got = checkpoint.load(tmp_path, b, 3)
    assert counters == {"sent": 123, "samples": 40}
    assert got.keys() == extra.keys() and all(torch.equal(got[k], extra[k]) for k in extra)
    assert b.last_loss == a.last_loss and b.last_grad_norm == a.last_grad_norm
    train_steps(s.model, a, 7, s.collate)
    train_steps(s.model, b, 7, s.collate)
    for k in a.params:
        assert torch.equal(a.params[k], b.params[k]), k
    assert a.scheduler.get_last_lr() == b.scheduler.get_last_lr()


def test_files_appear_whole_and_old_ones_are_pruned(setup, tmp_path):
    cfg, s = setup
    node = fresh(cfg, s)
    (checkpoint.node_dir(tmp_path, 1)).mkdir(parents=True)
    # what a crash in the middle of a write leaves behind is never taken for a checkpoint
    (checkpoint.node_dir(tmp_path, 1) / ".round_000009.tmp").write_bytes(b"half")
    for t in range(1, 6):
        checkpoint.save(tmp_path, node, t, {})
    assert checkpoint.rounds(tmp_path, 1) == [3, 4, 5]  # KEEP newest
    names = sorted(p.name for p in checkpoint.node_dir(tmp_path, 1).iterdir())
    assert names == [".round_000009.tmp"] + [f"round_00000{t}.safetensors" for t in (3, 4, 5)]
    assert checkpoint.rounds(tmp_path, 0) == []


def test_checkpoint_is_safetensors_with_json_metadata(setup, tmp_path):
    cfg, s = setup
    node = fresh(cfg, s)
    train_steps(s.model, node, 2, s.collate)
    path = checkpoint.save(tmp_path, node, 2, {"sent": 1})
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")  # safetensors: u64 header length, then JSON
    header = json.loads(raw[8 : 8 + n])
    meta = json.loads(header["__metadata__"]["declora"])
    assert meta["round"] == 2 and meta["counters"] == {"sent": 1}
    assert b"\x80\x04" not in raw[:16]  # not a pickle
    kinds = {k.split(".")[0] for k in header if k != "__metadata__"}
    assert kinds == {"adapter", "optim", "rng", "sampler"}


def test_a_damaged_foreign_or_misshapen_checkpoint_is_refused(setup, tmp_path):
    """Bit flips, truncation, another config and other shapes are each refused with a reason,
    and a node then offers only the rounds it holds intact."""
    cfg, s = setup
    node = fresh(cfg, s)
    shapes = {k: tuple(v.shape) for k, v in node.params.items()}
    for t in (1, 2, 3, 4):
        checkpoint.save(tmp_path, node, t, {}, fingerprint="abc", keep=5)
    folder = checkpoint.node_dir(tmp_path, 1)
    flipped = bytearray((folder / "round_000004.safetensors").read_bytes())
    flipped[len(flipped) // 2] ^= 0x01
    (folder / "round_000004.safetensors").write_bytes(bytes(flipped))
    raw = (folder / "round_000003.safetensors").read_bytes()
    (folder / "round_000003.safetensors").write_bytes(raw[: len(raw) // 2])
    assert "checksum mismatch" in checkpoint.verify(tmp_path, 1, 4, "abc", shapes)
    assert "unreadable" in checkpoint.verify(tmp_path, 1, 3, "abc", shapes)
    assert "another config" in checkpoint.verify(tmp_path, 1, 2, "other", shapes)
    rank1 = {k: (1, *v[1:]) if "lora_A" in k else v for k, v in shapes.items()}
    assert "has shape" in checkpoint.verify(tmp_path, 1, 2, "abc", rank1)
    assert checkpoint.verify(tmp_path, 1, 2, "abc", shapes) == ""
    lines = []
    assert checkpoint.good_rounds(tmp_path, 1, "abc", shapes, lines.append) == [1, 2]
    assert [x.split(":")[2].strip() for x in lines] == [
        "checkpoint of round 3 refused",
        "checkpoint of round 4 refused",
    ]
    with pytest.raises(ValueError, match="checksum mismatch"):
        checkpoint.load(tmp_path, fresh(cfg, s), 4)


def test_a_run_keeps_enough_checkpoints_for_its_nodes_to_meet():
    assert checkpoint.keep_for(2) == checkpoint.KEEP
    assert checkpoint.keep_for(16) == 17  # more than any two nodes can be apart on 16 nodes


# --- issue 25: what a checkpoint restores is within range; its paths are what they should be


def resign(path, change) -> None:
    """Rewrite a checkpoint with ``change(meta, tensors)`` applied and its SHA-256 made
    again, as someone who can write the file can (without a key file nothing stops them)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["declora"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    change(meta, tensors)
    text = json.dumps(meta)
    save_file(
        tensors, str(path), metadata={"declora": text, "sha256": checkpoint._digest(tensors, text)}
    )


def _set(where: str, key, value):
    def change(meta, tensors):
        (meta if where == "meta" else tensors)[key] = value

    return change


def _group(key, value):
    def change(meta, tensors):
        meta["param_groups"][0][key] = value

    return change


OUT_OF_RANGE = {  # a re-signed checkpoint -> the reason it is refused
    "sampler position past its rows": (_set("meta", "sampler_pos", 10**6), "sampler position"),
    "sampler position below 0": (_set("meta", "sampler_pos", -1), "sampler position"),
    "sampler order out of range": (
        lambda m, t: t["sampler.order"].__setitem__(0, len(t["sampler.order"]) + 3),
        "sampler order is not a permutation",
    ),
    "sampler order too short": (_set("tensors", "sampler.order", torch.arange(5)), "sampler order"),
    "sampler generator": (_set("meta", "sampler_rng", {"state": "x"}), "sampler generator"),
    "optimizer moment shape": (
        _set("tensors", "optim.0.exp_avg", torch.zeros(3)),
        "optimizer state optim.0.exp_avg",
    ),
    "optimizer moment NaN": (
        lambda m, t: t["optim.0.exp_avg_sq"].fill_(math.nan),
        "optim.0.exp_avg_sq is not finite",
    ),
    "optimizer slot of no tensor": (
        _set("tensors", "optim.99.exp_avg", torch.zeros(3)),
        "optimizer state",
    ),
    "negative lr": (_group("lr", -1.0), "param_groups"),
    "text lr": (_group("lr", "fast"), "param_groups"),
    "one param group": (lambda m, t: m["param_groups"].pop(), "param_groups"),
    "scheduler step below 0": (
        lambda m, t: m["scheduler"].update(last_epoch=-5),
        "scheduler",
    ),
    "scheduler attribute": (
        lambda m, t: m["scheduler"].update(optimizer="x"),
        "scheduler",
    ),
    "torch RNG size": (_set("tensors", "rng", torch.zeros(7, dtype=torch.uint8)), "RNG state"),
    "last loss": (_set("meta", "last_loss", "low"), "last_loss"),
    "counters": (_set("meta", "counters", {"samples": -1, "wall_s": 0.0}), "counters"),
    "exchange name": (_set("tensors", "exchange.public.x", torch.zeros(4)), "exchange state"),
    "adapter NaN": (
        lambda m, t: next(v for k, v in t.items() if k.startswith("adapter.")).fill_(math.nan),
        "is not finite",
    ),
}


@pytest.mark.parametrize("case", list(OUT_OF_RANGE))
def test_a_checkpoint_re_signed_out_of_range_is_refused_by_name(setup, tmp_path, case):
    """issue 25: an out-of-range sampler state passed the SHA-256 and failed with IndexError."""
    cfg, s = setup
    node = fresh(cfg, s)
    train_steps(s.model, node, 2, s.collate)
    path = checkpoint.save(tmp_path, node, 3, {"samples": 40, "wall_s": 1.0})
    change, reason = OUT_OF_RANGE[case]
    resign(path, change)
    shapes = {k: tuple(v.shape) for k, v in node.params.items()}
    lines = []
    assert checkpoint.good_rounds(tmp_path, 1, "", shapes, lines.append, probe=fresh(cfg, s)) == []
    assert len(lines) == 1 and reason in lines[0], lines
    with pytest.raises(ValueError, match=re.escape(reason)) as err:
        checkpoint.load(tmp_path, fresh(cfg, s), 3)
    assert "\n" not in str(err.value)


PATHS = {  # what is put in place of a checkpoint path -> the one line
    "node folder is a file": (lambda root: root / "node_1", "file", "node_1 is not a folder"),
    "round file is a folder": (
        lambda root: root / "node_1" / "round_000002.safetensors",
        "folder",
        "round_000002.safetensors is not a file",
    ),
    "checkpoints is a file": (lambda root: root, "file", "checkpoints is not a folder"),
}


@pytest.mark.parametrize("case", list(PATHS))
def test_checkpoint_paths_that_cannot_be_written_are_refused_at_start(setup, tmp_path, case):
    """issue 25: a node folder replaced by a file said "starting over", then failed with
    FileExistsError at the first save; a round file replaced by a folder, IsADirectoryError."""
    from declora.config import ConfigError
    from declora.runtimes.distributed.worker import held_rounds

    cfg, s = setup
    root = tmp_path / "checkpoints"
    for t in (1, 2):
        checkpoint.save(root, fresh(cfg, s), t, {"samples": 0, "wall_s": 0.0})
    where, kind, message = PATHS[case]
    path = where(root)
    if kind == "file":
        shutil.rmtree(path)
        path.write_text("x")
    else:
        path.unlink()
        path.mkdir()
    store = checkpoint.Store(root)
    with pytest.raises(ConfigError, match=f"node 1: .*{message}") as err:
        held_rounds(store, 1, s)
    assert "\n" not in str(err.value)
