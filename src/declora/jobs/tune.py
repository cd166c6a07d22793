"""``declora tune``: each method's hyper-parameters searched on the validation rows, with the
same budget for every method (``tune.trials`` trials of the full job's rounds).

Optuna does the search: a TPE sampler (seeded), a median pruner on the validation curve (a
trial whose curve falls below the median of earlier trials at the same round stops), and a
journal file as storage, so an interrupted search resumes where it stopped when run again with
the same config and ``out=``. The first trial of every method is the config's own values, so
the tuned values are never worse on validation than the ones it started from.

A trial's value is what the method's headline reports, on the whole validation set at its
last round: the mean over the nodes' own adapters (one model for centralized). The test rows
are never read here. Outputs in ``out``: ``tuned.yaml`` (ready for ``declora run tuned.yaml``),
``trials.csv`` (every trial), ``tune.png`` (the search) and ``tune.journal`` (the storage).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import socket
import time
from pathlib import Path

import numpy as np
import optuna
import yaml
from tqdm.auto import tqdm

from declora.algorithms.methods import METHODS
from declora.config import Config, ConfigError, MethodSettings, dump_config, load_config
from declora.harness.evaluation import evaluate_nodes
from declora.harness.outputs import check_out, make_out_dir, save_figure
from declora.harness.progress import Bar
from declora.harness.report import headline
from declora.harness.runner import play_rounds
from declora.harness.session import Session, party_for, prepare
from declora.protocol.rounds import say
from declora.runtimes.sim import MemoryTransport

JOURNAL = "tune.journal"
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
GOSSIP_STEPS = (1, 2, 3, 4, 8)  # mixing steps per round a search may choose (and the config's)
# gossip-only finishing rounds: a few finish an exact-averaging graph's period, more bring a
# ring's nodes together (and the config's own)
FINISH = (0, 2, 3, 4, 5, 10, 20, 30, 40)
LR = (1e-4, 6e-2)  # the learning rates a search may choose (log scale)
GOSSIP_ONLY = ("gossip_steps", "finish_rounds")  # searched only where nodes gossip


def searched(cfg: Config, method: str) -> list[str]:
    """The values ``tune.params`` searches for ``method``."""
    return [p for p in cfg.tune.params if METHODS[method].gossips or p not in GOSSIP_ONLY]


def suggest(trial: optuna.Trial, cfg: Config, method: str) -> MethodSettings:
    """One trial's values: each searched one (learning rate, the head's multiple of it, the
    schedule; for a method whose nodes gossip, the gossip steps a round and the gossip-only
    finishing rounds) drawn by the sampler, the others the config's own for the method."""
    draw = {
        "lr": lambda: trial.suggest_float("lr", *LR, log=True),
        "head_lr_scale": lambda: trial.suggest_float("head_lr_scale", 1.0, 20.0, log=True),
        "schedule": lambda: trial.suggest_categorical("schedule", ["constant", "cosine"]),
        "gossip_steps": lambda: trial.suggest_categorical("gossip_steps", steps),
        "finish_rounds": lambda: trial.suggest_categorical("finish_rounds", finish),
    }
    own = cfg.for_method(method)
    steps, finish = _with(GOSSIP_STEPS, own.gossip_steps), _with(FINISH, own.finish_rounds)
    values = {k: getattr(own, k) for k in draw}
    values.update({k: draw[k]() for k in searched(cfg, method)})
    # what the search does not draw stays the method's own (subrounds, compression)
    return (cfg.per_method.get(method) or MethodSettings()).model_copy(update=values)


def _with(choices: tuple[int, ...], own: int) -> tuple[int, ...]:
    """A grid and the config's own value: the first trial runs the config as it is."""
    return tuple(sorted({*choices, own}))


def start_values(cfg: Config, method: str) -> dict:
    """The config's own values for ``method`` as trial parameters (the first trial)."""
    own = cfg.for_method(method)
    values = {"lr": own.lr, "head_lr_scale": own.head_lr_scale, "schedule": own.schedule}
    if own.schedule not in ("constant", "cosine"):
        values["schedule"] = "constant"
    values["gossip_steps"], values["finish_rounds"] = own.gossip_steps, own.finish_rounds
    values["lr"] = min(max(values["lr"], LR[0]), LR[1])
    values["head_lr_scale"] = min(max(values["head_lr_scale"], 1.0), 20.0)
    return {k: v for k, v in values.items() if k in searched(cfg, method)}


class Reporter:
    """The progress of one trial: the round bar, and its validation curve reported to Optuna
    (which may stop it)."""

    def __init__(self, trial: optuna.Trial, method: str, total: int, prune: bool):
        self.trial, self.method, self.total, self.prune = trial, method, total, prune
        self.bar = Bar(method, total, leave=False)

    def round_done(self, t: int) -> None:
        self.bar.round_done(t)

    def evaluated(self, record: dict) -> None:
        self.bar.evaluated(record)
        t = record["round"]
        self.trial.report(headline(self.method, record)["accuracy"], t)
        if self.prune and t < self.total and self.trial.should_prune():
            raise optuna.TrialPruned(f"validation curve below the median at round {t}")


def objective(s: Session, method: str, trial: optuna.Trial) -> float:
    """Train ``method`` with the trial's values; its headline accuracy on the validation rows."""
    cfg = s.cfg
    trial.set_user_attr("host", socket.gethostname())
    trial.set_user_attr("pid", os.getpid())
    settings = suggest(trial, cfg, method)
    tried = dataclasses.replace(
        s, cfg=cfg.model_copy(update={"per_method": {**cfg.per_method, method: settings}})
    )
    party = party_for(tried, METHODS[method])
    reporter = Reporter(trial, method, party.total_rounds, cfg.tune.prune)
    # the curve the pruner reads: the training rounds' evaluations only (a trial's finishing
    # rounds only gossip; the end is scored below, on every validation row)
    every = tried.cfg.for_method(method).eval_every
    curve = {t for t in range(1, party.rounds + 1) if t % every == 0}
    began = time.perf_counter()
    try:
        play_rounds(tried, party, MemoryTransport(), None, reporter, eval_rounds=curve)
    finally:
        reporter.bar.bar.close()
        trial.set_user_attr("seconds", round(time.perf_counter() - began, 1))
    final = evaluate_nodes(tried, [n.state() for n in party.nodes], tried.val)
    if "model" in final:
        return final["model"]["accuracy"]
    trial.set_user_attr("node_min_accuracy", final["node_min_accuracy"])
    trial.set_user_attr("average_accuracy", final["average_adapter"]["accuracy"])
    return final["node_mean_accuracy"]


def open_out(cfg: Config) -> Path:
    """A new output folder, or the folder of an earlier search of the same config (resume)."""
    out = Path(cfg.out) if cfg.out else None
    if out is not None and check_out(out) and (out / JOURNAL).is_file():
        check_journal(out / JOURNAL)
        saved = out / "config.yaml"
        # read back through today's Config, so that a key added since keeps its default
        before = dump_config(load_config(str(saved))) if saved.is_file() else ""
        if _searched(before) != _searched(dump_config(cfg)):
            raise ConfigError(
                f"out={out} holds a search of another config; resume with the same config or "
                "choose a new folder"
            )
        (out / "config.yaml").write_text(dump_config(cfg))
        return out
    out = make_out_dir(cfg)
    (out / "config.yaml").write_text(dump_config(cfg))
    return out


def check_journal(path: Path, warn=say) -> None:
    """A journal Optuna can resume: every line a JSON object with an ``op_code``. A last
    line cut by a crash mid-write is dropped (Optuna would append after it, and fail on the
    next read); anything else that is not a journal line is one ConfigError line."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 text; {_RESTORE}") from None
    lines = text.split("\n")
    for n, line in enumerate(lines, 1):
        if not line.strip() or _journal_line(line):
            continue
        if n < len(lines):  # a whole line (it ends in a newline) that is not a journal's
            raise ConfigError(f"{path}:{n}: not a line of an Optuna journal; {_RESTORE}")
        warn(f"declora: {path}: dropped a partial last line (cut by a crash)")
        with path.open("r+b") as f:
            f.truncate(len(raw) - len(line.encode()))


_RESTORE = "restore the file, or search into a new folder (a new out=)"


def _journal_line(line: str) -> bool:
    try:
        entry = json.loads(line)
    except ValueError:
        return False
    return isinstance(entry, dict) and type(entry.get("op_code")) is int


def _searched(dumped: str) -> dict:
    """What a search depends on: the config without ``tune.trials`` (more trials resume it),
    ``methods`` (each method has its own study: methods may be tuned in turn, or by several
    processes at once into one folder, one method each), and where the folder is or what
    this machine computes on (a copied or moved folder resumes)."""
    data = yaml.safe_load(dumped) or {}
    data.get("tune", {}).pop("trials", None)
    for key in ("methods", "out", "device"):
        data.pop(key, None)
    return data


def study_for(cfg: Config, out: Path, method: str) -> optuna.Study:
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(out / JOURNAL))
    )
    study = optuna.create_study(
        study_name=method,
        storage=storage,
        direction="maximize",
        load_if_exists=True,
        # no trial is stopped before half its training rounds: slow starters (a cosine
        # schedule, a graph that mixes late) are not judged on their first evaluation
        pruner=optuna.pruners.MedianPruner(
            n_startup_trials=2, n_warmup_steps=cfg.for_method(method).rounds // 2
        ),
    )
    # seeded by the method and by the trials already there: a resumed search draws new points
    # instead of the ones its first part already tried
    seed = [cfg.seed, list(METHODS).index(method), len(study.trials)]
    # a Gaussian process models the few trials a budget allows (TPE needs tens of trials
    # before it is better than random); the first trials are the config's own and random ones
    study.sampler = optuna.samplers.GPSampler(
        seed=int(np.random.SeedSequence(seed).generate_state(1)[0]),
        n_startup_trials=max(2, cfg.tune.trials // 3),
        warn_independent_sampling=False,
    )
    # a trial left running by an interrupted search will never finish: mark it failed (but
    # not one that another live process of this machine, or another machine, is running)
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if not running_elsewhere(t):
            storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
    if not study.trials:
        study.enqueue_trial(start_values(cfg, method))
    return study


def running_elsewhere(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether the process that started ``trial`` may still be running it: it is alive on this
    machine, or it ran on another machine (which this one cannot ask)."""
    host, pid = trial.user_attrs.get("host"), trial.user_attrs.get("pid")
    if host is None or pid is None:
        return False
    if host != socket.gethostname():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return pid != os.getpid()


def tune_method(s: Session, out: Path, method: str, echo) -> optuna.Study:
    """Run what is left of ``tune.trials`` trials for ``method``."""
    study = study_for(s.cfg, out, method)
    done = len(study.get_trials(deepcopy=False, states=FINISHED))
    left = max(0, s.cfg.tune.trials - done)
    if done:
        echo(f"{method}: {done} trials already done, {left} to go")
    bar = tqdm(total=s.cfg.tune.trials, initial=done, desc=f"tune {method:>11}", unit="trial")

    def shown(study: optuna.Study, trial) -> None:
        bar.update(1)
        if completed(study):
            bar.set_postfix(best=f"{study.best_value:.4f}")

    try:
        study.optimize(lambda tr: objective(s, method, tr), n_trials=left, callbacks=[shown])
    finally:
        bar.close()
    return study


def completed(study: optuna.Study) -> bool:
    return any(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)


def tuned_config(cfg: Config, studies: dict[str, optuna.Study]) -> Config:
    """The config with each tuned method's best values in ``per_method``."""
    per = dict(cfg.per_method)
    for method, study in studies.items():
        if completed(study):
            per[method] = MethodSettings(**study.best_params)
    return cfg.model_copy(update={"per_method": per, "out": None})


def write_tuned(cfg: Config, studies: dict[str, optuna.Study], out: Path) -> Path:
    """tuned.yaml: the config with the best values per method, and how they were found."""
    tuned = tuned_config(cfg, studies)
    lines = [
        "# declora run tuned.yaml   (written by declora tune)",
        f"# {cfg.tune.trials} trials per method on the {cfg.data.val_size} validation rows, "
        f"seed {cfg.seed}; the test rows were not read",
    ]
    for method, study in studies.items():
        if completed(study):
            best = study.best_trial
            lines.append(
                f"# {method}: best validation accuracy {best.value:.4f} (trial {best.number})"
            )
    data = yaml.safe_load(dump_config(tuned))
    data = {k: v for k, v in data.items() if k not in ("out", "tune")}
    data["per_method"] = {
        m: {k: v for k, v in values.items() if v is not None}
        for m, values in data["per_method"].items()
    }
    path = out / "tuned.yaml"
    path.write_text("\n".join(lines) + "\n" + yaml.safe_dump(data, sort_keys=False))
    return path


def trial_rows(studies: dict[str, optuna.Study]) -> list[dict]:
    """One row per trial of every method (what trials.csv holds)."""
    rows = []
    for method, study in studies.items():
        for t in study.trials:
            last = max(t.intermediate_values) if t.intermediate_values else None
            rows.append(
                {
                    "method": method,
                    "trial": t.number,
                    "state": t.state.name.lower(),
                    "validation_accuracy": t.value,
                    "stopped_at_round": last if t.state.name == "PRUNED" else None,
                    **{f"param_{k}": v for k, v in t.params.items()},
                    **t.user_attrs,
                }
            )
    return rows


def write_trials(rows: list[dict], path: Path) -> None:
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def plot_search(studies: dict[str, optuna.Study], path: Path) -> None:
    """tune.png: per method, each trial's validation accuracy (x: stopped early) and the best
    so far."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for method, study in studies.items():
        done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
        (line,) = axes[0].plot([t.number for t in done], [t.value for t in done], "o", label=method)
        best, xs, ys = -1.0, [], []
        for t in sorted(done, key=lambda t: t.number):
            best = max(best, t.value)
            xs.append(t.number)
            ys.append(best)
        axes[0].step(xs, ys, where="post", color=line.get_color(), alpha=0.6)
        for t in pruned:
            last = max(t.intermediate_values)
            axes[0].plot(t.number, t.intermediate_values[last], "x", color=line.get_color())
        axes[1].scatter(
            [t.params["lr"] for t in done], [t.value for t in done], color=line.get_color(),
            label=method,
        )  # fmt: skip
    axes[0].set(title="validation accuracy per trial (x: stopped early)", xlabel="trial")
    axes[1].set(title="validation accuracy against learning rate", xlabel="lr", xscale="log")
    save_figure(fig, axes, path)


def format_best(studies: dict[str, optuna.Study]) -> str:
    lines = [f"{'method':<12} {'trials':>6} {'pruned':>6} {'val acc':>8} {'min':>6}  best values"]
    for method, study in studies.items():
        pruned = sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials)
        if not completed(study):
            lines.append(f"{method:<12} {len(study.trials):>6} {pruned:>6}  no trial finished")
            continue
        best = study.best_trial
        low = best.user_attrs.get("node_min_accuracy")
        values = ", ".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in best.params.items()
        )
        lines.append(
            f"{method:<12} {len(study.trials):>6} {pruned:>6} {best.value:>8.4f} "
            f"{'' if low is None else f'{low:.4f}':>6}  {values}"
        )
    spent = {
        m: sum(t.user_attrs.get("seconds", 0.0) for t in study.trials)
        for m, study in studies.items()
    }
    total = ", ".join(f"{m} {sec / 60:.1f} min" for m, sec in spent.items())
    lines.append(
        f"validation accuracy of the best trial (min: its worst node); trials' time: {total}"
    )
    return "\n".join(lines)


def tune(cfg: Config, echo=print) -> tuple[Path, dict[str, optuna.Study]]:
    """Search every configured method; write tuned.yaml, trials.csv and tune.png."""
    cfg.one_seed("declora tune")
    if cfg.data.per_site:
        raise ConfigError(
            "declora tune reads one data file; per-site files (data.path with {node}) are not "
            "searched yet"
        )
    if cfg.out:  # before the model loads: a folder that cannot be the search's
        check_out(Path(cfg.out))
    s = prepare(cfg)
    out = open_out(cfg)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    echo(
        f"tuning {', '.join(cfg.methods)}: {cfg.tune.trials} trials each on "
        f"{cfg.data.val_size} validation rows; output in {out}"
    )
    studies = {}
    for method in cfg.methods:
        studies[method] = tune_method(s, out, method, echo)
        write_tuned(cfg, studies, out)
    write_trials(trial_rows(studies), out / "trials.csv")
    plot_search(studies, out / "tune.png")
    echo(format_best(studies))
    echo(f"tuned values: {out / 'tuned.yaml'} (declora run {out / 'tuned.yaml'})")
    return out, studies
