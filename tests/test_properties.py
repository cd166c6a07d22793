"""Property tests (hypothesis): whatever a user types or a file holds, the config parser and the
data readers answer with a result or their one-line refusal (ConfigError, DataError), never
another exception; and what they accept reads back the same.

Settings, in one place (``SETTINGS``): at most 150 examples a property, no deadline (the first
example pays for imports), ``derandomize=True`` (the examples come from a fixed seed: every run,
here and in CI, tries the same ones, so a failure reproduces) and no example database (nothing
is written under .hypothesis/). Each property that found a bug keeps that input as an
``@example``, so the bug stays covered whatever hypothesis draws.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from declora.config import CONFIG_DIR, Config, ConfigError, dump_config, load_config
from declora.learning.dataset import Rows, load_rows
from declora.learning.sources import DataError, read_table

SETTINGS = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def config_keys(model: type[BaseModel] = Config, prefix: str = "") -> list[str]:
    """Every dotted key of the config, sections included (``lora``, ``lora.rank``, ...)."""
    keys = []
    for name, field in model.model_fields.items():
        keys.append(prefix + name)
        sub = field.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            keys += config_keys(sub, f"{prefix}{name}.")
    return keys


KEYS = [
    *config_keys(),
    "per_method.dec-lora.lr",
    "per_method.local.gossip_steps",
    "per_method.nope.lr",
    "lora..rank",
    "nodes.x",
    " nodes ",
]
# values that have tripped YAML parsers and validators: dates (valid or not), explicit tags,
# aliases, merge keys, special floats, huge integers, deep nesting, unclosed brackets
TRICKY = [
    ".nan", ".inf", "-.inf", "1e999", "nan", "NaN", "10" * 40, "-0", "0x1F", "0o17", "1_000",
    "2024-01-05", "2024-02-30", "2024-13-45 10:00", "!!timestamp x", "!!float abc",
    "!!int 0xZZ", "!!bool maybe", "!!binary aGk=", "!!set {a, b}", "!!python/name:os.system",
    "&a [*a]", "<<: {nodes: 4}", "{? [1, 2] : 3}", "[" * 3000, "[" * 3000 + "]" * 3000,
    "{a: [1,", "'", "~", "null", "true", "yes", "[[0, 1], [1, 2]]", "{dec-lora: {lr: 0.1}}",
    "[dec-lora, dec-lora]", "\x00", "\t", "",
]  # fmt: skip
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(),
    st.text(max_size=12),
)
trees = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(max_size=6) | st.sampled_from(KEYS), inner, max_size=3)
    ),
    max_leaves=8,
)
values = st.one_of(
    st.text(max_size=30),
    st.sampled_from(TRICKY),
    trees.map(lambda v: yaml.safe_dump(v, default_flow_style=True).strip()),
    scalars.map(str),
)
keys = st.one_of(st.sampled_from(KEYS), st.text(max_size=15))
overrides = st.lists(
    st.one_of(st.builds(lambda k, v: f"{k}={v}", keys, values), st.text(max_size=20)),
    max_size=4,
)


def config_or_refusal(path: str | None, items: list[str]) -> Config | None:
    """The property every caller checks: a Config, or None for a ConfigError."""
    try:
        cfg = load_config(path, items)
    except ConfigError as err:
        assert "\n" not in str(err)
        return None
    assert isinstance(cfg, Config)
    return cfg


@SETTINGS
@given(overrides)
@example(["out=2024-02-30"])  # an impossible date: PyYAML raised ValueError
@example(["nodes=!!bool maybe"])  # KeyError from PyYAML's bool constructor
@example(["nodes=" + "[" * 3000 + "]" * 3000])  # RecursionError
def test_any_overrides_give_a_config_or_one_line(items):
    config_or_refusal(None, items)


def quoted(text: str) -> str:
    """``text`` as a YAML single-quoted scalar."""
    return "'" + text.replace("'", "''") + "'"


numbers = st.floats(1e-6, 10).map(repr)  # 1e-06 is text to YAML 1.1; pydantic reads the number
names = st.text(max_size=16)
# overrides that mostly load, so that what loads can be written and read back
VALID = {
    "nodes": st.integers(1, 64).map(str),
    "lora.rank": st.integers(1, 128).map(str),
    "lora.targets": st.lists(names.map(quoted), min_size=1, max_size=3).map(
        lambda t: f"[{', '.join(t)}]"
    ),
    "lr": numbers,
    "per_method.dec-lora.lr": numbers,
    "per_method.local.schedule": st.sampled_from(["constant", "linear", "cosine"]),
    "warmup": st.floats(0, 0.99).map(str),
    "seeds": st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=4, unique=True).map(str),
    "methods": st.lists(
        st.sampled_from(["dec-lora", "centralized", "local"]), min_size=1, unique=True
    ).map(lambda m: f"[{', '.join(m)}]"),
    "topology.kind": st.sampled_from(["ring", "star", "complete", "grid", "erdos_renyi"]),
    "compression.ratio": st.floats(0.001, 1).map(str),
    "out": st.one_of(names, names.map(quoted), st.sampled_from(["2024-01-05", "2024-02-30"])),
    "data.path": names.map(quoted),
    "data.prompt_template": names.map(quoted),
}
valid_overrides = st.lists(
    st.sampled_from(sorted(VALID)).flatmap(lambda k: VALID[k].map(lambda v: f"{k}={v}")),
    max_size=5,
)


@SETTINGS
@given(valid_overrides)
@example(["out=2024-01-05"])  # a date-like folder name stays a name
def test_what_loads_reads_back_from_its_config_yaml(tmp_path, items):
    """Every run writes config.yaml; declora tune and launch read it back as the same config."""
    cfg = config_or_refusal(None, items)
    assume(cfg is not None)
    saved = tmp_path / "config.yaml"
    saved.write_text(dump_config(cfg))
    assert load_config(str(saved)) == cfg


def mutated(original: bytes) -> st.SearchStrategy[bytes]:
    """``original`` with a few bytes inserted, deleted or replaced, or cut short."""

    def apply(edits: list[tuple[int, int, bytes]], cut: int | None) -> bytes:
        data = bytearray(original)
        for kind, at, new in edits:
            at %= len(data) + 1
            if kind == 0:
                data[at:at] = new
            elif kind == 1:
                del data[at : at + len(new)]
            else:
                data[at : at + len(new)] = new
        return bytes(data if cut is None else data[:cut])

    edit = st.tuples(st.integers(0, 2), st.integers(0, 10**6), st.binary(min_size=1, max_size=4))
    return st.builds(apply, st.lists(edit, min_size=1, max_size=4), st.none() | st.integers(0, 400))


BUILTIN = [p.read_bytes() for p in sorted(CONFIG_DIR.glob("*.yaml"))]
config_files = st.one_of(
    st.binary(max_size=200),
    st.text(max_size=200).map(str.encode),
    st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), trees, max_size=5).map(
        lambda d: yaml.safe_dump(d).encode()
    ),
    st.lists(st.builds(lambda k, v: f"{k}: {v}", st.sampled_from(KEYS), values), max_size=6).map(
        lambda lines: "\n".join(lines).encode("utf-8", "surrogatepass")
    ),
    st.sampled_from(BUILTIN).flatmap(mutated),
)


@SETTINGS
@given(config_files)
@example(b"[1]: 2\n")  # an unhashable key: TypeError from the duplicate-key check
@example(b"nodes: !!timestamp 2024-13-45\n")  # ValueError
@example(b"nodes: " + b"[" * 3000)  # RecursionError
def test_any_config_file_gives_a_config_or_one_line(tmp_path, content):
    path = tmp_path / "c.yaml"
    path.write_bytes(content)
    config_or_refusal(str(path), [])


@SETTINGS
@given(st.text(max_size=300))
@example("a" * 5000)  # a name too long for the file system: OSError
def test_any_config_name_gives_a_config_or_one_line(name):
    config_or_refusal(name, [])


def test_yaml_merge_keys_share_settings(tmp_path):
    """The duplicate-key check let no merge key through ('could not determine a constructor')."""
    path = tmp_path / "c.yaml"
    path.write_text(
        "common: &c {lr: 0.05, schedule: cosine}\n"
        "per_method:\n  dec-lora: {<<: *c, gossip_steps: 2}\n  local: {<<: *c, lr: 0.01}\n"
    )
    with pytest.raises(ConfigError, match="unknown config key 'common'"):
        load_config(str(path))
    path.write_text(
        "per_method:\n  dec-lora: &c {lr: 0.05, schedule: cosine}\n  local: {<<: *c, lr: 0.01}\n"
    )
    cfg = load_config(str(path))
    assert cfg.per_method["local"].lr == 0.01 and cfg.per_method["local"].schedule == "cosine"


# ------------------------------------------------------------------------------------- data

SUFFIXES = [".csv", ".jsonl", ".json", ".txt"]
ENCODINGS = ["utf-8", "cp1252", "utf-16", "idna", "base64", "no-such-codec"]
labels = st.one_of(
    st.integers(-3, 3),
    st.sampled_from(["pos", "neg", " 1", "1.0", "nan", "", "inf", "1e400", None]),
    st.floats(allow_nan=True),
    st.text(max_size=4),
    trees,
)
records = st.lists(
    st.fixed_dictionaries({"text": trees | st.text(max_size=20), "label": labels})
    | st.dictionaries(st.sampled_from(["text", "label", "x"]) | st.text(max_size=4), trees),
    max_size=12,
)


def as_csv(rows: list[list[str]]) -> bytes:
    out = io.StringIO(newline="")
    csv.writer(out).writerows(rows)
    return out.getvalue().encode("utf-8", "surrogatepass")


VALID_CSV = as_csv([["text", "label"], *([f"row {i}", str(i % 2)] for i in range(8))])
VALID_JSONL = "".join(json.dumps({"text": f"row {i}", "label": i % 2}) + "\n" for i in range(8))
data_files = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=300).map(lambda t: t.encode("utf-8", "surrogatepass")),
    records.map(lambda rs: "".join(json.dumps(r) + "\n" for r in rs).encode()),
    records.map(lambda rs: json.dumps(rs, ensure_ascii=False).encode("utf-8", "surrogatepass")),
    st.lists(st.lists(st.text(max_size=8), max_size=4), max_size=12).map(as_csv),
    st.sampled_from([VALID_CSV, VALID_JSONL.encode()]).flatmap(mutated),
    st.sampled_from(["[" * 5000, "{" * 5000, '{"text": "a", "label": ' + "9" * 5000 + "}"]).map(
        str.encode
    ),
)


def rows_or_refusal(path: Path, encoding: str = "utf-8") -> Rows | None:
    """read_table's rows and load_rows' result, or None for a one-line refusal."""
    try:
        rows, where = read_table(str(path), encoding)
        assert len(rows) == len(where) and all(isinstance(r, dict) for r in rows)
        cfg = load_config(
            None,
            [
                f"data.path={path}",
                "data.test_size=1",
                "data.val_size=1",
                f"data.encoding={encoding}",
            ],
        )
        return load_rows(cfg)
    except (DataError, ConfigError) as err:
        assert "\n" not in str(err)
        return None


@SETTINGS
@given(data_files, st.sampled_from(SUFFIXES), st.sampled_from(ENCODINGS))
@example(b"[" * 5000, ".json", "utf-8")  # RecursionError from json
@example(b'{"text": "a", "label": ' + b"9" * 5000 + b"}", ".jsonl", "utf-8")  # ValueError
@example(b"text,label\nabc,1\n", ".csv", "idna")  # UnicodeError that is no UnicodeDecodeError
def test_any_data_file_gives_rows_or_one_line(tmp_path, content, suffix, encoding):
    path = tmp_path / f"data{suffix}"
    path.write_bytes(content)
    rows = rows_or_refusal(path, encoding)
    if rows is not None:
        assert len(rows.texts) == len(rows.labels) == len(rows.rows)
        assert len(rows.names) >= 2 and set(rows.labels.tolist()) <= set(range(len(rows.names)))


def test_a_data_path_too_long_for_the_file_system_is_one_line():
    with pytest.raises(DataError, match="file not found"):
        read_table("a" * 5000 + ".csv")


texts = st.text(st.characters(exclude_categories=["Cs"]), max_size=20)
tables = st.lists(
    st.tuples(texts, st.sampled_from([0, 1, 2, "pos", "neg"])), min_size=2, max_size=12
).map(lambda rows: [(rows[0][0], 0), (rows[1][0], 1), *rows[2:], ("last", 0)])


def write_forms(tmp_path: Path, table, bom: bool, crlf: bool) -> list[Path]:
    """The same rows as CSV, JSON lines (non-ASCII kept as is, as many tools write it) and a
    JSON array; with a UTF-8 byte-order mark (Excel's "CSV UTF-8") and Windows line ends."""
    end = "\r\n" if crlf else "\n"
    csv_text = io.StringIO(newline="")
    # with "\n" line ends the csv writer leaves a lone "\r" unquoted, which no reader can tell
    # from a line end: quote every field then
    quoting = csv.QUOTE_MINIMAL if crlf else csv.QUOTE_ALL
    writer = csv.writer(csv_text, lineterminator=end, quoting=quoting)
    writer.writerows([("text", "label"), *table])
    objects = [{"text": t, "label": y} for t, y in table]
    jsonl = "".join(json.dumps(o, ensure_ascii=False) + end for o in objects)
    forms = {"t.csv": csv_text.getvalue(), "t.jsonl": jsonl, "t.json": json.dumps(objects)}
    paths = []
    for name, text in forms.items():
        paths.append(tmp_path / name)
        paths[-1].write_bytes(("\ufeff" if bom else "").encode() + text.encode())
    return paths


@SETTINGS
@given(tables, st.booleans(), st.booleans())
@example([("a\u2028b", 0), ("c", 1), ("last", 0)], False, False)  # JSON allows U+2028 raw
@example([("a", 0), ("b", 1), ("last", 0)], True, False)  # the BOM became part of 'text'
def test_csv_jsonl_and_json_give_the_same_rows(tmp_path, table, bom, crlf):
    read = [rows_or_refusal(p) for p in write_forms(tmp_path, table, bom, crlf)]
    assert all(r is not None for r in read), "a valid table was refused"
    first = read[0]
    for other in read[1:]:
        assert other.texts == first.texts and other.names == first.names
        assert (other.labels == first.labels).all()
    assert first.texts == [t for t, _ in table]
