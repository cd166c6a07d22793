"""The run configuration: the typed, validated :class:`Config` (:mod:`~declora.config.schema`,
its sections in :mod:`~declora.config.sections`), loading it from YAML and ``key=value``
overrides (:mod:`~declora.config.loading`), the one-line :class:`ConfigError`
(:mod:`~declora.config.errors`) and the built-in YAML files (``builtin/``)."""

from declora.config.errors import ConfigError, one_line
from declora.config.loading import (
    CONFIG_DIR,
    builtin_configs,
    dump_config,
    load_config,
    parse_overrides,
    resolve_config_path,
)
from declora.config.schema import MAX_NODES, Config
from declora.config.sections import (
    DEVICE,
    SEED_MAX,
    CompressionConfig,
    MethodSettings,
    Rule,
    TaskName,
)

__all__ = [
    "CONFIG_DIR",
    "DEVICE",
    "MAX_NODES",
    "SEED_MAX",
    "CompressionConfig",
    "Config",
    "ConfigError",
    "MethodSettings",
    "Rule",
    "TaskName",
    "builtin_configs",
    "dump_config",
    "load_config",
    "one_line",
    "parse_overrides",
    "resolve_config_path",
]
