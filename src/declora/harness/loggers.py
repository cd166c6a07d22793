"""Metric loggers (config ``report_to``, named as in Hugging Face Trainer): TensorBoard, MLflow
and Weights & Biases get every metrics.jsonl record, and the config as hyper-parameters.

Each method of a run is one logger run, so that a dashboard draws the methods (and other runs)
side by side: TensorBoard writes ``out/tensorboard/<method>/`` (``tensorboard --logdir runs``
shows every run); MLflow a run ``<out>/<method>`` in experiment ``$MLFLOW_EXPERIMENT_NAME``
(default ``declora``) at ``$MLFLOW_TRACKING_URI`` (default: MLflow's own); W&B a run
``<method>`` in group ``<out>`` of project ``$WANDB_PROJECT`` (default ``declora``), its
files under ``out/wandb`` (``WANDB_MODE=offline`` needs no network). A record's figures keep
their metrics.jsonl names, under a group that says what they measure (:func:`scalars`):
``eval/accuracy``, ``train/train_loss``, ``consensus/consensus_ab``, ``traffic/bytes_sent``,
``privacy/epsilon``; a per-node list is one figure per node (``sites/site_accuracy/3``). The
step is the round. The hyper-parameters are the method's own config (``per_method`` applied),
flattened to dotted keys.

Under ``launch`` rank 0 writes the run's records; each site writes its own test figures (its
site.json) to its own folder, ``out/node_<i>/``. A logger that is not installed is refused
before anything is written (:func:`check_installed`).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

from declora.config import Config, ConfigError, dump_config

INSTALL = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}  # name: package
SKIP = ("method", "round", "split")  # what a record says, not a figure
GROUPS = (  # key prefix: the group of its figure
    ("consensus_", "consensus"),
    ("bytes_", "traffic"),
    ("messages_", "traffic"),
    ("epsilon", "privacy"),
    ("train_", "train"),
    ("grad_", "train"),
    ("samples_", "train"),
    ("wall_", "time"),
    ("site_", "sites"),
)
LONGEST = 500  # characters of a hyper-parameter's value (MLflow and TensorBoard cap them)
Params = dict[str, str | int | float | bool]


def check_installed(cfg: Config) -> None:
    """Each logger of ``report_to`` can be imported; else one line naming the install."""
    for name in cfg.report_to:
        if importlib.util.find_spec(name) is None:
            raise ConfigError(
                f"report_to={name}: the {name} package is not installed; run "
                f"pip install {INSTALL[name]} (or drop {name} from report_to)"
            )


def scalars(record: dict, group: str | None = None) -> dict[str, float]:
    """The figures of one metrics.jsonl record by tag (``group/key``, ``group/key/node``);
    what is missing or not finite (null in metrics.jsonl) is left out."""
    out = {}
    for key, value in record.items():
        if key in SKIP:
            continue
        tag = f"{group or _group(key)}/{key}"
        values = enumerate(value) if isinstance(value, list) else [(None, value)]
        for node, v in values:
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
                out[tag if node is None else f"{tag}/{node}"] = float(v)
    return out


def _group(key: str) -> str:
    return next((g for prefix, g in GROUPS if key.startswith(prefix)), "eval")


def hyperparameters(cfg: Config) -> Params:
    """The config as flat dotted keys: numbers, text and booleans as they are, anything else
    (lists, empty sections, null) as JSON text."""
    flat: Params = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict) and value:
            for k, v in value.items():
                walk(f"{prefix}{k}.", v)
        elif isinstance(value, bool | int | float | str):
            flat[prefix[:-1]] = value
        else:
            flat[prefix[:-1]] = json.dumps(value)[:LONGEST]

    walk("", cfg.model_dump(mode="json"))
    return {k: v[:LONGEST] if isinstance(v, str) else v for k, v in flat.items()}


class Logger(Protocol):
    """One tracking tool: a run per method, its hyper-parameters, then figures by round."""

    def start(self, method: str, params: Params, config: str) -> None: ...

    def record(self, figures: dict[str, float], step: int) -> None: ...

    def close(self) -> None: ...


class TensorBoard:
    """Event files in ``folder/tensorboard/<method>`` (``purge_step``: a resumed run's
    rounds after it replace the ones written before)."""

    def __init__(self, folder: Path, name: str, purge_step: int | None = None):
        self.root, self.purge_step, self.writer = folder / "tensorboard", purge_step, None

    def start(self, method: str, params: Params, config: str) -> None:
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        self.close()
        self.writer = SummaryWriter(str(self.root / method), purge_step=self.purge_step)
        self.writer.add_text("config", "    " + config.replace("\n", "\n    "))  # as code
        # the HParams tab: this run's values beside the last figures of these tags
        shown = {f"eval/{k}": 0.0 for k in ("accuracy", "f1", "loss")}
        for summary in hparams(params, shown):
            self.writer.file_writer.add_summary(summary)

    def record(self, figures: dict[str, float], step: int) -> None:
        for tag, value in figures.items():
            self.writer.add_scalar(tag, value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class MLflow:
    """A run per method in the tracking store that the environment names."""

    def __init__(self, folder: Path, name: str, purge_step: int | None = None):
        from mlflow.tracking import MlflowClient

        self.client, self.name, self.folder, self.run = MlflowClient(), name, folder, None
        experiment = os.environ.get("MLFLOW_EXPERIMENT_NAME", "declora")
        found = self.client.get_experiment_by_name(experiment)
        self.experiment = (
            found.experiment_id if found else self.client.create_experiment(experiment)
        )

    def start(self, method: str, params: Params, config: str) -> None:
        from mlflow.entities import Param

        self.close()
        tags = {"declora.out": str(self.folder), "declora.method": method}
        run = self.client.create_run(self.experiment, run_name=f"{self.name}/{method}", tags=tags)
        self.run = run.info.run_id
        items = [Param(k, str(v)) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow takes 100 parameters a batch
            self.client.log_batch(self.run, params=items[i : i + 100])

    def record(self, figures: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, v, now, step) for k, v in figures.items()]
        for i in range(0, len(items), 1000):  # and 1,000 metrics
            self.client.log_batch(self.run, metrics=items[i : i + 1000])

    def close(self) -> None:
        if self.run is not None:
            self.client.set_terminated(self.run)
            self.run = None


class WandB:
    """A run per method, grouped by the declora run; its files under ``folder/wandb``."""

    def __init__(self, folder: Path, name: str, purge_step: int | None = None):
        import wandb

        self.wandb, self.folder, self.name, self.run = wandb, folder, name, None

    def start(self, method: str, params: Params, config: str) -> None:
        self.close()
        self.run = self.wandb.init(
            project=os.environ.get("WANDB_PROJECT", "declora"),
            group=self.name,
            name=method,
            dir=str(self.folder),
            config=params,
        )

    def record(self, figures: dict[str, float], step: int) -> None:
        self.run.log(figures, step=step)

    def close(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None


KINDS: dict[str, type] = {"tensorboard": TensorBoard, "mlflow": MLflow, "wandb": WandB}


class Loggers:
    """The config's loggers, writing to ``folder`` for the run called ``name``."""

    def __init__(self, cfg: Config, folder: Path, name: str | None = None, resumed: int = 0):
        self.cfg, name = cfg, name or folder.name
        purge = resumed + 1 if resumed else None
        self.each: dict[str, Logger] = {}
        for kind in cfg.report_to:
            with _told(kind):  # a tracking store that cannot be opened: one line
                self.each[kind] = KINDS[kind](folder, name, purge)

    def start(self, method: str) -> None:
        """Open the method's run: its config as hyper-parameters."""
        own = self.cfg.for_method(method)
        params = {"method": method, **hyperparameters(own)}
        for kind, logger in self.each.items():
            with _told(kind):  # W&B not logged in, a server that does not answer
                logger.start(method, params, dump_config(own))

    def record(self, record: dict, group: str | None = None) -> None:
        figures = scalars(record, group)
        for logger in self.each.values():
            logger.record(figures, int(record["round"]))

    def close(self) -> None:
        for logger in self.each.values():
            logger.close()


@contextmanager
def _told(kind: str):
    """A logger that cannot open its run stops the run in one line, before its rounds."""
    try:
        yield
    except Exception as err:  # each tool raises its own kinds
        reason = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ConfigError(
            f"report_to={kind}: cannot open a run ({type(err).__name__}: {reason})"
        ) from None


def open_loggers(cfg: Config, folder: Path, resumed: int = 0) -> Loggers | None:
    """The config's loggers for the run in ``folder`` (None when it reports to none)."""
    return Loggers(cfg, folder, resumed=resumed) if cfg.report_to else None


def log_site(cfg: Config, folder: Path, node: int, figures: dict, rounds: int) -> None:
    """A site's own test figures (its site.json) to its loggers in its own ``folder``."""
    if not cfg.report_to:
        return
    loggers = Loggers(cfg, folder, name=f"{Path(cfg.out or '.').name}/node_{node}")
    loggers.start("dec-lora")
    try:
        loggers.record({**figures, "round": rounds}, group="test")
    finally:
        loggers.close()
