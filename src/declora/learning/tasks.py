"""Tasks as values: what a classification task and a causal-LM task each provide.

A task turns rows into a :class:`~declora.learning.dataset.Dataset`, rows of it into training batches and
fixed evaluation batches, and scores an adapter on those. The runtimes pick one task from
``cfg.task`` (:func:`task_for`) and never ask what kind of batch they hold.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, get_args

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from declora.algorithms import scores
from declora.algorithms.tensors import State
from declora.config import Config, TaskName
from declora.learning import causal_lm as lm
from declora.learning.adapters import autocast
from declora.learning.dataset import Dataset, Splits, load_dataset, pad_right, pair_texts
from declora.learning.devices import device_of, to_device

EVAL_BATCH = 64  # rows per classification eval batch


class Task(Protocol):
    """What a task gives the engine (see :class:`Classification` and :class:`CausalLM`)."""

    def dataset(self, cfg: Config, tok, rows, texts, labels, names) -> Dataset: ...

    def collate(self, ds: Dataset, idx, pad_id: int) -> dict[str, torch.Tensor]: ...

    def eval_batches(self, ds: Dataset, pad_id: int, limit: int | None = None) -> list[dict]: ...

    def evaluate(self, model: nn.Module, params: State, batches: list[dict]) -> dict: ...

    def loss_terms(self, out, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Each row's loss sum and the count it averages over (rows,): the training loss of
        any set of rows is sum(sums) / sum(counts), as the model's own loss computes it."""
        ...

    def example_losses(self, out, batch: dict) -> torch.Tensor:
        """Each row's own training loss, shape (rows,): DP-SGD clips each row's gradient."""
        ...


@dataclass(frozen=True)
class Classification:
    """An encoder with a task head: cross-entropy over the classes; accuracy and macro-F1.
    Evaluated in config ``precision``."""

    precision: str = "fp32"

    def dataset(self, cfg: Config, tok, rows, texts, labels, names) -> Dataset:
        """Token ids of each text, or of each pair as the model was pre-trained on pairs
        ([CLS] a [SEP] b [SEP] for BERT, with token type ids where the tokenizer gives them)."""
        second = pair_texts(cfg, rows)
        if second is None:
            ids = tok(texts, truncation=True, max_length=cfg.max_length)["input_ids"]
            return Dataset(ids, labels, names)
        enc = tok(texts, second, truncation="longest_first", max_length=cfg.max_length)
        return Dataset(enc["input_ids"], labels, names, token_types=enc.get("token_type_ids"))

    def collate(self, ds: Dataset, idx, pad_id: int) -> dict[str, torch.Tensor]:
        """Pad to the batch's longest row (not max_length): short sentences train ~1.5x faster."""
        ids, mask = pad_right([ds.input_ids[i] for i in idx], pad_id)
        batch = {"input_ids": ids, "attention_mask": mask}
        if ds.token_types is not None:  # padding is type 0, as the tokenizer pads
            batch["token_type_ids"] = pad_right([ds.token_types[i] for i in idx], 0)[0]
        batch["labels"] = torch.from_numpy(ds.labels[idx])
        return batch

    def eval_batches(self, ds: Dataset, pad_id: int, limit: int | None = None) -> list[dict]:
        """Fixed batches of the first ``limit`` rows, sorted by length (less padding)."""
        n = len(ds) if limit is None else min(limit, len(ds))
        order = sorted(range(n), key=lambda i: len(ds.input_ids[i]))
        return [
            self.collate(ds, order[i : i + EVAL_BATCH], pad_id) for i in range(0, n, EVAL_BATCH)
        ]

    @torch.inference_mode()
    def counts(self, model: nn.Module, params: State, batches: list[dict]) -> np.ndarray:
        """One adapter's evaluation on fixed batches as pooled counts (:func:`scores.counts`),
        on the model's device."""
        model.eval()
        device = device_of(model)
        params, preds, golds, loss_sum = to_device(params, device), [], [], 0.0
        for batch in batches:
            batch = to_device(batch, device)
            with autocast(device, self.precision):
                out = functional_call(model, params, args=(), kwargs=batch)
            loss_sum += float(out.loss) * len(batch["labels"])
            preds.append(out.logits.argmax(-1).cpu().numpy())
            golds.append(batch["labels"].cpu().numpy())
        n_classes = int(out.logits.shape[-1])
        return scores.counts(np.concatenate(preds), np.concatenate(golds), loss_sum, n_classes)

    def evaluate(self, model: nn.Module, params: State, batches: list[dict]) -> dict:
        """Accuracy, macro-F1 and mean cross-entropy of one adapter on fixed batches."""
        return scores.from_counts(self.counts(model, params, batches))

    def loss_terms(self, out, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        ce = nn.functional.cross_entropy(out.logits, batch["labels"], reduction="none")
        return ce, torch.ones_like(ce)

    def example_losses(self, out, batch: dict) -> torch.Tensor:
        return self.loss_terms(out, batch)[0]


@dataclass(frozen=True)
class CausalLM:
    """A causal LM: instruction pairs or classification as generation
    (:mod:`declora.learning.causal_lm`), evaluated in config ``precision``."""

    precision: str = "fp32"

    def dataset(self, cfg: Config, tok, rows, texts, labels, names) -> Dataset:
        return lm.dataset(cfg, tok, rows, texts, labels, names)

    def collate(self, ds: Dataset, idx, pad_id: int) -> dict[str, torch.Tensor]:
        return lm.collate(ds, idx, pad_id)

    def eval_batches(self, ds: Dataset, pad_id: int, limit: int | None = None) -> list[dict]:
        return lm.eval_batches(ds, pad_id, limit)

    def evaluate(self, model: nn.Module, params: State, batches: list[dict]) -> dict:
        return lm.evaluate_lm(model, params, batches, self.precision)

    def loss_terms(self, out, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Each row's summed loss over its target tokens, and how many there are."""
        logp, mask, _ = lm.token_logprobs(out.logits, batch["labels"])
        return -logp.sum(1), mask.sum(1).to(logp.dtype)

    def example_losses(self, out, batch: dict) -> torch.Tensor:
        """Mean loss over each row's own target tokens."""
        sums, counts = self.loss_terms(out, batch)
        return sums / counts.clamp(min=1)


TASKS: dict[str, type] = {"classification": Classification, "causal_lm": CausalLM}
assert tuple(TASKS) == get_args(TaskName), "config.TaskName and TASKS must agree"


def task_for(cfg: Config) -> Task:
    """The config's task, evaluated in its precision."""
    return TASKS[cfg.task](cfg.precision)


def load_task_data(cfg: Config, tok, node: int | None = None) -> Splits:
    """Training, validation and test rows of the config's data (or of site ``node``'s own
    file), built by its task."""
    return load_dataset(cfg, tok, task_for(cfg).dataset, node)
