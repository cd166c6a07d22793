"""task: causal_lm on a tiny LLaMA: config, prompts and targets, scoring, the simulator with
every consensus rule and compressor, quantized bases, PEFT export and the traffic estimate."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from declora.algorithms.methods import METHODS
from declora.cli import main
from declora.config import ConfigError, load_config
from declora.harness import session
from declora.jobs.estimate import estimate
from declora.learning import causal_lm as lm
from declora.learning.sources import DataError
from declora.learning.tasks import TASKS, load_task_data
from declora.runtimes import sim
from tests.helpers import cue_pairs, tiny_llama_args, write_csv

LM = TASKS["causal_lm"]()


@pytest.fixture(scope="module")
def pairs_csv(tmp_path_factory):
    return write_csv(tmp_path_factory.mktemp("pairs") / "pairs.csv", cue_pairs(240, seed=3))


def llama_cfg(tiny_llama_dir, tiny_csv, out, *extra):
    return load_config(None, [*tiny_llama_args(tiny_llama_dir, tiny_csv, out), *extra])


# --- config ----------------------------------------------------------------------------------


def test_causal_lm_targets_default_to_q_and_v_proj():
    cfg = load_config(None, ["task=causal_lm", "data.label_words=[neg,pos]"])
    assert cfg.lora.targets == ["q_proj", "v_proj"]
    cfg = load_config(
        None, ["task=causal_lm", "data.label_words=[neg,pos]", "lora.targets=[o_proj]"]
    )
    assert cfg.lora.targets == ["o_proj"]
    assert load_config(None, []).lora.targets == ["query", "value"]


@pytest.mark.parametrize(
    "overrides, words",
    [
        (["task=causal_lm"], "needs either"),
        (["task=causal_lm", "data.label_words=[a,b]", "data.prompt_column=p"], "needs either"),
        (["task=causal_lm", "data.prompt_column=p"], "go together"),
        (["data.label_words=[a,b]"], "need task=causal_lm"),
        (["task=causal_lm", "data.label_words=[a,b]", "data.prompt_template=x"], "{text}"),
        (
            ["task=causal_lm", "data.prompt_column=p", "data.response_column=r"],
            "instruction pairs have none",
        ),
        (["model.quantize=2bit"], "model.quantize"),
    ],
)
def test_bad_causal_config_is_one_line(overrides, words):
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_label_words_must_match_the_classes(tiny_llama_dir, tiny_csv, tmp_path):
    cfg = llama_cfg(tiny_llama_dir, tiny_csv, tmp_path, "data.label_words=[a,b,c]")
    with pytest.raises(DataError, match="3 words for 2 classes"):
        load_task_data(cfg, AutoTokenizer.from_pretrained(tiny_llama_dir))
    cfg = llama_cfg(tiny_llama_dir, tiny_csv, tmp_path, "data.label_words=[good,good]")
    with pytest.raises(DataError, match="distinct"):
        load_task_data(cfg, AutoTokenizer.from_pretrained(tiny_llama_dir))


# --- prompts, targets, batches ---------------------------------------------------------------


def test_loss_counts_target_tokens_only():
    batch = lm.pack([[5, 6, 7], [8]], [[1, 2], [3]], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 1, 2], [8, 3, 0, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]
    assert batch["labels"].tolist() == [[-100, -100, -100, 1, 2], [-100, 3, -100, -100, -100]]


@pytest.mark.parametrize("chat", [True, False])
def test_prompts_use_the_chat_template_when_asked(tiny_llama_dir, tiny_csv, tmp_path, chat):
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    cfg = llama_cfg(tiny_llama_dir, tiny_csv, tmp_path, f"data.chat_template={chat}")
    train = load_task_data(cfg, tok).train
    text = tok.decode(train.input_ids[0])
    assert ("[ assistant ]" in text) == chat and "sentiment :" in text
    assert train.choices == [tok("negative", add_special_tokens=False)["input_ids"]] + [
        tok("positive", add_special_tokens=False)["input_ids"]
    ]
    assert all(t == train.choices[y] for t, y in zip(train.targets, train.labels))


def test_instruction_targets_end_with_eos(tiny_llama_dir, pairs_csv, tmp_path):
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    cfg = load_config(
        None,
        [
            "task=causal_lm",
            f"data.path={pairs_csv}",
            "data.prompt_column=prompt",
            "data.response_column=response",
            "partition.kind=iid",
            "data.test_size=40",
            "data.val_size=40",
        ],
    )
    splits = load_task_data(cfg, tok)
    train, held_out = splits.train, splits.test
    assert len(train) == 160 and len(held_out) == 40 and train.choices is None
    assert all(t[-1] == tok.eos_token_id and len(t) >= 2 for t in train.targets)


@pytest.mark.parametrize("words", ["[negative,positive]", "['not good','very good']"])
def test_label_word_scores_equal_one_row_at_a_time(tiny_llama_dir, tiny_csv, tmp_path, words):
    """Batched, right-padded scoring gives each row's own log-likelihoods of the label words,
    whether they are one token each (read off one forward pass) or several."""
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    cfg = llama_cfg(tiny_llama_dir, tiny_csv, tmp_path, "data.test_size=24", "data.val_size=24")
    cfg.data.label_words = yaml.safe_load(words)
    held_out = load_task_data(cfg, tok).test
    single = all(len(c) == 1 for c in held_out.choices)
    assert single == (words == "[negative,positive]")
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    got = LM.evaluate(model, {}, LM.eval_batches(held_out, tok.pad_token_id))
    scores = []
    with torch.no_grad():
        for prompt in held_out.input_ids:
            row = []
            for word in held_out.choices:
                ids = torch.tensor([prompt + word])
                logp = model(input_ids=ids).logits[0].log_softmax(-1)
                row.append(sum(float(logp[len(prompt) - 1 + k, w]) for k, w in enumerate(word)))
            scores.append(row)
    scores = torch.tensor(scores)
    gold = torch.from_numpy(held_out.labels)
    assert got["accuracy"] == pytest.approx(float((scores.argmax(1) == gold).float().mean()))
    loss = float(torch.nn.functional.cross_entropy(scores, gold))
    assert got["loss"] == pytest.approx(loss, rel=1e-4)


# --- the simulator ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def llama_run(tiny_llama_dir, tiny_csv, tmp_path_factory):
    out = tmp_path_factory.mktemp("llama-run")
    args = tiny_llama_args(tiny_llama_dir, tiny_csv, out)
    assert main(["run", *args, "methods=[dec-lora,centralized]"]) == 0
    return out, load_config(None, args)


def test_training_beats_the_untrained_model(llama_run, tiny_llama_dir):
    out, cfg = llama_run
    s = session.prepare(cfg)
    untrained = LM.evaluate(s.model, s.init, s.test)
    saved = json.loads((out / "summary.json").read_text())
    assert saved["untrained"] == pytest.approx(untrained)
    summary = saved["methods"]
    for method in ("dec-lora", "centralized"):
        assert summary[method]["accuracy"] >= untrained["accuracy"] + 0.2, (untrained, summary)
        assert summary[method]["loss"] < untrained["loss"] - 0.05
    # no task head: only LoRA tensors are exchanged
    assert all(".lora_" in k for k in s.init)


@pytest.mark.parametrize("method", ["dec-lora", "centralized"])
def test_exported_llama_adapter_reproduces_accuracy(llama_run, tiny_llama_dir, method):
    from peft import PeftModel

    out, cfg = llama_run
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    model = PeftModel.from_pretrained(base, out / "adapters" / method).eval()
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    held_out = load_task_data(cfg, tok).test
    acc = LM.evaluate(model, {}, LM.eval_batches(held_out, tok.pad_token_id))["accuracy"]
    summary = json.loads((out / "summary.json").read_text())["methods"][method]
    assert acc == pytest.approx(summary.get("average_adapter", summary)["accuracy"], abs=1e-9)


@pytest.mark.parametrize(
    "extra",
    [
        ["consensus=frozen_a"],
        ["consensus=product"],
        ["compression.kind=quantize", "compression.bits=4", "compression.scheme=choco"],
        ["compression.kind=topk", "compression.ratio=0.25"],
        ["methods=[fedavg,local]", "faults.link_drop=0.3"],
    ],
    ids=["frozen_a", "product", "q4-choco", "topk", "fedavg-local-faults"],
)
def test_every_rule_and_compressor_runs_on_a_llama(tiny_llama_dir, tiny_csv, tmp_path, extra):
    cfg = llama_cfg(
        tiny_llama_dir, tiny_csv, tmp_path / "run", "rounds=2", "methods=[dec-lora]", *extra
    )
    _, summary = sim.run(cfg, echo=lambda *_: None)
    for entry in summary["methods"].values():
        assert np.isfinite(entry["loss"]) and 0 <= entry["accuracy"] <= 1


def test_instruction_pairs_train_and_report_token_metrics(tiny_llama_dir, pairs_csv, tmp_path):
    args = [
        f"model.name={tiny_llama_dir}",
        f"data.path={pairs_csv}",
        "task=causal_lm",
        "data.prompt_column=prompt",
        "data.response_column=response",
        "partition.kind=iid",
        "data.test_size=40",
        "data.val_size=40",
        "nodes=3",
        "rounds=4",
        "local_steps=3",
        "batch_size=8",
        "lr=0.05",
        "methods=[dec-lora]",
        "node_eval_size=16",
        f"out={tmp_path / 'run'}",
    ]
    assert main(["run", *args]) == 0
    recs = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    last = recs[-1]
    assert 0 <= last["accuracy"] <= 1 and last["f1"] is None and np.isfinite(last["loss"])
    assert (tmp_path / "run" / "adapters" / "dec-lora" / "adapter_config.json").is_file()


@pytest.mark.parametrize("quantize, layer", [("4bit", "Linear4bit"), ("int8", "Linear8bitLt")])
def test_quantized_base_trains_and_exports(tiny_llama_dir, tiny_csv, tmp_path, quantize, layer):
    pytest.importorskip("bitsandbytes")
    cfg = llama_cfg(
        tiny_llama_dir, tiny_csv, tmp_path / "run", "rounds=2", f"model.quantize={quantize}"
    )
    s = session.prepare(cfg)
    q_proj = s.model.base_model.model.model.layers[0].self_attn.q_proj
    assert type(q_proj.base_layer).__name__ == layer
    _, summary = sim.run(cfg, echo=lambda *_: None)
    entry = summary["methods"]["dec-lora"]
    assert np.isfinite(entry["loss"])
    saved = json.loads((tmp_path / "run/adapters/dec-lora/adapter_config.json").read_text())
    assert saved["peft_type"] == "LORA" and saved["target_modules"]


def test_estimate_matches_a_llama_run(llama_run):
    out, cfg = llama_run
    est = estimate(cfg)
    summary = json.loads((out / "summary.json").read_text())["methods"]["dec-lora"]
    assert est["dec-lora"]["bytes_per_message"] == summary["bytes_per_edge_round"]
    assert est["dec-lora"]["sent_per_node_run"] == pytest.approx(summary["bytes_sent_per_node"])


def test_evaluating_a_4bit_base_does_not_change_training(tiny_llama_dir, tiny_csv, tmp_path):
    """bitsandbytes would repack 4-bit weights for its CPU inference kernel on the first eval,
    and train on the repacked bytes afterwards; declora keeps one layout."""
    pytest.importorskip("bitsandbytes")
    from declora.learning.train import train_steps

    cfg = llama_cfg(tiny_llama_dir, tiny_csv, tmp_path, "model.quantize=4bit")
    trained = []
    for evaluate_first in (False, True):
        s = session.prepare(cfg)
        (node,) = session.party_for(s, METHODS["centralized"]).nodes
        if evaluate_first:
            LM.evaluate(s.model, node.state(), s.val_nodes)
        train_steps(s.model, node, 2, s.collate)
        trained.append(node.state())
    for k in trained[0]:
        torch.testing.assert_close(trained[0][k], trained[1][k])
