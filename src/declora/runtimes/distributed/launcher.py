"""``declora launch``: check the config on this machine, then hand over to torchrun, one
process per node (each runs :func:`declora.runtimes.distributed.worker.run_worker`). The checks that
every process makes again, under torchrun, are here too: what launch can run, and the output
folder."""

from __future__ import annotations

import logging
import os
import sys
from datetime import datetime
from pathlib import Path

from declora.config import Config, ConfigError, load_config
from declora.harness.loggers import check_installed
from declora.harness.outputs import check_out
from declora.harness.session import check_privacy
from declora.learning.capacity import check_sizes
from declora.learning.devices import choose
from declora.protocol.handshake import fingerprint
from declora.protocol.keys import read_key


def check_launchable(cfg: Config, processes: int, what: str = "torchrun started") -> None:
    """What ``declora launch`` runs: dec-lora, one seed, one process per node, with loggers
    that are installed."""
    if processes != cfg.nodes:
        raise ConfigError(
            f"nodes={cfg.nodes}, but {what} {processes} processes: launch runs one process per node"
        )
    cfg.one_seed("declora launch")
    if "dec-lora" not in cfg.methods:
        raise ConfigError(
            f"launch runs dec-lora; methods={cfg.methods} are simulator runs (declora run)"
        )
    check_installed(cfg)


def check_out_dir(cfg: Config) -> bool:
    """Whether ``out`` holds an unfinished run of this very config (resume); False when the
    folder is new or empty. Anything else is refused, so no run overwrites another."""
    if cfg.out is None:
        raise ConfigError("out= is required: every process must write to the same folder")
    out = Path(cfg.out)
    if not check_out(out):  # new or empty (a file, or a place this user cannot write: refused)
        return False
    if (out / "summary.json").exists():
        raise ConfigError(f"out={out} holds a finished run; choose an empty or new folder")
    if not _same_run(out / "config.yaml", cfg):
        raise ConfigError(f"out={out} holds files of another run; choose an empty or new folder")
    return True


def _same_run(saved: Path, cfg: Config) -> bool:
    """Whether ``saved`` (a run's config.yaml) is of this run: the same fingerprint, which
    leaves out what each site may change at a restart (out=, device, the key file's path,
    per-site files' paths and encodings)."""
    if not saved.is_file():
        return False
    try:  # read back through today's Config, so that a key added since keeps its default
        before = load_config(str(saved))
    except ConfigError:
        return False
    return fingerprint(before) == fingerprint(cfg)


def launch(
    config: str | None, overrides: list[str], nproc: int | None = None, max_restarts: int = 0
) -> int:
    """``declora launch``: check the config here, then hand over to torchrun on this machine."""
    cfg = load_config(config, overrides)
    n = cfg.nodes if nproc is None else nproc  # --nproc 0 is refused, not read as "all"
    check_launchable(cfg, n, "--nproc asks for")
    extra = [] if cfg.methods == ["dec-lora"] else ["methods=[dec-lora]"]
    others = ", ".join(m for m in cfg.methods if m != "dec-lora")
    if cfg.out is None:
        extra.append(f"out=runs/{datetime.now():%Y%m%d-%H%M%S}")
    cfg = load_config(config, [*overrides, *extra])
    if cfg.security.key_file:
        read_key(cfg.security.key_file)
    check_out_dir(cfg)
    check_sizes(cfg, held=1, processes=n)  # every process of this machine, before torchrun
    check_privacy(cfg)  # DP settings against each node's rows (one data file)
    choose(cfg.device)  # a GPU named that this machine does not have
    if others:
        print(f"declora: launch runs dec-lora only ({others}: see declora run)", file=sys.stderr)
    args = [
        "--standalone",
        f"--nproc-per-node={n}",
        f"--max-restarts={max_restarts}",
        "-m",
        "declora.cli",
        "worker",
        *([config] if config else []),
        *overrides,
        *extra,
    ]
    return torchrun(args)


def torchrun(args: list[str]) -> int:
    """torchrun's agent in this process (as ``python -m torch.distributed.run ARGS`` runs it):
    each node prints its own line; the agent's log lines and its ChildFailedError traceback
    (40 lines that repeat what the nodes said) are left out. Exit 2 when a node stopped on a
    configuration or data error (its exit code 2), else 1 for a run that failed."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    logging.getLogger("torch.distributed").setLevel(logging.CRITICAL)
    try:
        run(parse_args(args))
    except ChildFailedError as err:
        codes = [f.exitcode for f in err.failures.values()]
        return 2 if 2 in codes else 1
    return 0
