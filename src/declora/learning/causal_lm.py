"""Causal language models (``task: causal_lm``): rows, batches and evaluation.

A row is a prompt and a target, as token ids; the model reads prompt + target and the loss
counts the target's tokens only (prompt and padding are labelled -100). Two kinds of data:

- instruction pairs (``data.prompt_column`` / ``data.response_column``): the target is the
  response followed by the end-of-sequence token. Evaluation: mean loss per response token
  and top-1 accuracy of the next response token.
- classification as generation (``data.label_words``): the target is the row's label word.
  Evaluation scores every label word after the prompt (sum of its tokens' log-probabilities)
  and predicts the likeliest: accuracy, macro-F1, and the cross-entropy over the label words.

Prompts go through the tokenizer's chat template when it has one (``data.chat_template``), so
an instruction-tuned model such as SmolLM2-Instruct sees the format it was trained on.
Batches are padded on the right: positions of real tokens are then those of an unpadded row.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from declora.algorithms.scores import macro_f1
from declora.algorithms.tensors import State
from declora.config import Config
from declora.learning.adapters import autocast
from declora.learning.dataset import Dataset, pad_right, pair_texts
from declora.learning.devices import device_of, to_device
from declora.learning.sources import DataError

IGNORE = -100
META = ("gold", "n_choices", "choice_ids")  # batch entries that are not model inputs


def render(tok, content: str, cfg: Config) -> list[int]:
    """Token ids of one prompt: chat template (with the assistant's turn opened) if any."""
    if cfg.data.chat_template and getattr(tok, "chat_template", None):
        messages = [{"role": "user", "content": content}]
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return tok(text, add_special_tokens=False)["input_ids"]
    bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
    return bos + tok(content, add_special_tokens=False)["input_ids"]


def clip(tok, text: str, max_tokens: int) -> str:
    """``text`` cut to its first ``max_tokens`` tokens (before any template is added)."""
    ids = tok(text, add_special_tokens=False)["input_ids"]
    return text if len(ids) <= max_tokens else tok.decode(ids[:max_tokens])


def clip_pair(tok, text: str, pair: str, max_tokens: int) -> tuple[str, str]:
    """``text`` and ``pair`` cut to ``max_tokens`` tokens together, the longer side first, as
    a fast tokenizer's ``truncation="longest_first"`` cuts a pair: a short side stays whole
    and the long one takes the rest, or both get half (the longer one the odd token)."""
    a = tok(text, add_special_tokens=False)["input_ids"]
    b = tok(pair, add_special_tokens=False)["input_ids"]
    if len(a) + len(b) <= max_tokens:
        return text, pair
    short, long_ = sorted((len(a), len(b)))
    if short <= max_tokens - short:
        short, long_ = short, max_tokens - short
    else:
        short, long_ = max_tokens // 2, max_tokens - max_tokens // 2
    keep = (short, long_) if len(a) <= len(b) else (long_, short)
    return tok.decode(a[: keep[0]]), tok.decode(b[: keep[1]])


def word_ids(tok, words: list[str]) -> list[list[int]]:
    """Token ids of each label word; they must differ, and none may be empty."""
    ids = [tok(w, add_special_tokens=False)["input_ids"] for w in words]
    if any(not x for x in ids) or len({tuple(x) for x in ids}) < len(ids):
        raise ValueError(f"data.label_words={words}: each must be a distinct, non-empty word")
    return ids


def prompts_and_targets(tok, cfg: Config, texts, labels=None, responses=None, pairs=None):
    """(prompt ids, target ids) per row; ``labels`` (class ids) pick the label word; ``pairs``:
    each row's second text, placed at {text_pair} in the prompt template."""
    eos = [tok.eos_token_id] if tok.eos_token_id is not None else []
    prompts, targets = [], []
    if responses is not None:  # instruction pairs
        for prompt, response in zip(texts, responses):
            prompts.append(render(tok, clip(tok, prompt, cfg.max_length), cfg))
            target = tok(response, add_special_tokens=False)["input_ids"][: cfg.max_length]
            targets.append(target + eos)
        return prompts, targets
    words = word_ids(tok, cfg.data.label_words)
    for k, (text, label) in enumerate(zip(texts, labels)):
        if pairs is None:
            content = cfg.data.prompt_template.format(text=clip(tok, text, cfg.max_length))
        else:
            a, b = clip_pair(tok, text, pairs[k], cfg.max_length)
            content = cfg.data.prompt_template.format(text=a, text_pair=b)
        prompts.append(render(tok, content, cfg))
        targets.append(words[label])
    return prompts, targets


def dataset(cfg: Config, tok, rows, texts, labels, names) -> Dataset:
    """Prompts and targets of every row: label words, or the responses of instruction pairs."""
    d = cfg.data
    if d.label_words is not None and len(d.label_words) != len(names):
        raise DataError(
            f"data.label_words has {len(d.label_words)} words for {len(names)} classes {names}"
        )
    responses = [str(r[d.response_column] or "") for r in rows] if d.prompt_column else None
    try:
        pairs = pair_texts(cfg, rows)
        prompts, targets = prompts_and_targets(tok, cfg, texts, labels, responses, pairs)
        choices = None if responses else word_ids(tok, d.label_words)
    except ValueError as err:
        raise DataError(str(err)) from None
    return Dataset(prompts, labels, names, targets, choices)


def collate(ds: Dataset, idx, pad_id: int) -> dict:
    """A training batch: prompt + target, the loss on the target's tokens."""
    return pack([ds.input_ids[i] for i in idx], [ds.targets[i] for i in idx], pad_id)


def eval_batches(ds: Dataset, pad_id: int, limit: int | None = None) -> list[dict]:
    """Fixed eval batches of the first ``limit`` rows, sorted by length (less padding).

    8 sequences a batch (a causal LM's logits span its vocabulary); classification as
    generation puts each row once per label word in a batch unless every word is one token."""
    n = len(ds) if limit is None else min(limit, len(ds))
    order = sorted(range(n), key=lambda i: len(ds.input_ids[i]) + len(ds.targets[i]))
    copies = 1 if all(len(c) == 1 for c in ds.choices or [[0]]) else len(ds.choices)
    size = max(1, 64 // 8 // copies)
    chunks = [order[i : i + size] for i in range(0, n, size)]
    if ds.choices is not None:
        return [choice_batch(ds, c, pad_id) for c in chunks]
    return [collate(ds, c, pad_id) for c in chunks]


def pack(prompts: list[list[int]], targets: list[list[int]], pad_id: int) -> dict:
    """Right-padded input_ids / attention_mask, and labels that are the targets' tokens only."""
    ids, mask = pad_right([p + t for p, t in zip(prompts, targets)], pad_id)
    labels = torch.full_like(ids, IGNORE)
    for row, (p, t) in enumerate(zip(prompts, targets)):
        labels[row, len(p) : len(p) + len(t)] = torch.tensor(t)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def choice_batch(ds: Dataset, idx: list[int], pad_id: int) -> dict:
    """Every row of ``idx`` followed by every label word (row-major), and the gold classes.

    When every label word is one token, each row appears once (with the first word): the
    logits after its prompt score all the words at once (``choice_ids``), half the work for
    two classes."""
    n_choices = len(ds.choices)
    single = all(len(c) == 1 for c in ds.choices)
    copies = 1 if single else n_choices
    prompts = [ds.input_ids[i] for i in idx for _ in range(copies)]
    batch = pack(prompts, [c for _ in idx for c in ds.choices[:copies]], pad_id)
    batch["gold"] = torch.from_numpy(ds.labels[idx])
    batch["n_choices"] = n_choices
    if single:
        batch["choice_ids"] = torch.tensor([c[0] for c in ds.choices])
    return batch


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Log-probability of each labelled token given what precedes it, the mask of labelled
    positions, and whether the model's top token was the labelled one; all (batch, width-1)."""
    logits, target = logits[:, :-1].float(), labels[:, 1:]  # position t predicts token t+1
    mask = target != IGNORE
    picked = logits.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    logp = (picked - torch.logsumexp(logits, -1)) * mask
    hit = (logits.argmax(-1) == target) & mask
    return logp, mask, hit


@torch.inference_mode()
def evaluate_lm(
    model: nn.Module, params: State, batches: list[dict], precision: str = "fp32"
) -> dict[str, float]:
    """Classification as generation (batches with ``gold``) or response-token metrics, on the
    model's device, in config ``precision``."""
    model.eval()
    device = device_of(model)
    params, preds, golds = to_device(params, device), [], []
    loss_sum, count, hits = 0.0, 0, 0
    for batch in batches:
        batch = to_device(batch, device)
        inputs = {k: v for k, v in batch.items() if k not in (*META, "labels")}
        with autocast(device, precision):
            logits = functional_call(model, params, args=(), kwargs=inputs).logits
        if "choice_ids" in batch:  # one-token label words: read them off the prompt's end
            at = (batch["labels"] != IGNORE).float().argmax(1) - 1  # (rows,) last prompt token
            last = logits[torch.arange(len(at)), at].float().log_softmax(-1)  # (rows, vocab)
            scores = last[:, batch["choice_ids"]]  # (rows, classes)
        else:
            logp, mask, hit = token_logprobs(logits, batch["labels"])
            scores = logp.sum(1).view(-1, batch["n_choices"]) if "gold" in batch else None
        if "gold" in batch:  # scores: (rows, classes)
            gold = batch["gold"]
            loss_sum += float(nn.functional.cross_entropy(scores, gold, reduction="sum"))
            count += len(gold)
            preds.append(scores.argmax(-1).cpu().numpy())
            golds.append(gold.cpu().numpy())
        else:
            loss_sum -= float(logp.sum())
            count += int(mask.sum())
            hits += int(hit.sum())
    if not preds:  # instruction pairs: per response token
        return {"accuracy": hits / count, "f1": float("nan"), "loss": loss_sum / count}
    pred, gold = np.concatenate(preds), np.concatenate(golds)
    n_classes = int(batches[0]["n_choices"])
    return {
        "accuracy": float(np.mean(pred == gold)),
        "f1": macro_f1(pred, gold, n_classes),
        "loss": loss_sum / count,
    }
