"""Tiny, fast fixtures for the tests and quick checks (``benchmarks/gpu_check.py``): synthetic
reviews whose one cue word gives the label away, a 2-layer random BERT with the bundled
MiniLM tokenizer, and the overrides of a run of a few seconds. Not part of the public API."""

from __future__ import annotations

import csv
import random

POSITIVE = ["good", "great", "excellent", "superb", "lovely", "wonderful"]
NEGATIVE = ["bad", "awful", "poor", "terrible", "dull", "boring"]
FILLER = ["the", "movie", "plot", "actors", "was", "really", "quite", "film", "story", "and"]


def synthetic_rows(n: int, seed: int = 0) -> list[dict]:
    """Reviews of filler words with one cue word that gives the label away."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.choice(["positive", "negative"])
        words = rng.choices(FILLER, k=rng.randint(3, 8))
        cue = POSITIVE if label == "positive" else NEGATIVE
        words.insert(rng.randrange(len(words) + 1), rng.choice(cue))
        rows.append({"text": " ".join(words), "label": label})
    return rows


def write_csv(path, rows: list[dict]):
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def tiny_args(model_dir, csv_path, out) -> list[str]:
    """key=value overrides for a run of a few seconds in which pooled training clearly learns,
    on the paper's ring with equal weights and each node's own AdamW moments (what the tests
    were written for)."""
    return [
        f"model.name={model_dir}",
        f"data.path={csv_path}",
        "data.test_size=96",
        "data.val_size=48",
        "nodes=4",
        "topology.kind=ring",
        "weighting=uniform",
        "second_moment=own",
        "rounds=6",
        "local_steps=4",
        "batch_size=8",
        "lr=0.01",
        "per_method={}",
        "schedule=constant",
        "finish_rounds=0",
        "warmup=0",
        "eval_every=3",
        "node_eval_size=48",
        "lora.rank=4",
        "partition.kind=iid",
        f"out={out}",
    ]


def save_tiny_bert(path, **config):
    """A 2-layer, 32-wide random BERT (``config`` overrides BertConfig's fields) with the
    bundled MiniLM tokenizer, saved like a Hugging Face checkpoint at ``path``."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from declora.learning.adapters import resolve_model_path

    tok = AutoTokenizer.from_pretrained(resolve_model_path("bundled:minilm"))
    torch.manual_seed(0)
    shape = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    bert = BertConfig(
        vocab_size=tok.vocab_size, max_position_embeddings=128, num_labels=2, **shape, **config
    )
    BertForSequenceClassification(bert).save_pretrained(path)
    tok.save_pretrained(path)
    return path
