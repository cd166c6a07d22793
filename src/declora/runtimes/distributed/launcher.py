"""``declora launch``: check the config on this machine, then hand over to torchrun, one
process per node (each runs :func:`declora.runtimes.distributed.worker.run_worker`). The checks that
every process makes again, under torchrun, are here too: what launch can run, and the output
folder."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

from declora.config import Config, ConfigError, dump_config, load_config
from declora.harness.loggers import check_installed
from declora.harness.session import check_privacy
from declora.learning.capacity import check_sizes
from declora.learning.devices import choose
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
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out={out} is a file, not a folder; choose a new folder")
    if not out.exists() or not any(out.iterdir()):
        return False
    if (out / "summary.json").exists():
        raise ConfigError(f"out={out} holds a finished run; choose an empty or new folder")
    saved = out / "config.yaml"
    if not saved.is_file() or saved.read_text() != dump_config(cfg):
        raise ConfigError(f"out={out} holds files of another run; choose an empty or new folder")
    return True


def launch(
    config: str | None, overrides: list[str], nproc: int | None = None, max_restarts: int = 0
) -> int:
    """``declora launch``: check the config here, then hand over to torchrun on this machine."""
    cfg = load_config(config, overrides)
    n = nproc or cfg.nodes
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
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
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
    env = {"OMP_NUM_THREADS": "1", **os.environ}
    return subprocess.call(cmd, env=env)
