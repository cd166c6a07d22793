"""Columnar sources, read with pyarrow alone: a Parquet file (or a folder of Parquet parts, as
Spark and Dask write one), an Arrow IPC file (``.arrow`` / ``.feather``), or a folder that
Hugging Face ``datasets.save_to_disk`` wrote (its ``train`` split, else its first).

The columns the config names are checked against the schema before a row is read: each must be
there, text columns must hold strings, the label column integers, strings or booleans, and no
value may be null. Then the file is read batch by batch (a Parquet row group at a time) and
only those columns become Python values, so a wide export with embeddings or images beside the
text costs no more than its text. Every other source goes to :func:`declora.learning.sources.read_table`.

A ``save_to_disk`` folder is Arrow IPC streams named in its ``state.json``; reading them needs
no ``datasets`` (whose dependencies, and hub client, a site that only reads its own files has
no use for). Class names of a ``ClassLabel`` stay integers, as ``datasets`` stores them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from declora.learning.sources import DataError, read_table

PARQUET = (".parquet", ".pq")
ARROW = (".arrow", ".feather", ".ipc")
MAGIC = {b"PAR1": "parquet", b"ARROW1": "arrow"}  # a file's first bytes, whatever its name
LABEL = "data.label_column"  # the one column that is not text
BATCH_ROWS = 65_536


class Places(Sequence):
    """Where each row was read, ``path: row k`` (1-based), made when asked: a million rows
    need no million strings."""

    def __init__(self, path: str, n: int):
        self.path, self.n = path, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, k):
        if isinstance(k, slice):
            return [self[i] for i in range(*k.indices(self.n))]
        if not -self.n <= k < self.n:
            raise IndexError(k)
        return f"{self.path}: row {k % self.n + 1}"


def read_rows(path: str, encoding: str, columns: dict[str, str]) -> tuple[list[dict], Sequence]:
    """Rows (dicts) of any source and where each was read. ``columns``: config key -> column
    (``{"data.text_column": "text", ...}``); a columnar source reads only those, a text file
    every column (:func:`~declora.learning.sources.read_table`)."""
    kind = kind_of(path)
    if kind is None:
        return read_table(path, encoding)
    batches = _open(Path(path), kind)
    return _collect(path, batches, columns)


def kind_of(path: str) -> str | None:
    """'parquet', 'arrow' or 'saved' (a ``save_to_disk`` folder); None for any other source."""
    p = Path(path)
    try:
        if p.is_dir():
            if _saved_split(p) is not None:
                return "saved"
            if next(p.glob("*.parquet"), None) is not None:  # Spark's or Dask's parts
                return "parquet"
        if p.is_file():  # a regular file only: a FIFO would block the read
            with p.open("rb") as f:
                head = f.read(6)
            for magic, kind in MAGIC.items():
                if head.startswith(magic):
                    return kind
    except OSError:  # a name too long, a file that cannot be opened: read_table says why
        return None
    suffix = p.suffix.lower()
    return "parquet" if suffix in PARQUET else "arrow" if suffix in ARROW else None


def _saved_split(folder: Path) -> Path | None:
    """The folder of the split to read in a ``save_to_disk`` folder: the folder itself (one
    Dataset: ``state.json``), or its ``train`` split (a DatasetDict: ``dataset_dict.json``),
    else its first."""
    if (folder / "state.json").is_file():
        return folder
    listing = folder / "dataset_dict.json"
    if not listing.is_file():
        return None
    try:
        splits = json.loads(listing.read_text(encoding="utf-8"))["splits"]
        return folder / ("train" if "train" in splits else splits[0])
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        raise DataError(f"data.path={folder}: a broken dataset_dict.json") from None


def _open(path: Path, kind: str):
    """(schema, iterator of record batches) of a columnar source; one DataError line when it
    is not what its name or first bytes say."""
    import pyarrow as pa

    if path.exists() and not (path.is_file() or path.is_dir()):  # opening a FIFO would block
        raise DataError(f"data.path={path}: not a regular file")
    try:
        if kind == "parquet":
            return _parquet(path)
        if kind == "arrow":
            return _ipc(path)
        return _saved(path)
    except FileNotFoundError:
        raise DataError(f"data.path={path}: file not found") from None
    except IsADirectoryError:
        raise DataError(f"data.path={path} is a folder, not an Arrow file") from None
    except (pa.ArrowException, OSError) as err:
        what = "a Parquet file" if kind == "parquet" else "an Arrow file"
        raise DataError(f"data.path={path}: not {what} ({_reason(err)})") from None


def _reason(err: Exception) -> str:
    """pyarrow's reason: the last clause of its first sentence ("Parquet magic bytes not
    found in footer"), without the file name it repeats."""
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    return text.split(". ")[0].removesuffix(".").rsplit(": ", 1)[-1]


def _parquet(path: Path):
    """A Parquet file or folder of parts, one row group at a time."""
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    if not path.is_dir():
        file = pq.ParquetFile(path)
        return file.schema_arrow, lambda cols: file.iter_batches(BATCH_ROWS, columns=cols)
    data = ds.dataset(path, format="parquet")  # parts named _* or .* (Spark's) are skipped
    if not data.files:
        raise DataError(f"data.path={path} is a folder with no Parquet files in it")
    return data.schema, lambda cols: data.to_batches(columns=cols, batch_size=BATCH_ROWS)


def _ipc(path: Path):
    """An Arrow IPC file (random access) or stream (as ``datasets`` writes its shards)."""
    import pyarrow as pa

    if path.is_dir():
        raise IsADirectoryError(path)
    source = pa.memory_map(str(path))
    try:
        reader = pa.ipc.open_file(source)
        batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
        return reader.schema, lambda cols: (b.select(cols) for b in batches)
    except pa.ArrowInvalid:
        source.seek(0)
    stream = pa.ipc.open_stream(source)
    return stream.schema, lambda cols: (b.select(cols) for b in stream)


def _saved(folder: Path):
    """The shards of a ``save_to_disk`` split, in order (its ``state.json``)."""
    split = _saved_split(folder)
    try:
        state = json.loads((split / "state.json").read_text(encoding="utf-8"))
        shards = [split / f["filename"] for f in state["_data_files"]]
    except (ValueError, KeyError, TypeError):
        raise DataError(f"data.path={folder}: a broken state.json in {split}") from None
    if not shards:
        raise DataError(f"data.path={folder}: no rows")
    opened = [_ipc(s) for s in shards]
    schema = opened[0][0]

    def batches(cols):
        for _, read in opened:
            yield from read(cols)

    return schema, batches


def _collect(path: str, opened, columns: dict[str, str]) -> tuple[list[dict], Places]:
    """The named columns' values, batch by batch, as one dict per row."""
    import pyarrow as pa

    schema, read = opened
    names = list(dict.fromkeys(columns.values()))
    rows: list[dict] = []
    try:
        _check_schema(path, schema, columns)
        for batch in read(names):
            _check_nulls(path, batch, columns, len(rows))
            values = [batch.column(c).to_pylist() for c in names]
            rows.extend(dict(zip(names, row)) for row in zip(*values))
    except (pa.ArrowException, OSError, UnicodeDecodeError) as err:  # a damaged page or string
        raise DataError(f"data.path={path}: cannot read ({_reason(err)})") from None
    return rows, Places(path, len(rows))


def _check_schema(path: str, schema, columns: dict[str, str]) -> None:
    for key, col in columns.items():
        if col not in schema.names:
            raise DataError(
                f"data: column '{col}' not found in {path} (columns: {', '.join(schema.names)})"
            )
        if schema.names.count(col) > 1:
            raise DataError(f"{path}: column '{col}' appears twice")
        kind = schema.field(col).type
        if not (_is_label(kind) if key == LABEL else _is_text(kind)):
            want = "a class (integers or strings)" if key == LABEL else "text"
            raise DataError(f"{path}: column '{col}' ({key}) holds {kind}, not {want}")


def _is_text(kind) -> bool:
    import pyarrow as pa

    if pa.types.is_dictionary(kind):  # pandas' categorical columns
        kind = kind.value_type
    t = pa.types
    return t.is_string(kind) or t.is_large_string(kind) or t.is_string_view(kind)


def _is_label(kind) -> bool:
    import pyarrow as pa

    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    t = pa.types
    return _is_text(kind) or t.is_integer(kind) or t.is_boolean(kind) or t.is_floating(kind)


def _check_nulls(path: str, batch, columns: dict[str, str], before: int) -> None:
    """The first null of a named column in this batch, as one line naming its row."""
    for key, col in columns.items():
        values = batch.column(col)
        if values.null_count:
            first = values.is_null().to_numpy(zero_copy_only=False).argmax()
            what = "label" if key == LABEL else "text"
            raise DataError(f"{path}: row {before + first + 1}: no {what} in column '{col}' (null)")
