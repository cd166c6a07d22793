"""``declora estimate``: the traffic forecast equals the bytes a real (tiny) run measures, and the
command prints a table, JSON, or a one-line error."""

from __future__ import annotations

import json

import pytest
from transformers import AutoModelForSequenceClassification

from declora.algorithms.compress import payload_size
from declora.cli import main
from declora.config import load_config
from declora.jobs.estimate import estimate, format_estimate, message_sizes
from declora.learning.adapters import build_model, trainable_state
from tests.helpers import tiny_args

COMPRESSED = [
    "compression.kind=quantize",
    "compression.bits=3",
    "compression.block=16",
    "compression.scheme=choco",
]


# runs whose bytes the estimate must match: (methods, overrides)
MEASURED = {
    "choco-3bit": (["dec-lora"], COMPRESSED),
    "fedavg-fp32": (["dec-lora", "fedavg"], []),
    # frozen A is never sent (half the LoRA bytes); finishing rounds send without training;
    # three gossip steps a round send three messages a neighbour
    "frozen-a-finish": (["dec-lora"], ["consensus=frozen_a", "finish_rounds=2", "gossip_steps=3"]),
    # AdamW's second moments go with the adapter: twice the values, for gossip and a server
    "moments-mixed": (["dec-lora", "fedavg"], ["second_moment=mixed"]),
}


def measure(tiny_model_dir, tiny_csv, out, methods, extra):
    """A real 4-node star run (degrees 3, 1, 1, 1)."""
    overrides = [
        *tiny_args(tiny_model_dir, tiny_csv, out),
        "rounds=3",
        "eval_every=3",
        "topology.kind=star",
        f"methods=[{','.join(methods)}]",
        "export_adapters=false",
        *extra,
    ]
    assert main(["run", *overrides]) == 0
    summary = json.loads((out / "summary.json").read_text())
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return load_config(None, overrides), summary, records


@pytest.fixture(scope="module", params=list(MEASURED))
def measured(request, tiny_model_dir, tiny_csv, tmp_path_factory):
    methods, extra = MEASURED[request.param]
    out = tmp_path_factory.mktemp("est") / "run"
    return measure(tiny_model_dir, tiny_csv, out, methods, extra)


def test_message_shapes_match_the_model_the_run_builds(tiny_model_dir, tiny_csv, tmp_path):
    cfg = load_config(None, tiny_args(tiny_model_dir, tiny_csv, tmp_path))
    adapter, full = message_sizes(cfg, num_labels=2)
    model = build_model(cfg, num_labels=2)
    assert adapter == [v.numel() for v in trainable_state(model).values()]
    base = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=2)
    assert full == [p.numel() for p in base.parameters()]


def test_estimate_equals_the_bytes_a_real_run_measured(measured):
    cfg, summary, records = measured
    est = estimate(cfg, num_labels=2)
    assert est["neighbours"] == {"min": 1, "mean": 1.5, "max": 3}
    for method, key in (("dec-lora", "dec-lora"), ("fedavg", "fedavg-node")):
        if method not in summary["methods"]:
            continue
        got = summary["methods"][method]
        assert got["bytes_sent_total"] == est[key]["total_run"]
        assert got["bytes_sent_per_node"] == int(est[key]["sent_per_node_run"])
        assert got["bytes_per_edge_round"] == est[key]["bytes_per_message"]
    dec = [r for r in records if r["method"] == "dec-lora"][-1]
    assert dec["bytes_sent_total"] == est["dec-lora"]["total_run"]


def test_bytes_per_message_follow_the_formula(tiny_model_dir, tiny_csv, tmp_path):
    cfg, summary, _ = measure(tiny_model_dir, tiny_csv, tmp_path / "run", ["dec-lora"], COMPRESSED)
    adapter, _ = message_sizes(cfg, num_labels=2)
    n_scales = sum(-(-m // 16) for m in adapter)
    expected = 16 + 4 * n_scales + -(-sum(adapter) * 3 // 8)  # header, scales, 3-bit codes
    assert summary["methods"]["dec-lora"]["bytes_per_edge_round"] == expected
    assert expected == payload_size(adapter, cfg.compression)


def test_server_and_full_model_figures(tiny_model_dir, tiny_csv, tmp_path):
    cfg = load_config(None, tiny_args(tiny_model_dir, tiny_csv, tmp_path))  # 4-node ring, fp32
    est = estimate(cfg, num_labels=2)
    msg = est["dec-lora"]["bytes_per_message"]
    assert msg == 16 + 4 * est["dec-lora"]["values"]
    assert est["dec-lora"]["sent_per_node_round"] == 2 * msg  # two neighbours on a ring
    assert est["fedavg-node"]["sent_per_node_round"] == msg
    assert est["fedavg-server"]["received_per_node_round"] == 4 * msg
    assert est["fedavg-server"]["sent_per_node_run"] == 4 * msg * cfg.rounds
    full = est["full-model-gossip"]
    assert full["bytes_per_message"] == 16 + 4 * full["values"]
    assert full["values"] > 10 * est["dec-lora"]["values"]


def test_cli_prints_a_table_and_json(tiny_model_dir, tiny_csv, tmp_path, capsys):
    args = [*tiny_args(tiny_model_dir, tiny_csv, tmp_path / "never"), *COMPRESSED]
    assert main(["estimate", *args]) == 0
    table = capsys.readouterr().out
    for label in ("Dec-LoRA gossip", "FedAvg-LoRA, the server", "full-model gossip", "3-bit"):
        assert label in table
    assert main(["estimate", "--json", "--num-labels", "2", *args]) == 0
    est = json.loads(capsys.readouterr().out)
    assert est["compression"]["bits"] == 3 and est["rounds"] == 6
    assert not (tmp_path / "never").exists()  # an estimate writes nothing


def test_the_mixing_line_says_when_the_exact_average_is_of_rounded_messages(
    tiny_model_dir, tiny_csv, tmp_path
):
    """Base-2 averages exactly; with compressed messages the nodes hold the average of what
    was sent (under CHOCO, of the public copies), so the line says which, and only then."""
    args = [*tiny_args(tiny_model_dir, tiny_csv, tmp_path / "never"), "topology.kind=base"]
    for overrides, of in (
        (["compression.kind=none"], ""),
        (
            ["compression.kind=quantize", "compression.bits=8"],
            "as sent: 8-bit, the nodes differ by the rounding)",
        ),
        (
            ["compression.kind=topk", "compression.ratio=0.25"],
            "as sent: the largest 0.25 of the entries",
        ),
        (
            ["compression.kind=none", "compression.scheme=choco", "compression.gamma=0.5"],
            "public copies, CHOCO: a node's adapter differs by what it has not sent, and moves gamma 0.5 of the way)",
        ),
    ):
        table = format_estimate(estimate(load_config(None, [*args, *overrides])))
        mixing = next(line for line in table.splitlines() if line.startswith("mixing:"))
        assert mixing.startswith("mixing: every node holds the exact average after"), mixing
        assert of in mixing and ("(of the" in mixing) is bool(of), mixing


def test_cli_bad_input_is_one_line(capsys):
    assert main(["estimate", "compression.ratio=2"]) == 2
    err = capsys.readouterr().err.strip()
    assert "compression.ratio" in err and "\n" not in err


def test_per_site_files_take_the_classes_from_data_labels(capsys):
    """No file is read: with per-site files the task head has len(data.labels) classes."""
    labels = "data.labels=[a,b,c]"
    assert main(["estimate", "--json", "data.path=nowhere/site_{node}.csv", labels]) == 0
    three = json.loads(capsys.readouterr().out)
    assert main(["estimate", "--json", "--num-labels", "3"]) == 0
    assert three["dec-lora"]["values"] == json.loads(capsys.readouterr().out)["dec-lora"]["values"]


def test_a_task_head_that_cannot_fit_is_refused_before_it_is_built(capsys):
    """--num-labels 100000000000 filled the machine (the config's label names alone)."""
    assert main(["estimate", "tiny", "--num-labels", "100000000000"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--num-labels 100000000000" in err and "memory" in err
