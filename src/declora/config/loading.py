"""Loading a config: a YAML file (a path or a built-in name) plus dotted ``key=value``
overrides, validated into a :class:`~declora.config.schema.Config`; and writing it back.
Every failure is one :class:`~declora.config.errors.ConfigError` line naming the key or file."""

from __future__ import annotations

from collections.abc import Hashable
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from declora.config.errors import ConfigError
from declora.config.schema import Config
from declora.config.sections import MethodSettings

CONFIG_DIR = Path(__file__).parent / "builtin"


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{key}: '{part}' is not a section")
        node = child
    node[parts[-1]] = value


class _TextDates(yaml.SafeLoader):
    """YAML's safe loader, except that a date stays text: no config value is a date, and
    ``out=2024-02-30`` names a folder (PyYAML would fail on the day)."""


_TextDates.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
# Reading a YAML text raises YAMLError, but also what PyYAML's constructors' conversions raise
# for a bad explicit tag (!!int 0xZZ: ValueError, !!bool maybe: KeyError, !!timestamp x:
# AttributeError) and RecursionError for brackets nested thousands deep. Each means the text
# is not valid YAML, so both readers below catch Exception.


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """Turn ``["lora.rank=4", "methods=[dec-lora]"]`` into a nested dict (values parsed as
    YAML; a value that is not valid YAML stays the text it is)."""
    tree: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override '{item}' must look like key=value (e.g. lora.rank=4)")
        try:
            value = yaml.load(raw, Loader=_TextDates) if raw != "" else None
        except Exception:  # not valid YAML (see above)
            value = raw
        _set_dotted(tree, key.strip(), value)
    return tree


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``extra`` over ``base``, section by section; an empty mapping (``per_method={}``)
    replaces what it names rather than adding nothing to it."""
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and v and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # a name too long for the file system names no file
        return False


def resolve_config_path(name: str) -> Path:
    """A YAML path, or the name of a built-in config (``declora configs`` lists them)."""
    path = Path(name)
    if _is_file(path):
        return path
    builtin = CONFIG_DIR / f"{name.removesuffix('.yaml')}.yaml"
    if _is_file(builtin):
        return builtin
    raise ConfigError(
        f"config '{name}' is neither a file nor a built-in config (see: declora configs)"
    )


def builtin_configs() -> dict[str, str]:
    """Built-in config name -> its first comment line."""
    out = {}
    for path in sorted(CONFIG_DIR.glob("*.yaml")):
        first = path.read_text().splitlines()[0] if path.stat().st_size else ""
        out[path.stem] = first.lstrip("# ").strip()
    return out


def _format_error(err: ValidationError) -> str:
    e = err.errors()[0]
    loc = ".".join(
        str(p) for p in e["loc"] if p != "[key]" and (not isinstance(p, int) or len(e["loc"]) == 1)
    )
    msg = e["msg"].removeprefix("Value error, ")
    if e["type"] == "extra_forbidden":
        return f"unknown config key '{loc}'"
    got = e.get("input")
    shown = (
        ""
        if isinstance(got, dict) or e["type"].startswith("value_error")
        else f" (got {_clip(repr(got))})"
    )
    return f"{loc}: {msg}{shown}" if loc else msg


def _first_line(err: Exception) -> str:
    lines = str(err).strip().splitlines()
    return _clip(lines[0]) if lines else type(err).__name__


def _clip(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


class _UniqueKeyLoader(_TextDates):
    """:class:`_TextDates`, except that a key given twice in one mapping is an error (PyYAML
    keeps the last one silently). Merge keys (``<<: *defaults``) are YAML's own way of
    repeating keys and stay allowed."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, Hashable):
                break  # PyYAML refuses it below, with its line
            if key in seen:
                line = key_node.start_mark.line + 1
                raise yaml.YAMLError(f"line {line}: key '{key}' given twice")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_config(path: str | None = None, overrides: list[str] | None = None) -> Config:
    """Build a Config from an optional YAML file plus ``key=value`` overrides."""
    data = {} if path is None else _read_yaml(resolve_config_path(path))
    extra = parse_overrides(overrides or [])
    dotted = any(
        item.partition("=")[0].strip().startswith("per_method.") for item in overrides or []
    )
    per = _per_method(data, extra, dotted)
    if per is not None:
        data = {**data, "per_method": per}
        extra = {k: v for k, v in extra.items() if k != "per_method"}
    try:
        return Config.model_validate(_merge(data, extra))
    except ValidationError as err:
        raise ConfigError(f"config error: {_format_error(err)}") from None
    except RecursionError:  # a YAML alias that holds itself, in the file and an override
        raise ConfigError("config error: values nested too deeply") from None


def _per_method(data: dict[str, Any], extra: dict[str, Any], dotted: bool) -> dict | None:
    """The ``per_method`` the layers give: the built-in one, the file's, the command line's.

    A top-level value (``lr``, ``schedule``, ...) given in a layer wins over the per-method
    values of the layers below it, unless that layer gives the method's own value too: a
    value the user types acts. ``per_method.dec-lora.gossip_steps=8`` changes one value of
    the per_method below it; ``per_method={...}`` gives the whole mapping (merged into the
    file's, as every section is). None where a layer holds no mapping (pydantic refuses it).
    """
    if "per_method" in data:
        per = data["per_method"]
    else:
        default = Config.model_fields["per_method"].default_factory()
        per = _without({m: v.model_dump(exclude_none=True) for m, v in default.items()}, data)
    if "per_method" in extra:
        given = extra["per_method"]
        if not dotted and "per_method" not in data:
            per = given
        elif isinstance(per, dict) and isinstance(given, dict):
            per = _merge(per, given) if given else {}
        else:
            return None
        return _without(per, extra, given if isinstance(given, dict) else {})
    return _without(per, extra)


def _without(per: Any, layer: dict[str, Any], own: dict | None = None) -> Any:
    """``per`` without the values that ``layer`` gives at the top level, but for those it
    gives a method's own value of (``own``: that layer's per_method). A section given in part
    (``compression.bits=4``) is merged into the method's own: the keys given win, the others
    stay the method's (its 8-bit quantize stays quantize)."""
    keys = [k for k in MethodSettings.model_fields if k in layer]
    if not keys or not isinstance(per, dict):
        return per
    own = own or {}
    out = {}
    for method, values in per.items():
        mine = own.get(method) if isinstance(own.get(method), dict) else {}
        if isinstance(values, dict):
            values = {
                k: v if k in mine or k not in keys else _merge(v, layer[k])
                for k, v in values.items()
                if k not in keys or k in mine or _section(v, layer.get(k))
            }
        out[method] = values
    return out


def _section(mine: Any, given: Any) -> bool:
    """Both a mapping: a method's own section, and a layer's top-level values for it."""
    return isinstance(mine, dict) and isinstance(given, dict)


def _read_yaml(file: Path) -> dict[str, Any]:
    """The top-level mapping of a YAML config file; anything else is one ConfigError line."""
    try:
        data = yaml.load(file.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
    except UnicodeDecodeError as err:
        raise ConfigError(f"{file}: not UTF-8 text (byte {err.start})") from None
    except OSError as err:
        raise ConfigError(f"{file}: cannot read ({err.strerror})") from None
    except Exception as err:  # not valid YAML (see above _TextDates)
        reason = "nested too deeply" if isinstance(err, RecursionError) else _first_line(err)
        raise ConfigError(f"{file}: not valid YAML ({reason})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{file}: expected a mapping of config keys at the top level")
    return data


def dump_config(cfg: Config) -> str:
    """The resolved config as YAML (written next to every run's outputs)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
