"""Records, summaries and run files (:mod:`declora.harness.report`, :mod:`declora.harness.outputs`): metrics.jsonl
lines, the counters of a round record, the summary.json entry of each method, the results
table, curves.png and the output folder. On hand-made records: no model is loaded (the
evaluation is replaced by fixed figures)."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest

from declora.algorithms.methods import HEADLINES, METHODS
from declora.algorithms.schedule import Schedule
from declora.config import ConfigError, load_config
from declora.harness import report
from declora.harness.outputs import make_out_dir, plot_curves
from declora.harness.report import RunLog, round_record
from declora.harness.summary import Summary, results_table
from declora.harness.summary import method_entry as method_summary
from declora.protocol.rounds import Counters, NodeCounters

PNG = b"\x89PNG\r\n\x1a\n"
NAN = math.nan


def record(method: str, t: int = 6, **extra) -> dict:
    """A metrics.jsonl record as round_record writes it (4 nodes, so node figures are there)."""
    rec = {
        "accuracy": 0.75,
        "f1": 0.7,
        "loss": 0.5,
        "node_accuracy_mean": 0.625,
        "node_accuracy_min": 0.5,
        "node_f1_mean": 0.6,
        "node_loss_mean": 0.65,
        "node_eval_rows": 192,
        "consensus_a": 0.1,
        "consensus_b": 0.2,
        "consensus_ab": 0.3,
        "method": method,
        "round": t,
        "samples_seen": 128 * t,
        "train_loss": 0.55,
        "grad_norm": 1.5,
        "bytes_sent": 1_234_567,
        "bytes_sent_total": 4_938_268,
        "bytes_per_edge_round": 8_000,
        "messages_refused": 2,
        "wall_s": 3.14159,
    }
    if METHODS[method].pooled:  # one model: no node figures, no consensus distances
        for key in [k for k in rec if k.startswith(("node_", "consensus_"))]:
            del rec[key]
    rec.update(extra)
    return rec


# --- metrics.jsonl ---------------------------------------------------------------------------


def test_runlog_appends_one_json_line_per_record_and_writes_nan_as_null(tmp_path):
    log = RunLog(tmp_path)
    log.write({"method": "dec-lora", "round": 1, "loss": NAN, "f1": math.inf, "x": 0.5})
    log.write({"method": "dec-lora", "round": 2, "loss": -math.inf, "x": np.float64(NAN)})
    log.write({"method": "local", "round": 2, "loss": 0.25, "n": 3, "s": "ok", "none": None})
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3
    parsed = [json.loads(x) for x in lines]  # strict JSON: no NaN or Infinity tokens
    assert all("NaN" not in x and "Infinity" not in x for x in lines)
    assert parsed[0] == {"method": "dec-lora", "round": 1, "loss": None, "f1": None, "x": 0.5}
    assert parsed[1] == {"method": "dec-lora", "round": 2, "loss": None, "x": None}
    assert parsed[2] == {
        "method": "local",
        "round": 2,
        "loss": 0.25,
        "n": 3,
        "s": "ok",
        "none": None,
    }
    assert log.records == parsed  # what the summary and the curves are made from


def test_runlog_appends_to_an_existing_file(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"method": "earlier", "round": 1}\n')
    RunLog(tmp_path).write({"method": "dec-lora", "round": 2})
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["method"] for x in lines] == ["earlier", "dec-lora"]


GOOD = '{"method": "dec-lora", "round": 1}\n{"method": "dec-lora", "round": 2}\n'
RESUMED_LOGS = [  # (metrics.jsonl of a run killed mid-write, the rounds kept or the error)
    (GOOD + '{"method": "dec-lo', [1, 2]),  # a last line cut by a kill: dropped, said
    (GOOD + '{"method": "dec-lora", "round": 3}', [1, 2, 3]),  # whole, but no line end
    (GOOD + "\n\n", [1, 2]),
    ('{"method": "dec-lora", "round": 1}\nnot json\n' + GOOD, "metrics.jsonl:2: not a record"),
    ("[1, 2]\n" + GOOD, "metrics.jsonl:1: not a record"),
    ('{"method": "dec-lora"}\n', "metrics.jsonl:1: not a record"),
    (b"\xff\xfe\x00garbage", "metrics.jsonl: not UTF-8 text"),
]


@pytest.mark.parametrize(("text", "expected"), RESUMED_LOGS)
def test_a_resumed_log_drops_a_partial_last_line_and_refuses_a_damaged_one(
    tmp_path, capfd, text, expected
):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    log = RunLog(tmp_path)
    if isinstance(expected, str):
        with pytest.raises(ConfigError, match=expected) as err:
            log.keep_until(5)
        assert "\n" not in str(err.value)
        return
    log.keep_until(5)
    assert [r["round"] for r in log.records] == expected
    assert [json.loads(x)["round"] for x in path.read_text().splitlines()] == expected
    said = capfd.readouterr().err
    assert ("partial last line" in said) == text.endswith("dec-lo")


def test_runlog_writes_each_line_whole_in_one_write(tmp_path, monkeypatch):
    """A kill between two writes of one line would leave it cut: each line is one write."""
    real, writes = report.os.write, []

    def spy(fd, data):
        writes.append(bytes(data))
        return real(fd, data)

    monkeypatch.setattr(report.os, "write", spy)
    log = RunLog(tmp_path)
    log.write({"method": "dec-lora", "round": 1, "x": "y" * 10_000})
    log.write({"method": "dec-lora", "round": 2})
    assert [json.loads(w)["round"] for w in writes] == [1, 2]
    assert all(w.endswith(b"\n") for w in writes)


# --- round_record ----------------------------------------------------------------------------

EVAL = {"accuracy": 0.8, "f1": 0.79, "loss": 0.4}

COUNTER_CASES = {
    "all-trained": [
        NodeCounters(loss=0.5, grad_norm=1.0, sent=300, payload=100, refused=0),
        NodeCounters(loss=0.7, grad_norm=2.0, sent=200, payload=100, refused=1),
        NodeCounters(loss=0.9, grad_norm=3.0, sent=301, payload=100, refused=0),
    ],
    "one-sat-out": [
        NodeCounters(loss=NAN, grad_norm=NAN, sent=0, payload=0, refused=0),
        NodeCounters(loss=0.2, grad_norm=0.5, sent=450, payload=150, refused=3),
        NodeCounters(loss=0.6, grad_norm=1.5, sent=300, payload=140, refused=2),
        NodeCounters(loss=1.0, grad_norm=NAN, sent=1, payload=149, refused=0),
    ],
    "all-sat-out": [NodeCounters(), NodeCounters()],
    "pooled": [NodeCounters(loss=0.3, grad_norm=0.1)],
}


def plain_mean_finite(values) -> float | None:
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else None


@pytest.mark.parametrize("nodes", list(COUNTER_CASES.values()), ids=list(COUNTER_CASES))
def test_round_record_combines_the_node_counters(monkeypatch, nodes):
    seen = {}

    def fake_eval(s, states):
        seen["args"] = (s, states)
        return dict(EVAL)

    monkeypatch.setattr(report, "evaluate_round", fake_eval)
    session, states = object(), [{"w": i} for i in range(len(nodes))]
    c = Counters(samples=4096, wall_s=12.5)
    rec = round_record(session, "dec-lora", 9, states, nodes, c)
    assert seen["args"] == (session, states)
    sent = [n.sent for n in nodes]
    expected = {
        **EVAL,
        "method": "dec-lora",
        "round": 9,
        "samples_seen": 4096,
        "bytes_sent": sum(sent) // len(sent),
        "bytes_sent_total": sum(sent),
        "bytes_per_edge_round": max(n.payload for n in nodes),
        "messages_refused": sum(n.refused for n in nodes),
        "wall_s": 12.5,
    }
    for key, value in expected.items():
        assert rec[key] == value, key
        assert type(rec[key]) is type(value), key  # plain ints for JSON
    for key, field in (("train_loss", "loss"), ("grad_norm", "grad_norm")):
        want = plain_mean_finite([getattr(n, field) for n in nodes])
        if want is None:
            assert math.isnan(rec[key])
        else:
            assert rec[key] == pytest.approx(want, rel=1e-12)
    assert set(rec) == {*expected, "train_loss", "grad_norm"}


def test_a_round_record_through_runlog_is_valid_json(monkeypatch, tmp_path):
    monkeypatch.setattr(report, "evaluate_round", lambda s, states: dict(EVAL))
    rec = round_record(None, "local", 1, [{}, {}], COUNTER_CASES["all-sat-out"], Counters())
    RunLog(tmp_path).write(rec)
    line = json.loads((tmp_path / "metrics.jsonl").read_text())
    assert line["train_loss"] is None and line["grad_norm"] is None
    assert line["bytes_sent"] == 0 and line["method"] == "local"


def test_an_infinite_epsilon_is_written_as_inf(monkeypatch, tmp_path):
    """privacy.noise_multiplier=0: no noise, no privacy; metrics.jsonl, summary.json and the
    table say inf, not null and a blank."""
    monkeypatch.setattr(report, "evaluate_round", lambda s, states: dict(EVAL))
    nodes = [NodeCounters(loss=0.5, epsilon=math.inf), NodeCounters(loss=0.6, epsilon=math.inf)]
    RunLog(tmp_path).write(round_record(None, "dec-lora", 6, [{}, {}], nodes, Counters()))
    line = json.loads((tmp_path / "metrics.jsonl").read_text())
    assert line["epsilon"] == "inf" and line["epsilon_nodes"] == ["inf", "inf"]
    entry = method_summary("dec-lora", {**record("dec-lora"), **line}, final("dec-lora"))
    report.write_json(tmp_path / "summary.json", entry)
    assert json.loads((tmp_path / "summary.json").read_text())["epsilon"] == "inf"
    summary = summary_of(["dec-lora"])
    summary["methods"]["dec-lora"] = {**entry, "delta": 1e-5}
    assert results_table(summary).splitlines()[3].split()[-1] == "inf"


# --- summary.json ----------------------------------------------------------------------------

NODES_ON_TEST = [  # what each of 4 nodes' own adapters scores on the test rows
    {"accuracy": 0.8, "f1": 0.78, "loss": 0.45},
    {"accuracy": 0.7, "f1": 0.69, "loss": 0.6},
    {"accuracy": 0.6, "f1": 0.5, "loss": 0.7},
    {"accuracy": 0.9, "f1": 0.89, "loss": 0.3},
]
AVERAGE_ON_TEST = {"accuracy": 0.85, "f1": 0.84, "loss": 0.4}


def final(method: str, nodes=NODES_ON_TEST) -> dict:
    """What evaluation.evaluate_nodes gives at the end, by hand: one model, or the nodes."""
    if METHODS[method].pooled:
        return {"rows": 100, "model": dict(AVERAGE_ON_TEST)}
    out = {"rows": 100, "nodes": nodes, "average_adapter": dict(AVERAGE_ON_TEST)}
    for key in ("accuracy", "f1", "loss"):
        values = [n[key] for n in nodes]
        out[f"node_mean_{key}"] = sum(values) / len(values)
        out[f"node_{'max' if key == 'loss' else 'min'}_{key}"] = (
            max(values) if key == "loss" else min(values)
        )
    return out


@pytest.mark.parametrize("method", list(METHODS))
def test_method_summary_leads_with_what_the_nodes_hold_on_the_test_rows(method):
    out = method_summary(method, record(method), final(method))
    evaluated = HEADLINES[METHODS[method].headline]
    assert out["evaluated"] == f"test rows (100): {evaluated}"
    if METHODS[method].pooled:
        assert (out["accuracy"], out["f1"], out["loss"]) == (0.85, 0.84, 0.4)
        assert not {"node_mean_accuracy", "node_min_accuracy", "average_adapter"} & set(out)
    else:  # the mean of the four nodes, by hand; the worst; the average beside them
        assert out["accuracy"] == pytest.approx(0.75) == out["node_mean_accuracy"]
        assert out["f1"] == pytest.approx(0.715) and out["loss"] == pytest.approx(0.5125)
        assert out["node_min_accuracy"] == 0.6 and out["node_min_f1"] == 0.5
        assert out["node_max_loss"] == 0.7
        assert out["average_adapter"] == AVERAGE_ON_TEST and out["nodes"] == NODES_ON_TEST
        assert out["consensus_ab"] == 0.3
    assert out["validation"]["accuracy"] == 0.75  # the last validation record, apart
    assert out["bytes_sent_per_node"] == 1_234_567
    assert out["bytes_sent_total"] == 4_938_268
    assert out["bytes_per_edge_round"] == 8_000
    assert out["messages_refused"] == 2
    assert out["samples_seen"] == 768 and out["rounds"] == 6
    assert out["wall_s"] == 3.14
    json.dumps(out, allow_nan=False)


def test_method_summary_carries_a_null_f1_and_consensus(tmp_path):
    """Instruction pairs have no F1 (NaN), and B = 0 gives no consensus distance: both are
    written as null."""
    nodes = [{**n, "f1": NAN} for n in NODES_ON_TEST]
    out = method_summary(
        "dec-lora", record("dec-lora", consensus_ab=None), final("dec-lora", nodes)
    )
    report.write_json(tmp_path / "s.json", out)
    back = json.loads((tmp_path / "s.json").read_text())
    assert back["f1"] is None and back["nodes"][0]["f1"] is None
    assert "consensus_ab" in back and back["consensus_ab"] is None


def test_the_summary_opens_with_the_spectral_gap_and_the_untrained_start():
    """Ring of 5 with Metropolis weights 1/3: eigenvalues (1 + 2 cos(2 pi k / 5)) / 3."""
    untrained = {"accuracy": 0.5, "f1": 0.33, "loss": 0.69}
    W = np.zeros((5, 5))
    for i in range(5):
        for j in (i - 1, i, i + 1):
            W[i, j % 5] = 1 / 3
    batches = [{"labels": [0] * 64}, {"labels": [1] * 36}]
    graph = Schedule.static("ring", (W > 0) & ~np.eye(5, dtype=bool), W)
    s = SimpleNamespace(graph=graph, test=batches, val=batches[:1], cfg=load_config())
    out = Summary(s, dict(untrained)).data
    lambda_2 = (1 + 2 * math.cos(2 * math.pi / 5)) / 3
    assert out["spectral_gap"] == pytest.approx(1 - lambda_2, abs=1e-12)
    assert out["rounds_to_exact_average"] is None  # a ring only gets closer
    assert out["untrained"] == untrained and out["methods"] == {}
    assert out["test_rows"] == 100 and out["validation_rows"] == 64


def summary_of(methods) -> dict:
    return {
        "methods": {m: method_summary(m, record(m), final(m)) for m in methods},
        "untrained": {"accuracy": 0.5, "f1": 0.3333, "loss": 0.6931},
        "spectral_gap": 0.4607,
        "test_rows": 100,
    }


@pytest.mark.parametrize(
    "methods", [["dec-lora"], ["dec-lora", "centralized", "local"], list(METHODS)]
)
def test_results_table_has_one_row_per_method_then_the_start_and_the_gap(methods):
    lines = results_table(summary_of(methods)).splitlines()
    assert lines[0].startswith("test rows (100): accuracy, f1, loss = mean over the nodes' own")
    assert lines[1].split() == [
        "method", "accuracy", "f1", "loss", "node", "min", "average", "MB", "sent/node", "wall", "s",
    ]  # fmt: skip
    assert set(lines[2]) == {"-"} and len(lines[2]) == len(lines[1])
    rows = lines[3:-2]
    assert [r.split()[0] for r in rows] == methods
    for row, name in zip(rows, methods):
        cells = row.split()
        if METHODS[name].pooled:  # one model; no node min, no average: blank
            assert cells[1:] == ["0.8500", "0.8400", "0.4000", "1.23", "3.1"]
        else:
            assert cells[1:] == ["0.7500", "0.7150", "0.5125", "0.6000", "0.8500", "1.23", "3.1"]
    assert lines[-2] == "untrained start (LoRA B = 0): accuracy 0.5000, loss 0.6931"
    assert lines[-1] == "spectral gap of the mixing matrix: 0.4607"


def test_a_time_varying_graph_ends_the_table_with_its_rounds_to_the_exact_average():
    """Base-2 on 8 nodes: its gap is 1.0 (exact after a period); the line says the period."""
    summary = {**summary_of(["dec-lora"]), "spectral_gap": 1.0, "rounds_to_exact_average": 3}
    lines = results_table(summary).splitlines()
    assert lines[-1] == "mixing: every node holds the exact average every 3 rounds"
    sent = {"kind": "quantize", "bits": 8, "ratio": 0.1, "scheme": "direct", "gamma": 1.0}
    rounded = results_table({**summary, "sent": sent}).splitlines()[-1]
    assert rounded == (
        "mixing: every node holds the exact average every 3 rounds (of the messages as sent: "
        "8-bit, the nodes differ by the rounding)"
    )
    plain = results_table({**summary, "sent": {**sent, "kind": "none"}}).splitlines()[-1]
    assert plain == lines[-1]


def test_results_table_leaves_a_missing_f1_blank():
    summary = summary_of(["dec-lora"])
    summary["methods"]["dec-lora"]["f1"] = None
    row = results_table(summary).splitlines()[3]
    assert row.split() == ["dec-lora", "0.7500", "0.5125", "0.6000", "0.8500", "1.23", "3.1"]


# --- curves.png ------------------------------------------------------------------------------


def curve_records() -> list[dict]:
    recs = []
    for t in (3, 6):
        recs.append(record("dec-lora", t))
        recs.append(record("centralized", t))
        recs.append(record("local", t))
    recs.append(record("fedavg", 6, consensus_a=None, consensus_b=None, consensus_ab=None))
    # B = 0 at the first evaluation: the consensus distances are null in metrics.jsonl
    recs.insert(0, record("dec-lora", 1, consensus_a=None, consensus_b=None, consensus_ab=None))
    return recs


@pytest.mark.parametrize(
    "records",
    [
        curve_records(),
        [record("dec-lora", 3, consensus_a=None, consensus_b=None, consensus_ab=None)],
        [record("centralized", 3), record("centralized", 6)],
        [record("dec-lora", 3, loss=None), record("dec-lora", 6)],
    ],
    ids=["every-method", "no-consensus-yet", "pooled-only", "null-loss"],
)
def test_plot_curves_writes_a_png(tmp_path, records):
    path = tmp_path / "curves.png"
    plot_curves(records, path)
    data = path.read_bytes()
    assert data[:8] == PNG and len(data) > 1000


# --- output folder ---------------------------------------------------------------------------


def test_make_out_dir_creates_a_new_folder_and_accepts_an_empty_one(tmp_path):
    new = tmp_path / "a" / "b" / "run"
    assert make_out_dir(load_config(None, [f"out={new}"])) == new
    assert new.is_dir() and not any(new.iterdir())
    assert make_out_dir(load_config(None, [f"out={new}"])) == new  # still empty: fine


def test_make_out_dir_refuses_a_folder_that_holds_files(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text("{}\n")
    with pytest.raises(ConfigError, match="already holds files") as err:
        make_out_dir(load_config(None, [f"out={out}"]))
    assert str(out) in str(err.value) and "\n" not in str(err.value)
    assert (out / "metrics.jsonl").read_text() == "{}\n"  # nothing touched


def test_make_out_dir_defaults_to_a_timestamped_folder_under_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = make_out_dir(load_config(None, []))
    assert out.parent.name == "runs" and out.is_dir()
    assert len(out.name) == len("20240101-120000") and out.name[8] == "-"
    assert out.name.replace("-", "").isdigit()


def test_a_single_local_node_reports_the_network_figures(tmp_path):
    """With one node there are no per-node figures: that node holds the network's adapter."""
    last = {k: v for k, v in record("local").items() if not k.startswith("node_")}
    one = {"rows": 100, "model": dict(AVERAGE_ON_TEST)}  # evaluate_nodes with one state
    out = method_summary("local", last, one)
    assert (out["accuracy"], out["f1"], out["loss"]) == (0.85, 0.84, 0.4)
    plot_curves([last], tmp_path / "c.png")
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
