"""Metric loggers (``report_to``): TensorBoard, MLflow and W&B each get every metrics.jsonl
record (read back with the tool's own reader: TensorBoard's event accumulator, an MLflow
client on a local SQLite store, the W&B offline run file) and the config as
hyper-parameters; a logger that is not installed is refused in one line before anything is
written."""

from __future__ import annotations

import importlib.util
import json
import os
import struct

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

from declora.cli import main
from declora.config import load_config
from declora.harness import loggers
from declora.harness.loggers import log_site, scalars
from tests.helpers import records, run_sim, tiny_args

METHODS = ("dec-lora", "centralized")


@pytest.fixture(scope="module")
def logged(tiny_model_dir, tiny_csv, tmp_path_factory):
    """A run of two methods that reports to all three loggers, offline."""
    tmp = tmp_path_factory.mktemp("logged")
    env = {
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}",
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        out = tmp / "run"
        run_sim([*tiny_args(tiny_model_dir, tiny_csv, out), "methods=[dec-lora,centralized]",
                 "rounds=4", "eval_every=2", "per_method={centralized: {lr: 0.02}}",
                 "report_to=[tensorboard,mlflow,wandb]"])  # fmt: skip
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    return out, env["MLFLOW_TRACKING_URI"]


def expected(out, method: str) -> dict[str, dict[int, float]]:
    """{tag: {round: value}} of the method's metrics.jsonl records."""
    want: dict[str, dict[int, float]] = {}
    for rec in records(out):
        if rec["method"] == method:
            for tag, value in scalars(rec).items():
                want.setdefault(tag, {})[rec["round"]] = value
    return want


@pytest.mark.parametrize("method", METHODS)
def test_tensorboard_holds_every_record_and_the_config(logged, method):
    out, _ = logged
    acc = EventAccumulator(str(out / "tensorboard" / method)).Reload()
    want = expected(out, method)
    assert {"eval/accuracy", "train/train_loss", "traffic/bytes_sent"} <= set(want)
    assert set(acc.Tags()["scalars"]) == set(want)
    for tag, by_round in want.items():
        got = {e.step: e.value for e in acc.Scalars(tag)}
        assert got == pytest.approx(by_round, rel=1e-6), tag  # float32 in the event file
    start = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = HParamsPluginData.FromString(start).session_start_info.hparams
    assert hparams["rounds"].number_value == 4 and hparams["method"].string_value == method
    config = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "rounds: 4" in config


def test_mlflow_holds_every_record_and_each_methods_own_config(logged):
    from mlflow.tracking import MlflowClient

    out, uri = logged
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("declora")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    for method in METHODS:
        run = runs[f"{out.name}/{method}"]
        for tag, by_round in expected(out, method).items():
            got = {m.step: m.value for m in client.get_metric_history(run.info.run_id, tag)}
            assert got == pytest.approx(by_round), tag
    params = runs[f"{out.name}/centralized"].data.params
    assert params["method"] == "centralized" and params["rounds"] == "4"
    assert params["lr"] == "0.02"  # its own (per_method), not the top-level 0.01


def wandb_history(path) -> tuple[dict, dict[str, dict[int, float]]]:
    """The config and {key: {step: value}} of a W&B offline run file: LevelDB-log blocks of
    32 KiB after a 7-byte header, each record a 7-byte header (crc, length, kind) and a
    protobuf ``Record`` (whole, or first / middle / last parts)."""
    from wandb.proto import wandb_internal_pb2 as pb

    raw, at, part, config, history = path.read_bytes(), 7, b"", {}, {}
    while at + 7 <= len(raw):
        if 32768 - at % 32768 < 7:  # no room for a header: the block's tail is padding
            at += 32768 - at % 32768
            continue
        _, n, kind = struct.unpack("<IHB", raw[at : at + 7])
        part, at = part + raw[at + 7 : at + 7 + n], at + 7 + n
        if kind in (1, 4):  # a whole record, or its last part
            record = pb.Record.FromString(part)
            part = b""
            if record.WhichOneof("record_type") == "run":
                config.update({i.key: json.loads(i.value_json) for i in record.run.config.update})
            if record.WhichOneof("record_type") == "history":
                for item in record.history.item:
                    key = item.key or "/".join(item.nested_key)
                    history.setdefault(key, {})[record.history.step.num] = json.loads(
                        item.value_json
                    )
    return config, history


def test_wandb_offline_holds_every_record_and_the_config(logged):
    out, _ = logged
    for method in METHODS:
        found = {}
        for path in (out / "wandb").glob("offline-run-*/run-*.wandb"):
            config, history = wandb_history(path)
            found[config["method"]] = history
        for tag, by_round in expected(out, method).items():
            assert found[method][tag] == pytest.approx(by_round), tag


def test_a_missing_logger_is_refused_before_anything_is_written(tmp_path, capsys, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        loggers.importlib.util, "find_spec", lambda name: None if name == "wandb" else real(name)
    )
    out = tmp_path / "out"
    assert main(["run", "report_to=[tensorboard,wandb]", f"out={out}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "report_to=wandb: the wandb package is not installed; run pip install wandb" in err
    assert err.count("\n") == 0 and not out.exists()


def test_a_site_writes_its_own_figures_to_its_own_folder(tmp_path):
    cfg = load_config(None, ["report_to=tensorboard", f"out={tmp_path / 'run'}"])
    figures = {"rows": 40, "accuracy": 0.75, "f1": 0.7, "loss": 0.5}
    log_site(cfg, tmp_path / "run" / "node_2", 2, figures, rounds=110)
    acc = EventAccumulator(str(tmp_path / "run" / "node_2" / "tensorboard" / "dec-lora")).Reload()
    got = {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    assert got == {f"test/{k}": [(110, pytest.approx(v))] for k, v in figures.items()}
