"""Per-site files (issue 12): each node reads only its own file, holds out its own rows, and
only counts leave it for evaluation; bad per-site input is refused in one line."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from declora.cli import main
from declora.config import ConfigError, load_config
from declora.learning.dataset import load_site_rows
from declora.learning.sources import DataError
from tests.helpers import (
    launch,
    records,
    run_sim,
    synthetic_rows,
    tiny_args,
    torchrun_agents,
    write_csv,
)
from tests.test_dist import assert_same_metrics

SIZES = (90, 60, 120, 70)  # rows of each site
POSITIVE_SHARE = (0.8, 0.5, 0.2, 0.6)


def write_sites(folder, sizes=SIZES, shares=POSITIVE_SHARE) -> str:
    """One CSV per site with its own size and label mix; returns data.path with {node}."""
    folder.mkdir(parents=True, exist_ok=True)
    pool = synthetic_rows(4 * sum(sizes), seed=7)
    pos = [r for r in pool if r["label"] == "positive"]
    neg = [r for r in pool if r["label"] == "negative"]
    for i, (n, share) in enumerate(zip(sizes, shares)):
        k = round(n * share)
        rows = pos[:k] + neg[: n - k]
        pos, neg = pos[k:], neg[n - k :]
        np.random.default_rng(i).shuffle(rows)
        write_csv(folder / f"site_{i}.csv", rows)
    return str(folder / "site_{node}.csv")


def site_args(model_dir, path, out) -> list[str]:
    keep = [a for a in tiny_args(model_dir, "x", out) if not a.startswith(("data.", "partition."))]
    return [*keep, f"data.path={path}", "data.labels=[negative,positive]"]


@pytest.fixture(scope="module")
def sites(tmp_path_factory):
    return write_sites(tmp_path_factory.mktemp("sites"))


def test_a_site_reads_its_own_file_and_holds_out_its_own_rows(sites):
    cfg = load_config(None, [f"data.path={sites}", "data.labels=[negative,positive]"])
    rows = [load_site_rows(cfg, i) for i in range(4)]
    for r, n, share in zip(rows, SIZES, POSITIVE_SHARE):
        held = round(0.1 * n)
        assert len(r.test_idx) == len(r.val_idx) == held and len(r.train_idx) == n - 2 * held
        assert r.labels.mean() == pytest.approx(share, abs=0.02)  # positive is class 1
        assert not set(r.test_idx) & set(r.val_idx) and not set(r.train_idx) & set(r.test_idx)
    assert rows[0].names == ["negative", "positive"]


def test_bad_per_site_input_is_one_line(sites, tmp_path):
    labels = "data.labels=[negative,positive]"
    with pytest.raises(ConfigError, match=r"data.labels=\[...\] is required"):
        load_config(None, [f"data.path={sites}"])
    with pytest.raises(ConfigError, match="one CSV / JSONL / JSON / Parquet file per site"):
        load_config(None, ["data.path=bundled:rotten_tomatoes{node}", labels])
    cfg = load_config(None, [f"data.path={tmp_path}/missing_{{node}}.csv", labels])
    with pytest.raises(DataError, match=r"site 2: data.path=.*missing_2.csv: file not found"):
        load_site_rows(cfg, 2)
    cfg = load_config(None, [f"data.path={sites}", "data.labels=[negative,neutral]"])
    with pytest.raises(DataError, match=r"site_0.csv:\d+: label 'positive' is not in data.labels"):
        load_site_rows(cfg, 0)
    cfg = load_config(None, [f"data.path={sites}", labels, "data.eval_size=30"])
    with pytest.raises(DataError, match="site 1: .*site_1.csv has 60 rows; its held-out part"):
        load_site_rows(cfg, 1)


SITE_LABELS = [  # (the labels of site 0's file, data.labels, the class ids or the error)
    (["cafe\u0301", "negative"] * 3, "[negative, caf\u00e9]", [1, 0] * 3),  # NFD against NFC
    (["1.0", "0"] * 3, "[0, 1]", [1, 0] * 3),  # numbers by value
    (["negative", ""] * 3, "[negative, positive]", "site_0.csv:3: no label in column 'label'"),
    (["negative", "nan"] * 3, "[negative, positive]", "site_0.csv:3: no label"),
]


@pytest.mark.parametrize(("labels", "names", "expected"), SITE_LABELS)
def test_a_site_files_labels_follow_the_rule_of_data_labels(tmp_path, labels, names, expected):
    write_csv(tmp_path / "site_0.csv", [{"text": "a b", "label": x} for x in labels])
    path = str(tmp_path / "site_{node}.csv")
    cfg = load_config(None, [f"data.path={path}", f"data.labels={names}", "data.eval_size=1"])
    if isinstance(expected, str):
        with pytest.raises(DataError, match=expected):
            load_site_rows(cfg, 0)
    else:
        assert load_site_rows(cfg, 0).labels.tolist() == expected


def test_the_cli_refuses_a_small_site_before_writing_anything(
    tiny_model_dir, sites, tmp_path, capsys
):
    out = tmp_path / "run"
    assert main(["run", *site_args(tiny_model_dir, sites, out), "data.eval_size=30"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "site 1:" in err and not out.exists()


def test_a_run_on_per_site_files_reports_every_site(tiny_model_dir, sites, tmp_path):
    out = tmp_path / "run"
    run_sim([*site_args(tiny_model_dir, sites, out), "methods=[dec-lora,centralized,local]"])
    summary = json.loads((out / "summary.json").read_text())
    dec = summary["methods"]["dec-lora"]
    assert [s["node"] for s in dec["sites"]] == [0, 1, 2, 3]
    assert [s["rows"] for s in dec["sites"]] == [round(0.1 * n) for n in SIZES] == [9, 6, 12, 7]
    assert summary["test_rows"] == 34
    # the pooled figure is every site's rows together: the row-weighted mean of the sites'
    acc = [s["accuracy"] for s in dec["sites"]]
    rows = [s["rows"] for s in dec["sites"]]
    assert dec["pooled"]["accuracy"] == pytest.approx(np.dot(acc, rows) / sum(rows))
    assert dec["accuracy"] == pytest.approx(np.mean(acc)) and dec["node_min_accuracy"] == min(acc)
    assert "sites" in summary["methods"]["centralized"]  # one model, scored on each site's rows
    rec = records(out)[-1]
    assert rec["split"] == "validation (each site's own rows)" and len(rec["site_accuracy"]) == 4


@pytest.mark.multiprocess
@pytest.mark.parametrize("gather", [True, False])
def test_two_agents_holding_only_their_own_sites_match_the_simulator(
    tiny_model_dir, tmp_path, gather
):
    everything = write_sites(tmp_path / "all")
    for g in (0, 1):  # agent g's folder holds only its own sites' files
        folder = tmp_path / f"agent_{g}" / "sites"
        folder.mkdir(parents=True)
        for i in (2 * g, 2 * g + 1):
            shutil.copy(tmp_path / "all" / f"site_{i}.csv", folder)
    args = [
        *site_args(tiny_model_dir, "sites/site_{node}.csv", "run"),
        "methods=[dec-lora]",
        f"eval.gather={str(gather).lower()}",
        "finish_rounds=2",  # evaluated at round 8, a gossip-only round: no training loss
        "report_to=tensorboard",
    ]
    procs = torchrun_agents(args, [tmp_path / "agent_0", tmp_path / "agent_1"])
    assert [p.returncode for p in procs] == [0, 0], procs[0].stderr[-3000:]
    sim_out = tmp_path / "sim"
    sim_args = [a for a in args if not a.startswith(("data.path", "out="))]
    run_sim([*sim_args, f"data.path={everything}", f"out={sim_out}"])
    dist_out = tmp_path / "agent_0" / "run"
    assert_same_metrics(records(sim_out), records(dist_out))
    if gather:
        return
    summary = json.loads((dist_out / "summary.json").read_text())["methods"]["dec-lora"]
    # each site's own figures, written on its own agent, pool to the network figure
    own = [
        json.loads((tmp_path / f"agent_{i // 2}" / "run" / f"node_{i}" / "site.json").read_text())
        for i in range(4)
    ]
    correct = sum(o["accuracy"] * o["rows"] for o in own)
    assert summary["pooled"]["accuracy"] == pytest.approx(correct / sum(o["rows"] for o in own))
    assert [o["rows"] for o in own] == [s["rows"] for s in summary["sites"]]
    assert (tmp_path / "agent_1" / "run" / "node_3" / "adapter" / "adapter_config.json").is_file()
    assert not (tmp_path / "agent_1" / "run" / "summary.json").exists()  # rank 0's, on agent 0
    # the run's records go to rank 0's TensorBoard; each site's own figures to its own folder
    assert (dist_out / "tensorboard" / "dec-lora").is_dir()
    assert not (tmp_path / "agent_1" / "run" / "tensorboard").exists()
    site = tmp_path / "agent_1" / "run" / "node_3" / "tensorboard" / "dec-lora"
    acc = EventAccumulator(str(site)).Reload()
    assert acc.Scalars("test/accuracy")[0].value == pytest.approx(own[3]["accuracy"])


def test_survey_reads_the_per_site_files(sites, tmp_path):
    from declora.jobs.survey import write_survey

    cfg = load_config(
        None,
        [
            "nodes=4",
            f"data.path={sites}",
            "data.labels=[negative,positive]",
            f"out={tmp_path / 's'}",
        ],
    )
    out, sv = write_survey(cfg, echo=lambda line: None)
    assert [n["rows"] for n in sv["nodes"]] == [n - 2 * round(0.1 * n) for n in SIZES]
    shares = [n["shares"]["positive"] for n in sv["nodes"]]
    assert shares == pytest.approx(POSITIVE_SHARE, abs=0.1)  # training rows, held-out gone
    assert sv["partition"] == "per-site files" and sv["heterogeneity"]["tv_max"] > 0.25
    assert (out / "survey.png").is_file()


@pytest.mark.multiprocess
def test_a_missing_site_file_stops_every_process_with_a_line_naming_the_site(
    tiny_model_dir, sites, tmp_path
):
    folder = tmp_path / "three"
    folder.mkdir()
    for i in range(3):  # site 3's file is missing
        shutil.copy(sites.replace("{node}", str(i)), folder)
    out = tmp_path / "run"
    proc = launch(site_args(tiny_model_dir, str(folder / "site_{node}.csv"), out))
    assert proc.returncode == 2, proc.stderr[-3000:]  # a data error (issue 25: it was 1)
    for rank in range(3):  # each node's line once; node 3 says its own error
        line = f"declora: node {rank}: node 3 could not start: site 3: data.path="
        assert proc.stderr.count(line) == 1, proc.stderr[-3000:]
    assert proc.stderr.count("declora: error: site 3: data.path=") == 1
    # not torchrun's ChildFailedError traceback (about 40 lines) after them
    assert "Traceback" not in proc.stderr and "ChildFailedError" not in proc.stderr
    assert not out.exists()  # nothing half-written


def test_declora_run_refuses_a_missing_site_file_in_one_line(
    tiny_model_dir, sites, tmp_path, capsys
):
    path = sites.replace("site_{node}", "nowhere_{node}")
    out = tmp_path / "run"
    assert main(["run", *site_args(tiny_model_dir, path, out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "site 0: data.path=" in err and "file not found" in err
    assert not out.exists()


def test_a_run_says_that_partition_settings_do_not_apply(tiny_model_dir, sites, tmp_path):
    from declora.harness.outputs import describe_run
    from declora.harness.session import prepare

    cfg = load_config(None, [*site_args(tiny_model_dir, sites, tmp_path), "partition.alpha=0.1"])
    lines = describe_run(prepare(cfg), tmp_path)
    assert "partition settings do not apply: each site's file is its data" in lines
    assert any(x.startswith("data: one file per site") for x in lines)


def test_each_machine_surveys_its_own_sites_and_the_counts_combine(sites, tmp_path, capsys):
    """Two machines survey their own sites' files; combining the two survey.json files (counts
    only) gives the survey of all four files read in one place."""
    base = ["survey", f"data.path={sites}", "data.labels=[negative,positive]", "nodes=4"]
    assert main([*base, f"out={tmp_path / 'all'}"]) == 0
    assert main([*base, f"out={tmp_path / 'm0'}", "--nodes", "0,1"]) == 0
    assert main([*base, f"out={tmp_path / 'm1'}", "--nodes", "2,3"]) == 0
    parts = [str(tmp_path / m / "survey.json") for m in ("m0", "m1")]
    assert main(["survey", f"out={tmp_path / 'both'}", "--combine", *parts]) == 0
    whole = json.loads((tmp_path / "all" / "survey.json").read_text())
    combined = json.loads((tmp_path / "both" / "survey.json").read_text())
    assert combined == whole
    assert (tmp_path / "both" / "survey.png").is_file()
    assert main(["survey", f"out={tmp_path / 'dup'}", "--combine", parts[0], parts[0]]) == 2
    assert "a node appears in two surveys" in capsys.readouterr().err


def test_key_value_overrides_go_anywhere_on_the_command_line(sites, tmp_path):
    """The README's `declora survey sites --nodes 2,3 out=runs/survey_m1`: an override after
    an option is one too (issue 25)."""
    base = ["survey", f"data.path={sites}", "data.labels=[negative,positive]"]
    assert main([*base, "--nodes", "2,3", "nodes=4", f"out={tmp_path / 'm1'}"]) == 0
    sv = json.loads((tmp_path / "m1" / "survey.json").read_text())
    assert [n["node"] for n in sv["nodes"]] == [2, 3] and sv["network_nodes"] == 4


@pytest.mark.parametrize(
    ("nodes", "message"),
    [
        ("7", "--nodes 7: node 7 is not one of nodes 0..3"),
        ("-1", "--nodes -1: node -1 is not one of nodes 0..3"),
        ("1,1", "--nodes 1,1: node 1 is given twice"),
    ],
)
def test_survey_refuses_a_node_outside_the_run(sites, tmp_path, capsys, nodes, message):
    base = ["survey", f"data.path={sites}", "data.labels=[negative,positive]", "nodes=4"]
    assert main([*base, f"out={tmp_path / 'x'}", f"--nodes={nodes}"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    ("written", "encoding", "note"),
    [
        ("utf-8", "cp1252", True),  # a UTF-8 neighbour of a cp1252 site: read as UTF-8, said
        ("cp1252", "cp1252", False),
        ("utf-8", "utf-8", False),
    ],
)
def test_a_site_file_in_utf8_is_read_as_utf8_whatever_data_encoding_says(
    tmp_path, capfd, written, encoding, note
):
    """issue 25: data.encoding=cp1252, as the refusal of a cp1252 file suggests, garbled the
    UTF-8 files of the other sites ("cafÃ©")."""
    rows = [{"text": "caf\u00e9 tr\u00e8s bon", "label": x} for x in ["a", "b"] * 3]
    path = tmp_path / "site_0.csv"
    path.write_bytes(write_csv(path, rows).read_text().encode(written))
    args = [f"data.path={tmp_path}/site_{{node}}.csv", "data.labels=[a,b]", "data.eval_size=1"]
    r = load_site_rows(load_config(None, [*args, f"data.encoding={encoding}"]), 0)
    assert r.texts[0] == "caf\u00e9 tr\u00e8s bon"
    said = capfd.readouterr().err
    assert ("site 0: " in said and "is UTF-8 text: read as UTF-8, not as cp1252" in said) == note
