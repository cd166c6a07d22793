"""``declora tune`` (:mod:`declora.jobs.tune`) on the tiny model: the same number of trials per
method, a tuned.yaml that ``declora run`` accepts, the test rows never read, and a resumed
search that keeps its earlier trials."""

from __future__ import annotations

import csv
import dataclasses

import pytest

from declora.cli import main
from declora.config import load_config
from declora.jobs import tune as tune_mod
from tests.helpers import tiny_args


@pytest.fixture(scope="module")
def search(tiny_model_dir, tiny_csv, tmp_path_factory):
    """A 2-trial search of dec-lora and centralized; the session's test rows are emptied, so
    reading them anywhere would fail."""
    out = tmp_path_factory.mktemp("tune") / "search"
    args = [*tiny_args(tiny_model_dir, tiny_csv, out), "methods=[dec-lora,centralized]"]
    real = tune_mod.prepare
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tune_mod, "prepare", lambda cfg: dataclasses.replace(real(cfg), test=[]))
        assert main(["tune", *args, "tune.trials=2"]) == 0
    return out, args


def trials(out) -> list[dict]:
    with (out / "trials.csv").open() as f:
        return list(csv.DictReader(f))


def test_every_method_gets_the_same_trials_and_starts_from_the_config(search):
    out, _ = search
    rows = trials(out)
    assert [(r["method"], r["trial"]) for r in rows] == [
        ("dec-lora", "0"), ("dec-lora", "1"), ("centralized", "0"), ("centralized", "1"),
    ]  # fmt: skip
    first = rows[0]  # the config's own values come first (tiny_args: lr 0.01, constant)
    assert float(first["param_lr"]) == 0.01 and first["param_schedule"] == "constant"
    assert first["param_finish_rounds"] == "0" and rows[2]["param_finish_rounds"] == ""
    for name in ("tuned.yaml", "tune.png", "tune.journal", "config.yaml"):
        assert (out / name).is_file(), name


def test_tuned_yaml_holds_the_best_values_and_runs(search, tmp_path):
    out, _ = search
    tuned = load_config(str(out / "tuned.yaml"))
    rows = trials(out)
    for method in ("dec-lora", "centralized"):
        done = [r for r in rows if r["method"] == method and r["state"] == "complete"]
        best = max(done, key=lambda r: float(r["validation_accuracy"]))
        assert tuned.per_method[method].lr == pytest.approx(float(best["param_lr"]))
        assert tuned.for_method(method).schedule == best["param_schedule"]
    run_out = tmp_path / "run"
    assert main(["run", str(out / "tuned.yaml"), f"out={run_out}", "export_adapters=false"]) == 0
    assert (run_out / "summary.json").is_file()


def test_more_trials_resume_the_search_and_keep_the_earlier_ones(search):
    out, args = search
    before = trials(out)
    assert main(["tune", *args, "tune.trials=3"]) == 0
    after = trials(out)
    assert [r["method"] for r in after].count("dec-lora") == 3
    assert [r["method"] for r in after].count("centralized") == 3
    kept = [r for r in after if r["trial"] in ("0", "1")]
    key = ("method", "trial", "param_lr", "validation_accuracy")
    assert [[r[k] for k in key] for r in kept] == [[r[k] for k in key] for r in before]
    # the resumed part draws new points, not the ones the first part tried
    for method in ("dec-lora", "centralized"):
        earlier = {r["param_lr"] for r in before if r["method"] == method}
        (new,) = [r for r in after if r["method"] == method and r["trial"] == "2"]
        assert new["param_lr"] not in earlier


def test_another_config_in_the_same_folder_is_refused(search, capsys):
    out, args = search
    assert main(["tune", *args, "lora.rank=2"]) == 2
    assert "another config" in capsys.readouterr().err


def test_tune_refuses_seeds(tiny_model_dir, tiny_csv, tmp_path, capsys):
    args = tiny_args(tiny_model_dir, tiny_csv, tmp_path / "x")
    assert main(["tune", *args, "seeds=[0,1]"]) == 2
    assert "one seed" in capsys.readouterr().err
    assert load_config(None, ["tune.trials=3"]).tune.trials == 3


def test_a_resumed_search_fails_only_the_trials_no_live_process_is_running(tmp_path):
    """An interrupted trial (its process gone) is marked failed when the folder is opened
    again; one that a live process, or another machine, is running is left alone."""
    import os
    import socket
    import subprocess
    import sys

    import optuna

    cfg = load_config(None, ["tune.trials=4"])
    study = tune_mod.study_for(cfg, tmp_path, "dec-lora")
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], text=True,
                          capture_output=True, check=True).stdout  # fmt: skip
    owners = {
        "gone": {"host": socket.gethostname(), "pid": int(gone)},
        "alive": {"host": socket.gethostname(), "pid": os.getppid()},
        "remote": {"host": socket.gethostname() + "-elsewhere", "pid": 1},
        "unknown": {},
    }
    for name, attrs in owners.items():
        trial = study.ask()
        trial.set_user_attr("name", name)
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
    again = tune_mod.study_for(cfg, tmp_path, "dec-lora")
    state = {t.user_attrs["name"]: t.state for t in again.trials if "name" in t.user_attrs}
    running, failed = optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.FAIL
    assert state == {"gone": failed, "alive": running, "remote": running, "unknown": failed}


JOURNALS = {  # what a crash, a disk or a hand left in tune.journal -> the one line, or None
    "cut last line": (lambda text: text + '{"op_code": 4, "worker_id": "x", "tri', None),
    "garbage line": (lambda text: text.replace("\n", "\nhello\n", 1), "tune.journal:2: not a"),
    "no op_code": (lambda text: text.replace("\n", '\n{"x": 1}\n', 1), "tune.journal:2: not a"),
    "random bytes": (lambda text: text.encode() + bytes(range(256)) + b"\n", "not UTF-8 text"),
}


@pytest.mark.parametrize("case", list(JOURNALS))
def test_a_damaged_journal_is_one_line_and_a_cut_last_line_is_dropped(tmp_path, capfd, case):
    """issue 25: resuming read a cut or garbage journal with a JSONDecodeError or
    UnicodeDecodeError traceback (Optuna skips a cut last line, then appends after it)."""
    from declora.config import ConfigError, dump_config

    change, message = JOURNALS[case]
    out = tmp_path / "search"
    out.mkdir()
    cfg = load_config(None, [f"out={out}"])
    (out / "config.yaml").write_text(dump_config(cfg))
    tune_mod.study_for(cfg, out, "dec-lora").ask()  # a journal with a running trial
    journal = out / tune_mod.JOURNAL
    damaged = change(journal.read_text())
    journal.write_bytes(damaged if isinstance(damaged, bytes) else damaged.encode())
    if message is not None:
        with pytest.raises(ConfigError, match=message) as err:
            tune_mod.open_out(cfg)
        assert "\n" not in str(err.value)
        return
    assert tune_mod.open_out(cfg) == out
    assert "dropped a partial last line" in capfd.readouterr().err
    tune_mod.study_for(cfg, out, "dec-lora").ask()  # appends after the last whole line
    assert len(tune_mod.study_for(cfg, out, "dec-lora").trials) == 2


def test_a_search_folder_copied_elsewhere_resumes(tmp_path):
    """out= and device are where the folder is and what this machine computes on."""
    import shutil

    from declora.config import dump_config

    first = load_config(None, [f"out={tmp_path / 'a'}"])
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "config.yaml").write_text(dump_config(first))
    tune_mod.study_for(first, tmp_path / "a", "dec-lora")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    moved = load_config(None, [f"out={tmp_path / 'b'}/", "device=cpu"])
    assert tune_mod.open_out(moved) == tmp_path / "b"


def test_the_first_trial_runs_the_configs_own_values_off_the_grid():
    """A config's gossip_steps=3 and finish_rounds=7 are not on the search's grids: the first
    trial still runs them (they join the choices), not the nearest grid point."""
    import optuna

    cfg = load_config(
        None, ["per_method.dec-lora.gossip_steps=3", "per_method.dec-lora.finish_rounds=7"]
    )
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial(tune_mod.start_values(cfg, "dec-lora"))
    got = tune_mod.suggest(study.ask(), cfg, "dec-lora")
    assert (got.gossip_steps, got.finish_rounds) == (3, 7)
    assert (got.lr, got.schedule) == (cfg.for_method("dec-lora").lr, "cosine")
