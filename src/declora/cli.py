"""``declora`` command line: one small function per subcommand that parses and hands over."""

from __future__ import annotations

import argparse
import sys

from declora.adapters import ModelError
from declora.config import Config, ConfigError, builtin_configs, load_config
from declora.data import DataError

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
    from declora.sim import run

    path, overrides = _split_args(args.items)
    cfg = load_config(path, overrides)
    run(cfg)
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
        "(8-node ring, bundled MiniLM, Rotten Tomatoes).",
    )
    run.add_argument("items", nargs="*", metavar="[CONFIG] [key=value]")
    run.set_defaults(func=cmd_run)
    configs = sub.add_parser("configs", help="list the built-in configs")
    configs.add_argument("--fields", action="store_true", help="list every config key instead")
    configs.set_defaults(func=cmd_configs)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except USER_ERRORS as err:
        print(f"declora: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("declora: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
