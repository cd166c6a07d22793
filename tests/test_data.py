"""Data loading: formats, label mapping, the held-out split, and bad-data errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from declora.cli import main
from declora.config import load_config
from declora.learning.dataset import Sampler, load_rows
from declora.learning.sources import DataError, read_table
from declora.learning.tasks import TASKS, load_task_data
from tests.helpers import synthetic_rows


class FakeTokenizer:
    """One id per word: enough to test loading without a real vocabulary."""

    def __call__(self, texts, truncation=True, max_length=64):
        return {"input_ids": [[len(w) for w in t.split()][:max_length] or [0] for t in texts]}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def cfg_for(path, *extra):
    return load_config(None, [f"data.path={path}", "data.test_size=20", "data.val_size=20", *extra])


def test_csv_and_jsonl_give_the_same_dataset(tmp_path, tiny_csv):
    rows, _ = read_table(str(tiny_csv))
    jsonl = tmp_path / "d.jsonl"
    write_jsonl(jsonl, rows)
    a = load_task_data(cfg_for(tiny_csv), FakeTokenizer())
    b = load_task_data(cfg_for(jsonl), FakeTokenizer())
    for split in ("train", "val", "test"):
        assert getattr(a, split).input_ids == getattr(b, split).input_ids
    assert a.train.label_names == ["negative", "positive"]


def test_integer_labels_keep_numeric_order(tmp_path):
    rows = [{"text": f"w{i}", "label": i % 11} for i in range(200)]
    path = tmp_path / "d.jsonl"
    write_jsonl(path, rows)
    train = load_task_data(cfg_for(path), FakeTokenizer()).train
    assert train.label_names == [str(i) for i in range(11)]
    assert set(train.labels.tolist()) == set(range(11))


def test_test_and_validation_rows_are_fixed_and_disjoint_from_training(tiny_csv):
    cfg = cfg_for(tiny_csv, "data.test_size=30", "data.val_size=20", "seed=1")
    r = load_rows(cfg)
    ids = [set(r.train_idx.tolist()), set(r.val_idx.tolist()), set(r.test_idx.tolist())]
    assert [len(x) for x in ids] == [430, 20, 30]  # 480 rows, no id repeated within a split
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert set().union(*ids) == set(range(480))
    other = load_rows(cfg.model_copy(update={"seed": 2}))  # the run seed moves no held-out row
    assert np.array_equal(other.val_idx, r.val_idx) and np.array_equal(other.test_idx, r.test_idx)
    # the rows themselves are disjoint too, as the datasets hold them
    s = load_task_data(cfg, FakeTokenizer())
    assert (len(s.train), len(s.val), len(s.test)) == (430, 20, 30)
    assert np.array_equal(s.test.labels, r.labels[r.test_idx])
    assert np.array_equal(s.val.labels, r.labels[r.val_idx])
    limited = load_task_data(cfg_for(tiny_csv, "data.train_size=50"), FakeTokenizer()).train
    assert len(limited) == 50


def test_bundled_rotten_tomatoes_is_the_8530_sentences():
    rows, _ = read_table("bundled:rotten_tomatoes")
    assert len(rows) == 8530
    assert {r["label"] for r in rows} == {"0", "1"}


def test_sampler_cycles_through_every_row_before_repeating():
    s = Sampler(10, 4, seed=0)
    seen = np.concatenate([s.next() for _ in range(5)])  # 20 = two epochs
    assert sorted(seen[:10].tolist()) == list(range(10))
    assert sorted(seen[10:20].tolist()) == list(range(10))


def test_collate_pads_to_the_longest_row(tiny_csv):
    train = load_task_data(cfg_for(tiny_csv), FakeTokenizer()).train
    batch = TASKS["classification"]().collate(train, [0, 1, 2], pad_id=0)
    width = max(len(train.input_ids[i]) for i in range(3))
    assert batch["input_ids"].shape == (3, width)
    assert batch["attention_mask"].sum().item() == sum(len(train.input_ids[i]) for i in range(3))


def _empty(tmp_path):
    p = tmp_path / "empty.csv"
    p.write_text("")
    return p


def _header_only(tmp_path):
    p = tmp_path / "header.csv"
    p.write_text("text,label\n")
    return p


def _wrong_columns(tmp_path):
    p = tmp_path / "cols.csv"
    p.write_text("review,stars\nnice,1\nbad,0\n")
    return p


def _one_class(tmp_path):
    p = tmp_path / "one.jsonl"
    write_jsonl(p, [{"text": "a", "label": "x"}] * 50)
    return p


def _blank_labels(tmp_path):
    p = tmp_path / "blank.csv"
    p.write_text("text,label\n" + "a,\n" * 40)
    return p


def _broken_jsonl(tmp_path):
    p = tmp_path / "broken.jsonl"
    p.write_text('{"text": "a", "label": 1}\n{not json\n')
    return p


def _small(tmp_path):
    p = tmp_path / "small.jsonl"
    write_jsonl(p, synthetic_rows(30))
    return p


@pytest.mark.parametrize(
    ("make", "extra", "message"),
    [
        (_empty, [], "is empty"),
        (_header_only, [], "no rows"),
        (_wrong_columns, [], "column 'text' not found"),
        (_wrong_columns, ["data.text_column=review"], "column 'label' not found"),
        (_one_class, [], "at least 2 classes"),
        (_blank_labels, [], "blank.csv:2: no label in column 'label'"),
        (_broken_jsonl, [], "not a JSON object per line"),
        (_small, ["data.test_size=30", "data.val_size=30"], "leave no training rows"),
        (lambda tmp: tmp / "missing.csv", [], "file not found"),
        (lambda tmp: "bundled:wikipedia", [], "unknown bundled dataset"),
    ],
)
def test_bad_data_is_one_clear_line(tmp_path, make, extra, message):
    path = make(tmp_path)
    with pytest.raises(DataError, match=message):
        load_task_data(cfg_for(path, *extra), FakeTokenizer())


def test_node_without_data_is_refused_before_anything_is_written(tmp_path, tiny_overrides, capsys):
    small = tmp_path / "small.jsonl"
    write_jsonl(small, synthetic_rows(40))
    out = tmp_path / "never"
    args = [o for o in tiny_overrides if not o.startswith(("data.path", "out", "nodes"))]
    code = main(
        [
            "run",
            *args,
            f"data.path={small}",
            "data.test_size=10",
            "data.val_size=10",
            "nodes=40",
            f"out={out}",
        ]
    )
    assert code == 2
    assert "partition" in capsys.readouterr().err
    assert not out.exists()


# ---------------------------------------------------------------- files as they come in practice


def write(tmp_path, name: str, content) -> str:
    p = tmp_path / name
    p.write_bytes(content if isinstance(content, bytes) else content.encode())
    return str(p)


def rows_of(n: int, label=lambda i: i % 2) -> str:
    return "text,label\n" + "".join(f"row {i},{label(i)}\n" for i in range(n))


CP1252 = (
    "text,label\n" + "".join(f"caf\u00e9 cr\u00e8me {i},{i % 2}\n" for i in range(40))
).encode("cp1252")


@pytest.mark.parametrize(
    "name, content, extra, message",
    [
        ("latin.csv", CP1252, [], "latin.csv:2: not utf-8 text; perhaps"),
        ("latin.csv", CP1252, ["data.encoding=klingon"], "data.encoding=klingon: unknown encoding"),
        ("dup.csv", "text,label,text\n" + "a,1,b\n" * 40, [], "dup.csv:1: column 'text' appears twice"),
        ("list.jsonl", '{"text": "a", "label": 1}\n[1, 2]\n', [], "list.jsonl:2: expected a JSON object"),
        ("short.jsonl", '{"text": "a", "label": 1}\n{"label": 0}\n', [], "short.jsonl:2: no 'text' field"),
        ("nan.csv", rows_of(40, lambda i: "nan" if i == 7 else i % 2), [], "nan.csv:9: no label"),
        ("null.jsonl", "".join(f'{{"text": "r", "label": {"null" if i == 3 else i % 2}}}\n' for i in range(40)), [], "null.jsonl:4: no label"),
        ("bad.json", "[{\"text\": \"a\", \"label\": 1},\n oops]", [], "bad.json:2: not valid JSON"),
        ("same.csv", rows_of(40), ["data.label_column=text"], "both 'text'"),
    ],
)  # fmt: skip
def test_files_as_they_come_in_practice_give_one_line(
    tmp_path, capsys, name, content, extra, message
):
    path = write(tmp_path, name, content)
    args = [
        f"data.path={path}",
        "data.test_size=5",
        "data.val_size=5",
        f"out={tmp_path / 'out'}",
        *extra,
    ]
    assert main(["run", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and err.count("\n") == 0, err
    assert not (tmp_path / "out").exists()


def test_the_suggested_encoding_reads_the_file(tmp_path):
    path = write(tmp_path, "latin.csv", CP1252)
    rows = load_rows(
        load_config(
            None,
            [f"data.path={path}", "data.test_size=5", "data.val_size=5", "data.encoding=cp1252"],
        )
    )
    assert rows.texts[0] == "caf\u00e9 cr\u00e8me 0"


def test_numbers_are_one_class_by_value_in_numeric_order(tmp_path):
    labels = ["1", "1.0", " 1", "10", "2.0", "2", "10.0"] * 6
    content = "text,label\n" + "".join(f"r{i},{x}\n" for i, x in enumerate(labels))
    rows = load_rows(
        load_config(
            None,
            [
                f"data.path={write(tmp_path, 'n.csv', content)}",
                "data.test_size=2",
                "data.val_size=2",
            ],
        )
    )
    assert rows.names == ["1", "2", "10"]
    assert [rows.names[k] for k in rows.labels[:7]] == ["1", "1", "1", "10", "2", "2", "10"]


def test_a_json_array_and_long_fields_are_read(tmp_path):
    items = [{"text": "x" * 200_000 if i == 0 else f"r{i}", "label": i % 2} for i in range(20)]
    rows = load_rows(
        load_config(
            None,
            [
                f"data.path={write(tmp_path, 'a.json', json.dumps(items))}",
                "data.test_size=2",
                "data.val_size=2",
            ],
        )
    )
    assert len(rows.texts) == 20 and len(rows.texts[0]) == 200_000
    long_csv = rows_of(20).replace("row 0,", "x" * 200_000 + ",")
    rows = load_rows(
        load_config(
            None,
            [
                f"data.path={write(tmp_path, 'l.csv', long_csv)}",
                "data.test_size=2",
                "data.val_size=2",
            ],
        )
    )
    assert len(rows.texts[0]) == 200_000
