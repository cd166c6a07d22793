"""The public API: what ``declora/__init__.py`` names exists, is what the docs say it is, and
``import declora`` alone stays cheap (no torch until a name is used)."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest

import declora

FUNCTIONS = (
    "load_config",
    "run",
    "run_seeds",
    "launch",
    "tune",
    "survey",
    "write_survey",
    "estimate",
    "format_estimate",
    "resolve_model_path",
)


def test_every_public_name_exists():
    assert sorted(declora.__all__) == sorted([*FUNCTIONS, "Config", "ConfigError"])
    for name in FUNCTIONS:
        assert inspect.isfunction(getattr(declora, name)), name
    assert inspect.isclass(declora.Config) and issubclass(declora.ConfigError, ValueError)
    assert set(declora.__all__) <= set(dir(declora))


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        declora.nothing  # noqa: B018


def test_the_public_api_loads_and_runs_a_config_by_name():
    cfg = declora.load_config("tiny", ["nodes=3"])
    assert isinstance(cfg, declora.Config) and cfg.nodes == 3
    with pytest.raises(declora.ConfigError, match="lora.rank"):
        declora.load_config(None, ["lora.rank=0"])


def test_importing_declora_does_not_import_torch():
    code = "import sys, declora; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
