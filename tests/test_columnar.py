"""Parquet and Arrow sources: the same rows as the CSV they were written from, whatever the
container (row groups, a Spark folder of parts, an Arrow file or stream, a ``save_to_disk``
folder, per-site files); bad files refused in one line."""

from __future__ import annotations

import functools
import os

import numpy as np
import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st

from declora.config import load_config
from declora.jobs.survey import survey
from declora.learning.columnar import read_rows
from declora.learning.dataset import load_rows
from declora.learning.sources import DataError, read_table
from tests.helpers import refuses_data, synthetic_rows, write_csv
from tests.test_properties import SETTINGS

SAVED = "tests/data/saved_dataset"  # written by datasets 5.2.0 save_to_disk (a DatasetDict)
COLUMNS = {"data.text_column": "text", "data.label_column": "label"}


def table_of(rows: list[dict]) -> pa.Table:
    """The rows as Arrow columns, with a wide column no config names (embeddings)."""
    return pa.table(
        {
            "id": list(range(len(rows))),
            "text": [r["text"] for r in rows],
            "label": [r["label"] for r in rows],
            "embedding": [[0.5] * 8 for _ in rows],
        }
    )


def write_stream(path, table: pa.Table) -> None:
    """An Arrow IPC stream, as datasets writes its shards."""
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
        for batch in table.to_batches(max_chunksize=100):
            w.write_batch(batch)


def spark_folder(path, table: pa.Table):
    """Parts as Spark writes them, with its marker files beside them."""
    path.mkdir()
    pq.write_table(table.slice(0, 200), path / "part-00000-x.snappy.parquet")
    pq.write_table(table.slice(200), path / "part-00001-x.snappy.parquet")
    (path / "_SUCCESS").write_text("")
    (path / ".part-00000-x.snappy.parquet.crc").write_bytes(b"\0")
    return path


def cfg_for(path, *extra):
    args = [f"data.path={path}", "data.test_size=40", "data.val_size=40", *extra]
    return load_config(None, args)


@pytest.fixture(scope="module")
def containers(tmp_path_factory):
    """The same 480 rows in every container: {name: path}."""
    tmp = tmp_path_factory.mktemp("columnar")
    rows = synthetic_rows(480, 5)
    table = table_of(rows)
    pq.write_table(table, tmp / "rows.parquet", row_group_size=64)  # 8 row groups
    feather.write_feather(table, tmp / "rows.feather")
    write_stream(tmp / "rows.arrow", table)
    pq.write_table(table, tmp / "export.csv")  # Parquet bytes under a CSV name
    return {
        "csv": write_csv(tmp / "rows.csv", rows),
        "parquet": tmp / "rows.parquet",
        "feather": tmp / "rows.feather",
        "stream": tmp / "rows.arrow",
        "spark": spark_folder(tmp / "spark.parquet", table),
        "parts": spark_folder(tmp / "parts", table),  # a folder of parts under any name
        "misnamed": tmp / "export.csv",
    }


@pytest.mark.parametrize("name", ["parquet", "feather", "stream", "spark", "parts", "misnamed"])
def test_every_container_gives_the_csv_rows_and_split(containers, name):
    want, got = load_rows(cfg_for(containers["csv"])), load_rows(cfg_for(containers[name]))
    assert got.texts == want.texts
    assert np.array_equal(got.labels, want.labels) and got.names == want.names
    for split in ("train_idx", "val_idx", "test_idx"):
        assert np.array_equal(getattr(got, split), getattr(want, split))
    assert set(got.rows[0]) == {"text", "label"}  # the embedding column was never read


def test_a_save_to_disk_folder_is_read_without_datasets():
    rows, where = read_rows(SAVED, "utf-8", COLUMNS)
    assert len(rows) == 50  # the train split (its test split holds 10)
    assert rows[0] == {"text": "quite terrible and actors actors", "label": 0}
    assert where[49] == f"{SAVED}: row 50" and len(where) == 50
    assert load_rows(cfg_for(SAVED, "data.test_size=5", "data.val_size=5")).names == ["0", "1"]


def test_per_site_parquet_files_survey_as_their_csv(tmp_path):
    for node in range(2):
        rows = synthetic_rows(60, node)
        write_csv(tmp_path / f"site_{node}.csv", rows)
        pq.write_table(table_of(rows), tmp_path / f"site_{node}.parquet")
    args = ["nodes=2", "data.labels=[negative,positive]", "data.eval_size=5"]
    csv = survey(load_config(None, [f"data.path={tmp_path}/site_{{node}}.csv", *args]))
    parquet = survey(load_config(None, [f"data.path={tmp_path}/site_{{node}}.parquet", *args]))
    assert parquet["nodes"] == csv["nodes"]


def _not_parquet(tmp):
    (tmp / "x.parquet").write_text("text,label\na,1\n")
    return tmp / "x.parquet"


def _folder(tmp):
    (tmp / "x.parquet").mkdir()
    return tmp / "x.parquet"


def _fifo(tmp):
    os.mkfifo(tmp / "x.parquet")  # opening it would wait for a writer
    return tmp / "x.parquet"


def _not_arrow(tmp):
    (tmp / "x.arrow").write_text("hello")
    return tmp / "x.arrow"


def _table(tmp, **columns):
    path = tmp / "x.parquet"
    pq.write_table(pa.table(columns), path)
    return path


def _twice(tmp):
    path = tmp / "x.parquet"
    pq.write_table(pa.table([TEXTS, TEXTS, LABELS], names=["text", "text", "label"]), path)
    return path


TEXTS = ["a b", "c d", "e f", "g h"] * 10
LABELS = [0, 1] * 20


@pytest.mark.parametrize(
    ("make", "extra", "message"),
    [
        (_not_parquet, [], "x.parquet: not a Parquet file (Parquet magic bytes not found in footer)"),
        (_folder, [], "x.parquet is a folder with no Parquet files in it"),
        (_fifo, [], "x.parquet: not a regular file"),
        (lambda t: _table(t, body=TEXTS, label=LABELS), [], "column 'text' not found in"),
        (lambda t: _table(t, text=[[w] for w in TEXTS], label=LABELS), [], "column 'text' (data.text_column) holds list<element: string>, not text"),
        (lambda t: _table(t, text=TEXTS, label=[[x] for x in LABELS]), [], "column 'label' (data.label_column) holds list<element: int64>, not a class"),
        (lambda t: _table(t, text=TEXTS[:7] + [None] + TEXTS[8:], label=LABELS), [], "x.parquet: row 8: no text in column 'text' (null)"),
        (lambda t: _table(t, text=TEXTS, label=LABELS[:3] + [None] + LABELS[4:]), [], "x.parquet: row 4: no label in column 'label' (null)"),
        (_not_arrow, [], "x.arrow: not an Arrow file"),
        (_twice, [], "x.parquet: column 'text' appears twice"),
    ],
)  # fmt: skip
def test_bad_columnar_input_is_one_line_and_nothing_is_written(
    tmp_path, capsys, make, extra, message
):
    refuses_data(make(tmp_path), tmp_path, capsys, extra, message)


def test_text_files_are_still_read_as_text(containers):
    rows, _ = read_rows(str(containers["csv"]), "utf-8", COLUMNS)
    assert rows == read_table(str(containers["csv"]))[0]


@functools.cache
def small_file(suffix: str) -> bytes:
    """The bytes of a small Parquet file or Arrow stream: what the property damages."""
    table = table_of(synthetic_rows(40, 2))
    sink = pa.BufferOutputStream()
    if suffix == ".parquet":
        pq.write_table(table, sink, row_group_size=16)
    else:
        with pa.ipc.new_stream(sink, table.schema) as w:
            w.write_table(table, max_chunksize=16)
    return sink.getvalue().to_pybytes()


@SETTINGS
@given(
    suffix=st.sampled_from([".parquet", ".arrow"]),
    cut=st.integers(0, 10_000),
    flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(1, 255)), max_size=4),
)
def test_a_damaged_file_gives_rows_or_one_data_error(tmp_path, suffix, cut, flips):
    data = bytearray(small_file(suffix))
    for at, mask in flips:
        data[at % len(data)] ^= mask
    path = tmp_path / f"d{suffix}"
    path.write_bytes(bytes(data[: max(cut, 1)] if cut < len(data) else data))
    try:
        rows, where = read_rows(str(path), "utf-8", COLUMNS)
    except DataError as err:
        assert "\n" not in str(err)
    else:
        assert len(rows) == len(where)
