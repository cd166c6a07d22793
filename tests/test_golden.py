"""Golden figures: short runs of the tiny config whose per-round figures were recorded once
(tests/golden/figures.json) and must come back to 1e-5. They guard refactors of the round:
every method, every consensus rule, compression, faults, a causal LM, and 4-process launches.

Record again only for a change that is meant to move the numbers, and say so in its commit:

    DECLORA_RECORD_GOLDEN=1 .venv/bin/python -m pytest -q tests/test_golden.py
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from tests.helpers import launch, records, run_sim, tiny_args, tiny_llama_args

FILE = Path(__file__).parent / "golden" / "figures.json"
RECORD = os.environ.get("DECLORA_RECORD_GOLDEN") == "1"
KEYS = (
    "accuracy",
    "f1",
    "loss",
    "node_accuracy_mean",
    "node_accuracy_min",
    "consensus_ab",
    "train_loss",
    "grad_norm",
    "bytes_sent",
    "bytes_sent_total",
    "samples_seen",
)
ALL = "methods=[dec-lora,centralized,local,fedavg]"
SIM_CASES = {
    "ab": [ALL],
    "frozen_a": [ALL, "consensus=frozen_a"],
    "product": [ALL, "consensus=product"],
    "choco_quantize": [
        "methods=[dec-lora]",
        "compression.kind=quantize",
        "compression.scheme=choco",
    ],
    "faults_topk": [
        "methods=[dec-lora,local]",  # fedavg refuses compression
        "faults.link_drop=0.3",
        "faults.node_drop=0.2",
        "compression.kind=topk",
    ],
}
LAUNCH = ["methods=[dec-lora]", "rounds=5", "eval_every=2", "lr=0.05"]
LAUNCH_CASES = {
    "launch_ab": LAUNCH,
    "launch_product_quantize": [*LAUNCH, "consensus=product", "compression.kind=quantize"],
}
LM = ["methods=[dec-lora,centralized]", "rounds=3", "eval_every=2"]


def figures(out: Path) -> list[dict]:
    return [
        {"method": r["method"], "round": r["round"], **{k: r.get(k) for k in KEYS}}
        for r in records(out)
    ]


def check(name: str, got: list[dict]) -> None:
    stored = json.loads(FILE.read_text()) if FILE.exists() else {}
    if RECORD:
        stored[name] = got
        FILE.parent.mkdir(exist_ok=True)
        FILE.write_text(json.dumps(stored, indent=1, sort_keys=True) + "\n")
        return
    want = stored[name]
    assert [(r["method"], r["round"]) for r in got] == [(r["method"], r["round"]) for r in want]
    for g, w in zip(got, want):
        for key in KEYS:
            a, b = g[key], w[key]
            where = (name, w["method"], w["round"], key)
            if b is None or (isinstance(b, float) and math.isnan(b)):
                assert a is None or math.isnan(a), where
            else:
                assert a == pytest.approx(b, rel=1e-5, abs=1e-8), where


@pytest.mark.parametrize("name", sorted(SIM_CASES))
def test_simulator_matches_golden_figures(name, tiny_model_dir, tiny_csv, tmp_path):
    out = tmp_path / "run"
    run_sim([*tiny_args(tiny_model_dir, tiny_csv, out), *SIM_CASES[name]])
    check(name, figures(out))


def test_causal_lm_matches_golden_figures(tiny_llama_dir, tiny_csv, tmp_path):
    out = tmp_path / "run"
    run_sim([*tiny_llama_args(tiny_llama_dir, tiny_csv, out), *LM])
    check("causal_lm", figures(out))


@pytest.mark.multiprocess
@pytest.mark.parametrize("name", sorted(LAUNCH_CASES))
def test_launch_matches_golden_figures(name, tiny_model_dir, tiny_csv, tmp_path):
    out = tmp_path / "run"
    proc = launch([*tiny_args(tiny_model_dir, tiny_csv, out), *LAUNCH_CASES[name]])
    assert proc.returncode == 0, proc.stderr[-3000:]
    check(name, figures(out))
