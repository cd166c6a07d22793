"""Several seeds (:mod:`declora.jobs.seeds`): the interval by hand, the aggregation of hand-made
summaries, and ``declora run seeds=[...]`` on the tiny model against its own per-seed runs."""

from __future__ import annotations

import json
import math

import pytest

from declora.cli import main
from declora.jobs.seeds import aggregate, interval, seeds_table
from tests.helpers import tiny_args

T_975_DF2 = 4.302652729749464  # Student's t, 97.5% quantile, 2 degrees of freedom (tables)


def test_interval_of_three_values_by_hand():
    got = interval([0.7, 0.8, 0.9])
    assert got["mean"] == pytest.approx(0.8, abs=1e-12)
    assert got["std"] == pytest.approx(0.1, abs=1e-12)  # sample std: sqrt(0.02 / 2)
    half = T_975_DF2 * 0.1 / math.sqrt(3)
    assert got["ci95"] == pytest.approx([0.8 - half, 0.8 + half], abs=1e-9)
    assert got["values"] == [0.7, 0.8, 0.9]


def test_one_seed_has_no_spread():
    assert interval([0.5]) == {"mean": 0.5, "std": None, "ci95": None, "values": [0.5]}


def summary(acc: float, low: float, avg: float) -> dict:
    entry = {
        "evaluated": "test rows (10): mean of the nodes' own adapters (what each site holds)",
        "accuracy": acc,
        "f1": acc - 0.1,
        "loss": 1 - acc,
        "node_min_accuracy": low,
        "average_adapter": {"accuracy": avg, "f1": avg, "loss": 0.3},
        "bytes_sent_per_node": 2_000_000,
        "wall_s": 10.0,
    }
    pooled = {**entry, "accuracy": avg}
    del pooled["node_min_accuracy"], pooled["average_adapter"]
    return {"test_rows": 10, "methods": {"dec-lora": entry, "centralized": pooled}}


def test_aggregate_matches_means_by_hand_and_skips_missing_figures():
    agg = aggregate(
        {0: summary(0.6, 0.5, 0.7), 1: summary(0.8, 0.7, 0.9), 2: summary(0.7, 0.3, 0.8)}
    )
    dec = agg["methods"]["dec-lora"]
    assert agg["seeds"] == [0, 1, 2] and agg["test_rows"] == 10
    assert dec["accuracy"]["mean"] == pytest.approx(0.7) and dec["accuracy"][
        "std"
    ] == pytest.approx(0.1)
    assert dec["node_min_accuracy"]["mean"] == pytest.approx(0.5)
    assert dec["node_min_accuracy"]["std"] == pytest.approx(0.2)
    assert dec["average_accuracy"]["values"] == [0.7, 0.9, 0.8]
    assert dec["bytes_sent_per_node"]["std"] == 0.0
    assert "node_min_accuracy" not in agg["methods"]["centralized"]  # one model: no worst node
    table = seeds_table(agg)
    assert "dec-lora" in table and "0.7000 ± 0.1000" in table
    half = T_975_DF2 * 0.1 / math.sqrt(3)
    assert f"dec-lora: accuracy 95% interval {0.7 - half:.4f} to {0.7 + half:.4f}" in table


def test_run_with_seeds_aggregates_its_own_per_seed_runs(tiny_model_dir, tiny_csv, tmp_path):
    out = tmp_path / "seeds"
    args = [*tiny_args(tiny_model_dir, tiny_csv, out), "methods=[dec-lora,centralized]"]
    assert main(["run", *args, "seeds=[0,3]", "export_adapters=false"]) == 0
    agg = json.loads((out / "summary.json").read_text())
    per = {s: json.loads((out / f"seed_{s}" / "summary.json").read_text()) for s in (0, 3)}
    assert agg["seeds"] == [0, 3]
    for method in ("dec-lora", "centralized"):
        values = [per[s]["methods"][method]["accuracy"] for s in (0, 3)]
        got = agg["methods"][method]["accuracy"]
        assert got["values"] == values and got["mean"] == pytest.approx(sum(values) / 2)
    # the seed moves the partition: the two runs differ
    sizes = [per[s]["methods"]["dec-lora"]["nodes"] for s in (0, 3)]
    assert sizes[0] != sizes[1]
    saved = (out / "seed_3" / "config.yaml").read_text()
    assert "seed: 3" in saved and "seeds: null" in saved


def test_launch_refuses_seeds(capsys):
    assert main(["launch", "seeds=[0,1]"]) == 2
    assert "seeds=" in capsys.readouterr().err
