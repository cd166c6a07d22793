"""``declora survey``: per-node counts and shares equal an independent count over the same
split a run trains on; the heterogeneity figure against a numpy reference; files and errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from declora.algorithms.partition import partition
from declora.cli import main
from declora.config import load_config
from declora.jobs.survey import format_survey, survey
from declora.learning.dataset import load_rows
from tests.helpers import tiny_args
from tests.reference import label_counts

SKEW = ["partition.kind=label_skew", "partition.proportions=[[0.9,0.1],[0.1,0.9],[0.5,0.5]]"]


def config(tiny_model_dir, tiny_csv, tmp_path, *extra):
    args = [*tiny_args(tiny_model_dir, tiny_csv, tmp_path / "out"), "nodes=3", *extra]
    return load_config(None, args)


@pytest.mark.parametrize("extra", [[], SKEW, ["partition.kind=dirichlet", "partition.alpha=0.3"]])
def test_counts_and_heterogeneity_match_an_independent_count(
    tiny_model_dir, tiny_csv, tmp_path, extra
):
    cfg = config(tiny_model_dir, tiny_csv, tmp_path, *extra)
    sv = survey(cfg)
    rows = load_rows(cfg)
    labels = rows.labels[rows.train_idx]
    p = cfg.partition
    parts = partition(labels, 3, p.kind, alpha=p.alpha, proportions=p.proportions, seed=cfg.seed)
    counts = label_counts(labels, parts, n_classes=2)  # (3, 2)
    assert [list(n["counts"].values()) for n in sv["nodes"]] == counts.tolist()
    shares = counts / counts.sum(1, keepdims=True)
    pooled = counts.sum(0) / counts.sum()
    tv = [0.5 * sum(abs(shares[i, c] - pooled[c]) for c in range(2)) for i in range(3)]
    assert sv["heterogeneity"]["tv_mean"] == pytest.approx(np.mean(tv))
    assert sv["heterogeneity"]["tv_max"] == pytest.approx(max(tv))
    assert sv["rows"] == counts.sum() <= 480 - 96 - 48  # label skew may leave rows unused
    assert (sv["test_rows"], sv["validation_rows"]) == (96, 48)
    words = [len(rows.texts[rows.train_idx[i]].split()) for i in parts[0]]
    assert sv["nodes"][0]["words_max"] == max(words)


def test_label_skew_reads_as_more_heterogeneous_than_iid(tiny_model_dir, tiny_csv, tmp_path):
    iid = survey(config(tiny_model_dir, tiny_csv, tmp_path))
    skew = survey(config(tiny_model_dir, tiny_csv, tmp_path, *SKEW))
    assert iid["heterogeneity"]["tv_mean"] < 0.1 < skew["heterogeneity"]["tv_mean"]
    assert skew["nodes"][0]["shares"]["negative"] == pytest.approx(0.9, abs=0.02)
    table = format_survey(skew).splitlines()
    assert len(table) == 2 + 3 + 1 and "negative" in table[0]


def test_the_command_writes_json_and_png(tiny_model_dir, tiny_csv, tmp_path):
    args = tiny_args(tiny_model_dir, tiny_csv, tmp_path / "out")
    assert main(["survey", *args, "nodes=3", *SKEW]) == 0
    sv = json.loads((tmp_path / "out" / "survey.json").read_text())
    assert [n["node"] for n in sv["nodes"]] == [0, 1, 2]
    assert (tmp_path / "out" / "survey.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "extra, message",
    [
        (["data.label_column=nope"], "column 'nope' not found"),
        (["nodes=1000"], "partition"),
        (["data.path=/nonexistent.csv"], "file not found"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(
    tiny_model_dir, tiny_csv, tmp_path, capsys, extra, message
):
    args = tiny_args(tiny_model_dir, tiny_csv, tmp_path / "out")
    assert main(["survey", *args, *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and err.count("\n") == 0
    assert not (tmp_path / "out").exists()


def test_the_survey_sees_the_rows_a_run_trains_on(tiny_model_dir, tiny_csv, tmp_path):
    from declora.harness.session import prepare

    cfg = config(tiny_model_dir, tiny_csv, tmp_path, *SKEW)
    s = prepare(cfg)
    sv = survey(cfg)
    assert [n["rows"] for n in sv["nodes"]] == s.node_rows
    for n, ix in zip(sv["nodes"], s.parts):
        assert list(n["counts"].values()) == np.bincount(s.train.labels[ix], minlength=2).tolist()


# --- survey --combine on forged or damaged survey.json files (issue 25) ----------------------


@pytest.fixture(scope="module")
def part(tiny_model_dir, tiny_csv, tmp_path_factory):
    """A real survey.json of 3 nodes (one data file), as text."""
    out = tmp_path_factory.mktemp("part") / "s"
    args = tiny_args(tiny_model_dir, tiny_csv, out)
    assert main(["survey", *args, "nodes=3"]) == 0
    return (out / "survey.json").read_text()


def _node0(sv: dict, **change) -> dict:
    sv["nodes"][0].update(change)
    return sv


FORGED = {  # what is done to a good survey.json -> what the one line says
    "a list": (lambda sv: [sv], "expected a JSON object"),
    "empty": (lambda sv: {}, "Field required"),
    "no labels": (lambda sv: {k: v for k, v in sv.items() if k != "labels"}, "labels: Field"),
    "no counts": (lambda sv: _node0(sv, counts=None), "nodes.0.counts: Input should be"),
    "string node id": (lambda sv: _node0(sv, node="0"), "nodes.0.node: Input should be"),
    "string count": (
        lambda sv: _node0(sv, counts={"negative": "5", "positive": 3}),
        "nodes.0.counts.negative: Input should be a valid integer",
    ),
    "infinite count": (
        lambda sv: _node0(sv, counts={"negative": math.inf, "positive": 3}),
        "nodes.0.counts.negative: Input should be a valid integer",
    ),
    "huge count": (
        lambda sv: _node0(sv, counts={"negative": 10**400, "positive": 3}),
        "nodes.0.counts.negative: Input should be less than or equal to",
    ),
    "negative rows": (
        lambda sv: _node0(sv, counts={"negative": -988, "positive": 3}),
        "nodes.0.counts.negative: Input should be greater than or equal to 0",
    ),
    "string words": (lambda sv: _node0(sv, words_mean="12"), "nodes.0.words_mean: Input should"),
    "other labels": (
        lambda sv: _node0(sv, counts={"neg": 1, "positive": 3}),
        "nodes.0.counts names the labels ['neg', 'positive'], not ['negative', 'positive']",
    ),
    "node 99 of 3": (lambda sv: _node0(sv, node=99), "node 99 is not one of the run's 3 nodes"),
    "deep": (lambda sv: "[" * 100_000 + "]" * 100_000, "nested too deeply"),
    "deep field": (
        lambda sv: json.dumps({**sv, "partition": "X"}).replace('"X"', "[" * 9**5 + "]" * 9**5),
        "nested too deeply",
    ),
    "no fingerprint": (
        lambda sv: {k: v for k, v in sv.items() if k != "fingerprint"},
        "fingerprint: Field required",
    ),
}


@pytest.mark.parametrize("case", list(FORGED))
def test_a_forged_survey_is_refused_in_one_line_and_nothing_is_written(
    part, tmp_path, capsys, case
):
    change, message = FORGED[case]
    forged = change(json.loads(part))
    path = tmp_path / "forged.json"
    path.write_text(forged if isinstance(forged, str) else json.dumps(forged))
    assert main(["survey", f"out={tmp_path / 'out'}", "--combine", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and err.count("\n") == 0, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"fingerprint": "0" * 64}, "another data set, split or partition"),
        ({"network_nodes": 7}, "another data set, split or partition"),
        ({"labels": ["positive", "negative"]}, "name different labels"),
    ],
)
def test_surveys_of_other_data_do_not_combine(part, tmp_path, capsys, change, message):
    ours = json.loads(part)
    theirs = {**json.loads(part), **change}
    for n in theirs["nodes"]:
        n["node"] += 3  # other nodes, so that only the data differs
        n["counts"] = dict(zip(theirs["labels"], n["counts"].values()))
    theirs["network_nodes"] = change.get("network_nodes", 6)
    ours["network_nodes"] = 6
    files = []
    for name, sv in (("a", ours), ("b", theirs)):
        files.append(tmp_path / f"{name}.json")
        files[-1].write_text(json.dumps(sv))
    assert main(["survey", f"out={tmp_path / 'out'}", "--combine", *map(str, files)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and err.count("\n") == 0, err
    assert not (tmp_path / "out").exists()
