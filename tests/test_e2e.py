"""`declora run` end to end on a tiny config: every output file, and the exported adapters
loaded back with PEFT give the accuracy that summary.json reports."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from declora.cli import main
from declora.config import load_config
from declora.learning import privacy
from tests.helpers import tiny_args

METHODS = ["dec-lora", "centralized", "local", "fedavg"]


def peft_accuracy(base_dir, adapter_dir, cfg) -> float:
    """Accuracy through the plain PEFT path (no functional_call), on the same eval rows."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from declora.learning.tasks import load_task_data

    tok = AutoTokenizer.from_pretrained(base_dir)
    held_out = load_task_data(cfg, tok).test
    base = AutoModelForSequenceClassification.from_pretrained(base_dir, num_labels=2)
    model = PeftModel.from_pretrained(base, adapter_dir).eval()
    texts_ok = 0
    with torch.no_grad():
        for i, ids in enumerate(held_out.input_ids):
            logits = model(input_ids=torch.tensor([ids])).logits
            texts_ok += int(logits.argmax(-1).item() == held_out.labels[i])
    return texts_ok / len(held_out)


@pytest.fixture(scope="module")
def finished_run(tiny_model_dir, tiny_csv, tmp_path_factory):
    out = tmp_path_factory.mktemp("e2e") / "run"
    overrides = [*tiny_args(tiny_model_dir, tiny_csv, out), f"methods=[{','.join(METHODS)}]"]
    assert main(["run", *overrides]) == 0
    return out, overrides


def test_every_output_file_is_written(finished_run):
    out, _ = finished_run
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "curves.png", "labels.json"):
        assert (out / name).is_file(), name
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "labels.json").read_text()) == {"0": "negative", "1": "positive"}


def test_saved_config_reloads_to_the_same_config(finished_run):
    out, overrides = finished_run
    saved = load_config(str(out / "config.yaml"))
    assert saved == load_config(None, overrides)


def test_metrics_jsonl_has_one_record_per_method_and_eval_round(finished_run):
    out, _ = finished_run
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["method"], r["round"]) for r in records] == [(m, t) for m in METHODS for t in (3, 6)]
    for r in records:
        for key in ("accuracy", "f1", "loss", "bytes_sent", "train_loss", "wall_s"):
            assert isinstance(r[key], (int, float)), key
    dec = [r for r in records if r["method"] == "dec-lora"]
    assert all(r["consensus_ab"] >= 0 for r in dec)
    # a ring of 4: two neighbours, each sent the whole float32 adapter every round
    per_round = dec[0]["bytes_sent"] / 3
    assert dec[1]["bytes_sent"] == 6 * per_round
    assert per_round % (2 * 4) == 0


def test_summary_shape_and_learning(finished_run):
    out, _ = finished_run
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["methods"]) == set(METHODS)
    assert 0 < summary["spectral_gap"] <= 1
    for m in summary["methods"].values():
        assert {"accuracy", "f1", "loss", "bytes_sent_per_node", "wall_s"} <= set(m)
    assert summary["methods"]["centralized"]["bytes_sent_per_node"] == 0
    assert summary["methods"]["dec-lora"]["bytes_sent_per_node"] > 0
    # the synthetic task has a one-word cue: pooled training must beat chance clearly
    assert summary["methods"]["centralized"]["accuracy"] > 0.75


@pytest.mark.parametrize("method", ["dec-lora", "centralized", "fedavg"])
def test_exported_adapter_loads_in_peft_and_reproduces_accuracy(
    finished_run, tiny_model_dir, method
):
    out, overrides = finished_run
    adapter = out / "adapters" / method
    assert (adapter / "adapter_config.json").is_file()
    assert (adapter / "adapter_model.safetensors").is_file()
    summary = json.loads((out / "summary.json").read_text())
    acc = peft_accuracy(tiny_model_dir, adapter, load_config(None, overrides))
    m = summary["methods"][method]
    assert acc == pytest.approx(m.get("average_adapter", m)["accuracy"], abs=1e-9)


@pytest.mark.parametrize("node", [0, 3])
def test_each_node_adapter_is_what_the_headline_scored_on_the_test_rows(
    finished_run, tiny_model_dir, node
):
    """The headline is the mean over the nodes' own adapters: each exported node adapter,
    loaded with plain PEFT, scores on the test rows what summary.json says it scores."""
    out, overrides = finished_run
    m = json.loads((out / "summary.json").read_text())["methods"]["dec-lora"]
    path = out / "adapters" / "dec-lora" / f"node_{node}"
    acc = peft_accuracy(tiny_model_dir, path, load_config(None, overrides))
    assert acc == pytest.approx(m["nodes"][node]["accuracy"], abs=1e-9)
    assert m["accuracy"] == pytest.approx(np.mean([n["accuracy"] for n in m["nodes"]]), abs=1e-12)
    assert m["node_min_accuracy"] == min(n["accuracy"] for n in m["nodes"])


def test_node_adapters_are_exported_for_dec_lora(finished_run):
    out, _ = finished_run
    nodes = sorted(p.name for p in (out / "adapters" / "dec-lora").glob("node_*"))
    assert nodes == [f"node_{i}" for i in range(4)]
    cfg = yaml.safe_load(
        (out / "adapters" / "dec-lora" / "node_0" / "adapter_config.json").read_text()
    )
    assert cfg["r"] == 4 and cfg["peft_type"] == "LORA"


def test_same_seed_same_numbers(finished_run, tiny_model_dir, tiny_csv, tmp_path):
    """Two runs of one config agree exactly; the node order in the loop does not matter."""
    out, overrides = finished_run
    again = [o for o in overrides if not o.startswith(("out=", "methods="))]
    assert main(["run", *again, "methods=[dec-lora]", f"out={tmp_path / 'again'}"]) == 0
    first = json.loads((out / "summary.json").read_text())["methods"]["dec-lora"]
    second = json.loads((tmp_path / "again" / "summary.json").read_text())["methods"]["dec-lora"]
    assert np.isclose(first["loss"], second["loss"], rtol=1e-6)
    assert first["accuracy"] == second["accuracy"]


def test_console_script_reports_bad_input_in_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "declora.cli", "run", "lora.rank=0", f"out={tmp_path / 'x'}"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "lora.rank" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "x").exists()


def test_a_diverging_run_stops_at_that_round_in_one_line_and_keeps_what_ran(
    tiny_model_dir, tiny_csv, tmp_path, capsys
):
    out = tmp_path / "run"
    args = [*tiny_args(tiny_model_dir, tiny_csv, out), "methods=[local,dec-lora]", "rounds=4"]
    assert main(["run", *args, "per_method.dec-lora.lr=1e30"]) == 3
    err = [x for x in capsys.readouterr().err.splitlines() if x.startswith("declora:")]
    assert len(err) == 1 and re.match(
        r"declora: stopped: node \d diverged at round \d: its training loss is (nan|inf)", err[0]
    ), err
    summary = json.loads((out / "summary.json").read_text())
    assert "diverged" in summary["stopped"] and list(summary["methods"]) == ["local"]
    assert (out / "curves.png").is_file() and (out / "metrics.jsonl").is_file()


def test_subrounds_play_each_round_as_smaller_rounds_at_the_same_samples(
    tiny_model_dir, tiny_csv, tmp_path
):
    """per_method.dec-lora.subrounds=2: dec-lora plays twice the rounds at half the batch, so
    it sees the samples centralized sees, evaluated at the same samples (every 2 x eval_every
    of its rounds); under DP each method's budget has its own sampling rate and steps."""
    out = tmp_path / "run"
    args = [*tiny_args(tiny_model_dir, tiny_csv, out), "methods=[dec-lora,centralized]"]
    split = ["rounds=4", "eval_every=2", "per_method.dec-lora.subrounds=2"]
    assert main(["run", *args, *split, "export_adapters=false"]) == 0
    summary = json.loads((out / "summary.json").read_text())["methods"]
    dec, pooled = summary["dec-lora"], summary["centralized"]
    assert (dec["rounds"], pooled["rounds"]) == (8, 4)
    assert dec["samples_seen"] == pooled["samples_seen"] == 4 * 4 * 4 * 8
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    seen = {m: [r["samples_seen"] for r in records if r["method"] == m] for m in summary}
    assert seen["dec-lora"] == seen["centralized"]  # the same points of the curve
    cfg = load_config(None, [*args, *split, "privacy.noise_multiplier=1"])
    budgets = privacy.plan(cfg, [100, 100], {"dec-lora": False, "centralized": True})
    assert (budgets["dec-lora"][0].rate, budgets["dec-lora"][0].steps) == (4 / 100, 32)
    assert (budgets["centralized"][0].rate, budgets["centralized"][0].steps) == (8 / 200, 64)
