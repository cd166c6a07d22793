"""declora: decentralized LoRA fine-tuning without a server (Dec-LoRA and its remedies).

What a script may import from ``declora``, the public API (every other module may change):

- :func:`load_config` (a YAML path or built-in name, plus ``key=value`` overrides) and
  :class:`Config`, the typed config it returns; :class:`ConfigError`, its one-line error;
- :func:`run`: every configured method in one process (``declora run``); returns the run's
  folder and its ``summary.json`` as a dict; :func:`run_seeds`: once per seed
  (``declora run seeds=[...]``);
- :func:`launch`: one process per node under torchrun (``declora launch``);
- :func:`tune`: each method's values searched on the validation rows (``declora tune``);
- :func:`survey` and :func:`write_survey`: each node's rows and label mix (``declora
  survey``); :func:`estimate` and :func:`format_estimate`: the traffic before training
  (``declora estimate``);
- :func:`resolve_model_path`: the local folder of a model name (``bundled:minilm``), to load
  an exported adapter with PEFT.

The names are imported when first used, so ``import declora`` stays cheap.
"""

from __future__ import annotations

from importlib import import_module

__version__ = "0.1.0"

# public name -> the module that defines it
_WHERE = {
    "Config": "declora.config",
    "ConfigError": "declora.config",
    "load_config": "declora.config",
    "run": "declora.runtimes.sim",
    "run_seeds": "declora.jobs.seeds",
    "launch": "declora.runtimes.distributed.launcher",
    "tune": "declora.jobs.tune",
    "survey": "declora.jobs.survey",
    "write_survey": "declora.jobs.survey",
    "estimate": "declora.jobs.estimate",
    "format_estimate": "declora.jobs.estimate",
    "resolve_model_path": "declora.learning.adapters",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'declora' has no attribute {name!r}")
    value = getattr(import_module(_WHERE[name]), name)
    globals()[name] = value  # once imported, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
