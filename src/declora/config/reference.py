"""The configuration reference (``docs/reference/config.md``), generated from the fields of
:class:`~declora.config.schema.Config` and its sections, so that the page cannot drift from the
code: one table per section, each row a dotted key, its type with its bounds, its default and
its one-line help. Regenerate it with ``python -m declora.config.reference >
docs/reference/config.md`` (``tests/test_docs.py`` fails when the page is out of date)."""

from __future__ import annotations

import sys
import types
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from declora.config.schema import Config

COMMAND = "python -m declora.config.reference > docs/reference/config.md"
_LONG = 40  # a default longer than this is shown below its table, not in it


def config_reference() -> str:
    """The Markdown of ``docs/reference/config.md``: top-level keys first, then one table per
    section in the order :class:`Config` declares them."""
    lines = [
        "# Configuration reference",
        "",
        f"Generated from the pydantic fields in `src/declora/config/` by `{COMMAND}`.",
        "Do not edit this page by hand: change the field's `description` and run the command.",
        "",
        "Every key is set in a YAML file or on the command line as a dotted `key=value`",
        "override (`declora run lora.rank=4 topology.kind=complete`); values are read as YAML.",
        "`declora configs --fields` prints the same keys in the terminal.",
        "",
    ]
    lines += _table("Top-level keys", "", _plain_fields(Config), "")
    for name, field in Config.model_fields.items():
        section = _section_model(field.annotation)
        if section is None:
            continue
        prefix = f"{name}." if _is_model(field.annotation) else f"{name}.<{_placeholder(name)}>."
        intro = _doc(section) or field.description or ""
        lines += _table(f"`{prefix[:-1]}`", intro, _plain_fields(section), prefix)
        if not _is_model(field.annotation):  # a mapping of sections: its default below
            lines += _long_default(name, _plain_default(field))
    return "\n".join(lines).rstrip() + "\n"


def _table(title: str, intro: str, fields: dict[str, FieldInfo], prefix: str) -> list[str]:
    """A section's heading, its introduction, its table and any long defaults below it."""
    out = [f"## {title}", ""]
    if intro:
        out += [_cell(intro), ""]
    out += ["| key | type | default | description |", "|---|---|---|---|"]
    long: list[str] = []
    for name, field in fields.items():
        key = prefix + name
        value = _plain_default(field)
        default = _flow(value)
        if len(default) > _LONG:
            long += _long_default(key, value)
            default = "below the table"
        else:
            default = f"`{default}`"
        kind = _cell(_describe(field.annotation, field.metadata))
        out.append(f"| `{key}` | {kind} | {default} | {_cell(field.description or '')} |")
    return [*out, "", *long]


def _long_default(key: str, value: Any) -> list[str]:
    """A default too long for a cell, as a YAML block (a mapping one entry a line)."""
    if isinstance(value, dict):
        body = [f"{key}:", *(f"  {k}: {_flow(v)}" for k, v in value.items())]
    else:
        body = [f"{key}: {_flow(value)}"]
    return [f"Default of `{key}`:", "", "```yaml", *body, "```", ""]


def _plain_fields(model: type[BaseModel]) -> dict[str, FieldInfo]:
    """A model's fields that are values, not sections."""
    return {
        name: field
        for name, field in model.model_fields.items()
        if _section_model(field.annotation) is None
    }


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _section_model(annotation: Any) -> type[BaseModel] | None:
    """The section a field holds: a model, or the model of a mapping's values (``per_method``)."""
    if _is_model(annotation):
        return annotation
    if get_origin(annotation) is dict and _is_model(get_args(annotation)[1]):
        return get_args(annotation)[1]
    return None


def _placeholder(name: str) -> str:
    """What a mapping's key stands for: ``per_method`` maps a method to its settings."""
    return name.removeprefix("per_")


def _doc(model: type[BaseModel]) -> str:
    """A section's own docstring, on one line (empty when it has none of its own)."""
    doc = model.__dict__.get("__doc__") or ""
    return " ".join(doc.replace("``", "`").split())


def _describe(annotation: Any, metadata: list[Any]) -> str:
    """A readable type with the field's constraints, e.g. ``float in (0, 1]`` or
    ``int >= 1 | None``; an optional field's constraints apply to its value, not to None."""
    args = get_args(annotation)
    if _is_union(annotation) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        inner = rest[0] if len(rest) == 1 else Union[tuple(rest)]  # noqa: UP007
        return f"{_describe(inner, metadata)} | None"
    return _constrained(_type_name(annotation), metadata)


def _is_union(annotation: Any) -> bool:
    return get_origin(annotation) in (Union, types.UnionType)


def _type_name(annotation: Any) -> str:
    """``annotation`` as a reader writes it: ``one of a, b``, ``list[str]``, ``int >= 0``."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return _constrained(_type_name(args[0]), list(args[1:]))
    if origin is Literal:
        return "one of " + ", ".join(str(a) for a in args)
    if _is_union(annotation):
        return " | ".join("None" if a is type(None) else _type_name(a) for a in args)
    if origin in (list, tuple, dict):
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in args)}]"
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def _constrained(name: str, metadata: list[Any]) -> str:
    """``name`` with the bounds and lengths found in ``metadata`` (annotated-types objects, or
    a nested ``Field(...)``'s own metadata)."""
    found: dict[str, Any] = {}
    for item in metadata:
        for inner in item.metadata if isinstance(item, FieldInfo) else [item]:
            for attr in ("gt", "ge", "lt", "le", "min_length", "max_length"):
                if getattr(inner, attr, None) is not None:
                    found[attr] = getattr(inner, attr)
    low = ("(", found["gt"]) if "gt" in found else ("[", found["ge"]) if "ge" in found else None
    high = (")", found["lt"]) if "lt" in found else ("]", found["le"]) if "le" in found else None
    if low and high:
        name = f"{name} in {low[0]}{low[1]}, {high[1]}{high[0]}"
    elif low:
        name = f"{name} {'>' if low[0] == '(' else '>='} {low[1]}"
    elif high:
        name = f"{name} {'<' if high[0] == ')' else '<='} {high[1]}"
    if found.get("min_length") == 1:
        name = f"non-empty {name}"
    elif "min_length" in found:
        name = f"{name} (at least {found['min_length']} items)"
    if "max_length" in found:
        name = f"{name} (at most {found['max_length']} items)"
    return name


def _plain_default(field: FieldInfo) -> Any:
    """The default as plain data (a section's settings as a mapping, unset values left out)."""
    value = field.get_default(call_default_factory=True)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return _plain(value)


def _plain(value: Any) -> Any:
    return value.model_dump(exclude_none=True) if isinstance(value, BaseModel) else value


def _flow(value: Any) -> str:
    """``value`` in YAML's flow style, as a ``key=value`` override would give it."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_flow(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_flow(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if value == "":
        return '""'
    return str(value)


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return " ".join(text.split()).replace("|", "\\|").replace("<", "\\<")


def main() -> int:
    sys.stdout.write(config_reference())
    return 0


if __name__ == "__main__":
    sys.exit(main())
