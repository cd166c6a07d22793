"""benchmarks/reproduce.py on the tiny model: rows, seeds, shared runs and its three outputs."""

import json
from pathlib import Path

import pytest

from declora.runtimes import sim
from tests.helpers import load_benchmark

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def reproduce():
    return load_benchmark("reproduce")


def test_study_shares_equal_runs_and_writes_table_json_and_plot(
    reproduce, tiny_model_dir, tiny_csv, tmp_path, monkeypatch
):
    calls = []
    real_run = sim.run
    monkeypatch.setattr(
        reproduce.sim, "run", lambda cfg, **kw: calls.append(cfg) or real_run(cfg, **kw)
    )
    table = tmp_path / "study.md"
    argv = [
        "--quick", "--groups", "ranks,heterogeneity", "--seeds", "0,1", "--one-seed", "ranks",
        "--table", str(table), f"model.name={tiny_model_dir}", f"data.path={tiny_csv}",
        "data.train_size=null", "data.test_size=48", "data.val_size=48", "node_eval_size=16", "rounds=2",
    ]  # fmt: skip
    assert reproduce.main(argv) == 0
    # ranks: 4 rows x 1 seed; heterogeneity: 5 rows x 2 seeds, but its iid row is the
    # rank-8 row (seed 0 already run): 4 + 10 - 1 runs
    assert len(calls) == 13
    assert {(c.lora.rank, c.seed) for c in calls if c.partition.kind == "iid"} >= {(8, 0), (8, 1)}
    text = table.read_text()
    rows = [line for line in text.splitlines() if line.startswith(("| ranks", "| heterogeneity"))]
    assert len(rows) == 9
    assert all(" | 1 | " in r for r in rows if r.startswith("| ranks"))
    assert all(" | 2 | " in r and " ± " in r for r in rows if r.startswith("| heterogeneity"))
    raw = json.loads(table.with_suffix(".json").read_text())
    assert len(raw) == 9 and all(0 <= r["accuracy"] <= 1 for x in raw for r in x["runs"])
    assert table.with_suffix(".png").stat().st_size > 10_000


def test_bad_override_is_refused_before_any_training(reproduce, tmp_path, capsys):
    assert reproduce.main(["--quick", "--table", str(tmp_path / "t.md"), "rounds=-1"]) == 2
    assert "rounds" in capsys.readouterr().err
    assert not (tmp_path / "t.md").exists()
