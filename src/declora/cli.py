"""``declora`` command line: one small function per subcommand that parses and hands over."""

from __future__ import annotations

import argparse
import os
import sys
import warnings

from declora.config import Config, ConfigError, builtin_configs, load_config
from declora.learning.adapters import ModelError
from declora.learning.sources import DataError
from declora.learning.train import Stopped

USER_ERRORS = (ConfigError, DataError, ModelError)


def _split_args(items: list[str]) -> tuple[str | None, list[str]]:
    """``[CONFIG] [key=value ...]``: the first item without '=' names the config."""
    config = None
    if items and "=" not in items[0]:
        config, items = items[0], items[1:]
    stray = [i for i in items if "=" not in i]
    if stray:
        raise ConfigError(f"expected key=value overrides after the config, got '{stray[0]}'")
    return config, items


def cmd_run(args: argparse.Namespace) -> int:
    path, overrides = _split_args(args.items)
    cfg = load_config(path, overrides)
    if cfg.seeds is not None:
        from declora.jobs.seeds import run_seeds

        run_seeds(cfg)
    else:
        from declora.runtimes.sim import run

        run(cfg)
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from declora.jobs.tune import tune

    path, overrides = _split_args(args.items)
    tune(load_config(path, overrides))
    return 0


def cmd_estimate(args: argparse.Namespace) -> int:
    import json

    from declora.jobs.estimate import estimate, format_estimate

    path, overrides = _split_args(args.items)
    cfg = load_config(path, overrides)
    if args.num_labels is not None and args.num_labels < 2:
        raise ConfigError(f"--num-labels {args.num_labels}: a task has at least 2 classes")
    est = estimate(cfg, num_labels=args.num_labels)
    print(json.dumps(est, indent=2) if args.json else format_estimate(est))
    return 0


def cmd_survey(args: argparse.Namespace) -> int:
    from declora.jobs.survey import write_survey

    path, overrides = _split_args(args.items)
    only = None
    if args.nodes:
        try:
            only = [int(x) for x in args.nodes.split(",")]
        except ValueError:
            raise ConfigError(f"--nodes {args.nodes}: expected node ids, e.g. 2,3") from None
    write_survey(load_config(path, overrides), only=only, parts=args.combine)
    return 0


def cmd_launch(args: argparse.Namespace) -> int:
    from declora.runtimes.distributed.launcher import launch

    path, overrides = _split_args(args.items)
    return launch(path, overrides, nproc=args.nproc, max_restarts=args.max_restarts)


def cmd_worker(args: argparse.Namespace) -> int:
    """One torchrun process (not for users: ``launch`` and the README's torchrun run it)."""
    return worker(args.items)


def worker(items: list[str], wrap=None) -> int:
    """The worker's body; ``wrap(transport, cfg)`` (tests) puts a transport around the real one."""
    from declora.protocol.handshake import StartRefused
    from declora.protocol.rounds import say
    from declora.protocol.wire import PeerError
    from declora.runtimes.distributed.worker import run_worker

    path, overrides = _split_args(items)
    cfg = load_config(path, overrides)
    try:
        run_worker(cfg, wrap=None if wrap is None else lambda t: wrap(t, cfg))
    except (PeerError, Stopped) as err:
        say(f"declora: node {os.environ.get('RANK', '?')}: {err}")
        return 2 if isinstance(err, StartRefused) else 1  # a config error, or a failed run
    return 0


def cmd_configs(args: argparse.Namespace) -> int:
    if args.fields:
        _print_fields(Config)
        return 0
    for name, line in builtin_configs().items():
        print(f"{name:<24} {line}")
    return 0


def _print_fields(model, prefix: str = "") -> None:
    from pydantic import BaseModel

    for name, field in model.model_fields.items():
        sub = field.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            _print_fields(sub, f"{prefix}{name}.")
        else:
            default = field.get_default(call_default_factory=True)
            print(f"{prefix + name:<24} {default!s:<26} {field.description or ''}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="declora", description="Decentralized LoRA fine-tuning (Dec-LoRA) without a server."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run",
        help="simulate all nodes in one process and compare methods",
        description="declora run [CONFIG] [key=value ...]; with no CONFIG, the built-in default "
        "(8 nodes on a Base-2 graph, bundled MiniLM, Rotten Tomatoes).",
    )
    run.add_argument("items", nargs="*", metavar="[CONFIG] [key=value]")
    run.set_defaults(func=cmd_run)

    est = sub.add_parser(
        "estimate",
        help="bytes each node sends and receives, before training",
        description="declora estimate [CONFIG] [key=value ...]: values and bytes per node per "
        "round and per run at the chosen compression, against FedAvg-LoRA with a server and "
        "full-model gossip. Reads the model's shapes only; no training.",
    )
    est.add_argument("items", nargs="*", metavar="[CONFIG] [key=value]")
    est.add_argument("--json", action="store_true", help="print the figures as JSON")
    est.add_argument(
        "--num-labels", type=int, metavar="N", help="classes of the task (default: read the data)"
    )
    est.set_defaults(func=cmd_estimate)
    launch = sub.add_parser(
        "launch",
        help="run dec-lora with one process per node (torchrun, this machine)",
        description="declora launch [--nproc N] [CONFIG] [key=value ...]: one torch.distributed "
        "process per node on this machine, exchanging adapters with graph neighbours only. "
        "For several machines run torchrun yourself (see the README).",
    )
    launch.add_argument("items", nargs="*", metavar="[CONFIG] [key=value]")
    launch.add_argument(
        "--nproc", type=int, metavar="N", help="processes on this machine (default: nodes)"
    )
    launch.add_argument(
        "--max-restarts",
        type=int,
        default=0,
        metavar="R",
        help="restart the processes up to R times after a crash; they resume from checkpoints",
    )
    launch.set_defaults(func=cmd_launch)
    _add_small_commands(sub)
    return parser


def _add_small_commands(sub) -> None:
    """``tune``, ``survey``, the hidden worker and ``configs``."""
    tune = sub.add_parser(
        "tune",
        help="search each method's hyper-parameters on validation rows (Optuna)",
        description="declora tune [CONFIG] [key=value ...]: tune.trials trials per method, the "
        "same for each, scored on the validation rows; writes tuned.yaml (for declora run), "
        "trials.csv and tune.png to out=. Run it again with the same out= to resume.",
    )
    tune.add_argument("items", nargs="*", metavar="[CONFIG] [key=value]")
    tune.set_defaults(func=cmd_tune)
    survey = sub.add_parser(
        "survey",
        help="the data before training: rows, labels and text lengths per node",
        description="declora survey [CONFIG] [key=value ...]: each node's training rows, label "
        "shares and text lengths, and how far each node's label mix is from the pooled one, "
        "for the same split a run would train on. Writes survey.json and survey.png to out=.",
    )
    survey.add_argument("items", nargs="*", metavar="[CONFIG] [key=value]")
    survey.add_argument(
        "--nodes", help="per-site files: survey only these sites' files (e.g. 2,3: this machine's)"
    )
    survey.add_argument(
        "--combine", nargs="+", metavar="SURVEY_JSON", help="combine sites' survey.json files"
    )
    survey.set_defaults(func=cmd_survey)
    worker = sub.add_parser("worker")  # hidden: the body of one torchrun process
    worker.add_argument("items", nargs="*")
    worker.set_defaults(func=cmd_worker)
    configs = sub.add_parser("configs", help="list the built-in configs")
    configs.add_argument("--fields", action="store_true", help="list every config key instead")
    configs.set_defaults(func=cmd_configs)
    sub.metavar = "{" + ",".join(c for c in sub.choices if c != "worker") + "}"


def main(argv: list[str] | None = None) -> int:
    # deprecation notices from inside transformers/peft are not for declora's users
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(transformers|peft)\.")
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    # key=value overrides anywhere, after an option too (declora survey sites --nodes 2,3 out=x)
    stray = [x for x in rest if x.startswith("-") or "=" not in x or not hasattr(args, "items")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if rest:
        args.items = [*args.items, *rest]
    try:
        return args.func(args)
    except USER_ERRORS as err:
        print(f"declora: error: {err}", file=sys.stderr)
        return 2
    except Stopped as err:
        print(f"declora: stopped: {err}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("declora: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader closed the pipe (declora configs --fields | head)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
