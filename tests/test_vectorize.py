"""vectorize=true: every node's local steps in one stacked forward and backward give the same
numbers as one node at a time (dropout off), for each method and consensus rule, on an
encoder and a causal LM."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from declora.algorithms.methods import METHODS
from declora.config import ConfigError, load_config
from declora.harness import session
from declora.learning.train import train_steps
from declora.learning.vectorize import Stacked, train_together
from tests.helpers import records, run_sim, save_tiny_bert, tiny_args, tiny_llama_args


@pytest.fixture(scope="module")
def calm_bert_dir(tmp_path_factory):
    """The tiny BERT with no dropout (the stacked batch's dropout masks would otherwise differ
    from each node's own)."""
    path = tmp_path_factory.mktemp("calm-bert")
    return save_tiny_bert(path, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def _same(a: list[dict], b: list[dict]) -> None:
    assert [r["round"] for r in a] == [r["round"] for r in b]
    for x, y in zip(a, b):
        for key, value in x.items():
            if key != "wall_s" and isinstance(value, float):
                assert y[key] == pytest.approx(value, rel=1e-5, abs=1e-5), (x["round"], key)


def _both(args: list[str], tmp_path) -> tuple[list[dict], list[dict]]:
    run_sim([*args, f"out={tmp_path / 'loop'}", "vectorize=false"])
    run_sim([*args, f"out={tmp_path / 'batched'}", "vectorize=true"])
    return records(tmp_path / "loop"), records(tmp_path / "batched")


@pytest.mark.slow
@pytest.mark.parametrize(
    "extra",
    [
        ["methods=[dec-lora,local,fedavg]"],
        ["methods=[dec-lora]", "consensus=frozen_a"],
        ["methods=[dec-lora]", "consensus=product", "faults.node_drop=0.3"],
    ],
    ids=["ab, three methods", "frozen_a", "product, nodes sitting out"],
)
def test_vectorized_equals_the_loop(calm_bert_dir, tiny_csv, tmp_path, extra):
    args = [
        *tiny_args(calm_bert_dir, tiny_csv, tmp_path / "x"),
        "rounds=3",
        "local_steps=2",
        *extra,
    ]
    loop, batched = _both(args, tmp_path)
    _same(loop, batched)
    untrained = json.loads((tmp_path / "loop" / "summary.json").read_text())["untrained"]
    assert loop[-1]["loss"] != pytest.approx(untrained["loss"], abs=1e-3)  # it did train


@pytest.mark.slow
def test_vectorized_equals_the_loop_on_a_causal_lm(tiny_llama_dir, tiny_csv, tmp_path):
    """With SGD: this LM's loss is near 0 after a round, and AdamW divides gradients of about
    1e-9 by their own size, which turns float rounding (the stacked batch is padded wider, so
    attention takes its masked path) into full steps."""
    args = [
        *tiny_llama_args(tiny_llama_dir, tiny_csv, tmp_path / "x"),
        "rounds=2",
        "local_steps=2",
        "optimizer=sgd",
    ]
    loop, batched = _both([*args, "methods=[dec-lora]"], tmp_path)
    _same(loop, batched)


@pytest.fixture(scope="module")
def calm(calm_bert_dir, tiny_csv, tmp_path_factory):
    args = tiny_args(calm_bert_dir, tiny_csv, tmp_path_factory.mktemp("v") / "o")
    return session.prepare(load_config(None, [*args, "vectorize=true"]))


def test_one_stacked_step_moves_each_node_as_its_own_step(calm):
    loop = session.party_for(calm, METHODS["local"])
    together = session.party_for(calm, METHODS["local"])
    for node in loop.nodes:
        train_steps(calm.model, node, 3, calm.collate)
    train_together(calm.model, together.nodes, 3, calm.collate, together.together)
    for a, b in zip(loop.nodes, together.nodes, strict=True):
        assert b.last_loss == pytest.approx(a.last_loss, rel=1e-5)
        assert b.last_grad_norm == pytest.approx(a.last_grad_norm, rel=1e-4)
        for k in a.params:
            torch.testing.assert_close(b.params[k], a.params[k], rtol=1e-5, atol=1e-5)


def test_unequal_row_counts_take_one_matmul_per_node(calm):
    """The per-node path (rows of different counts) gives what each node's own forward does."""
    nodes = session.party_for(calm, METHODS["local"]).nodes[:3]
    with torch.no_grad():
        for n in nodes:
            for v in n.params.values():
                v.add_(0.1 * torch.randn_like(v))
    rows = [3, 5, 2]
    batches = [calm.collate(n.data, np.arange(r)) for n, r in zip(nodes, rows)]
    from torch.func import functional_call

    from declora.learning.vectorize import stack_batches

    calm.model.eval()
    want = [
        functional_call(calm.model, n.params, args=(), kwargs=b).logits
        for n, b in zip(nodes, batches)
    ]
    batch = stack_batches(batches, calm.pad_id)
    with Stacked(calm.model, list(nodes[0].params)) as stacked:
        stacked.states, stacked.rows = [n.params for n in nodes], rows
        got = calm.model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    torch.testing.assert_close(got, torch.cat(want), rtol=1e-5, atol=1e-6)


def test_vectorize_with_dp_is_refused():
    with pytest.raises(ConfigError, match="vectorize=true does not run DP-SGD"):
        load_config(None, ["vectorize=true", "privacy.epsilon=3"])
