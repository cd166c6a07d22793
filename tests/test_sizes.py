"""Sizes that cannot run are refused up front: LoRA rank above the adapted layers, max_length
beyond the model's positions, too many nodes, more memory than the machine has. Each is one
line, exit code 2, and no output folder."""

from __future__ import annotations

import pytest

from declora.cli import main
from declora.config import ConfigError, load_config
from declora.harness.session import prepare
from declora.learning import capacity as sizes
from declora.learning.adapters import build_model, trainable_state
from declora.learning.capacity import (
    check_memory,
    check_shapes,
    held_nodes,
    memory_needed,
    model_shapes,
)


@pytest.fixture(scope="module")
def gqa_llama_dir(tmp_path_factory):
    """Only a config.json (shapes need no weights): a LLaMA whose v_proj is narrower (64 -> 32,
    two key-value heads of 16) than its q_proj (64 -> 64)."""
    from transformers import LlamaConfig

    path = tmp_path_factory.mktemp("gqa-llama")
    LlamaConfig(
        vocab_size=1000,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    ).save_pretrained(path)
    return path


def refused(args: list[str], out, capsys) -> str:
    """Run the CLI; it must exit 2 with one line on stderr and leave ``out`` uncreated."""
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("declora: error: "), err
    assert not out.exists()
    return err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ["lora.rank=100000"],
            "lora.rank=100000 is larger than the smallest adapted dimension (32",
        ),
        (["lora.rank=33"], "choose lora.rank <= 32"),
        (["max_length=129"], "max_length=129 is longer than the model's 128 positions"),
        (["nodes=100000"], "nodes: Input should be less than or equal to 10000"),
    ],
)
@pytest.mark.parametrize("command", ["run", "tune"])
def test_impossible_sizes_are_one_line_and_nothing_written(
    tiny_overrides, tmp_path, capsys, command, extra, message
):
    out = tmp_path / "run"  # tiny_overrides' out=
    assert message in refused([command, *tiny_overrides, *extra], out, capsys)


def test_several_seeds_are_refused_before_their_folder(tiny_overrides, tmp_path, capsys):
    out = tmp_path / "run"
    err = refused(["run", *tiny_overrides, "seeds=[0,1]", "lora.rank=64"], out, capsys)
    assert "lora.rank=64" in err


def test_estimate_refuses_the_rank_too(tiny_overrides, capsys):
    assert main(["estimate", "--num-labels", "2", *tiny_overrides, "lora.rank=1000"]) == 2
    assert "lora.rank=1000" in capsys.readouterr().err


def test_a_distributed_process_refuses_before_loading(tiny_overrides):
    cfg = load_config(None, [*tiny_overrides, "lora.rank=100"])
    with pytest.raises(ConfigError, match="lora.rank=100 "):
        prepare(cfg, node=0)


def test_the_smallest_adapted_layer_sets_the_limit(gqa_llama_dir):
    args = [f"model.name={gqa_llama_dir}", "task=causal_lm", "data.label_words=[bad,good]"]
    for rank, ok in ((32, True), (33, False)):
        cfg = load_config(None, [*args, f"lora.rank={rank}"])
        shapes = model_shapes(cfg, num_labels=2)
        if ok:
            check_shapes(cfg, shapes)
        else:
            with pytest.raises(ConfigError, match=r"32 in model\.layers\.\d\.self_attn\.v_proj"):
                check_shapes(cfg, shapes)


def test_a_rank_at_the_smallest_dimension_is_allowed(tiny_model_dir):
    cfg = load_config(None, [f"model.name={tiny_model_dir}", "lora.rank=32", "max_length=128"])
    check_shapes(cfg, model_shapes(cfg, num_labels=2))


# ------------------------------------------------------------------------------------- memory


def test_memory_counts_what_its_docstring_says(tiny_model_dir):
    """Against an independent count on the real model: base values x 4 bytes, each node's
    trainable values x 4 tensors x 4 bytes (2 under SGD), 9 bytes per pair of nodes."""
    from transformers import AutoModelForSequenceClassification

    args = [f"model.name={tiny_model_dir}", "nodes=5", "batch_size=3", "max_length=16"]
    args.append("subrounds=1")  # every method at batch 3 (the built-in dec-lora halves it)
    cfg = load_config(None, args)
    base = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=2)
    trainable = sum(v.numel() for v in trainable_state(build_model(cfg, num_labels=2)).values())
    parts = memory_needed(cfg, model_shapes(cfg, num_labels=2), held=5)
    assert parts == {
        "base model": 4 * sum(p.numel() for p in base.parameters()),
        "adapters of 5 nodes": 5 * 16 * trainable,
        "activations": 4 * 3 * 16 * 32 * 2,  # batch x max_length x hidden x layers
        "mixing matrix": 9 * 5**2,
    }
    sgd = load_config(None, [*args, "optimizer=sgd"])
    parts = memory_needed(sgd, model_shapes(sgd, num_labels=2), held=5)
    assert parts["adapters of 5 nodes"] == 5 * 8 * trainable
    quarter = load_config(None, [*args, "model.quantize=4bit"])
    parts = memory_needed(quarter, model_shapes(quarter, num_labels=2), held=5)
    assert parts["base model"] == sum(p.numel() for p in base.parameters()) / 2


def test_one_pooled_method_holds_one_adapter():
    assert held_nodes(load_config(None, ["methods=[centralized]", "nodes=6"])) == 1
    assert held_nodes(load_config(None, ["methods=[centralized,local]", "nodes=6"])) == 6


def test_too_little_memory_is_one_line_and_nothing_written(
    tiny_overrides, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(sizes, "available_memory", lambda: 10**6)  # 1 MB free
    err = refused(["run", *tiny_overrides], tmp_path / "run", capsys)
    assert "memory: this run needs at least" in err and "but 0.0 GB is available" in err


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ([], "lower a smaller model.name or model.quantize=4bit"),  # the base dominates
        (["nodes=1000", "lora.rank=32"], "lower nodes or lora.rank"),
        (["batch_size=100000"], "lower batch_size or max_length"),
        (["nodes=10000"], "lower nodes"),
    ],
)
def test_the_refusal_names_the_key_of_the_largest_part(tiny_model_dir, monkeypatch, extra, key):
    monkeypatch.setattr(sizes, "available_memory", lambda: 1)
    cfg = load_config(None, [f"model.name={tiny_model_dir}", *extra])
    with pytest.raises(ConfigError, match=rf"{key}$"):
        check_memory(cfg, model_shapes(cfg, num_labels=2), held_nodes(cfg))


def test_processes_on_one_machine_add_up(tiny_model_dir, monkeypatch):
    cfg = load_config(None, [f"model.name={tiny_model_dir}", "nodes=4"])
    shapes = model_shapes(cfg, num_labels=2)
    one = sum(memory_needed(cfg, shapes, held=1).values())
    monkeypatch.setattr(sizes, "available_memory", lambda: int(2 * one))
    check_memory(cfg, shapes, held=1)
    with pytest.raises(ConfigError, match="in 4 processes"):
        check_memory(cfg, shapes, held=1, processes=4)


def test_estimate_prints_the_memory(tiny_overrides, capsys):
    assert main(["estimate", "--num-labels", "2", *tiny_overrides]) == 0
    out = capsys.readouterr().out
    assert "memory of declora run: at least" in out and "adapters of 4 nodes" in out
