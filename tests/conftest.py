"""Shared fixtures: a tiny random BERT (saved like a Hugging Face checkpoint) and a small
synthetic sentiment CSV with a learnable signal, so tests run in seconds on 2 cores."""

from __future__ import annotations

import csv
import random
import warnings

import pytest

warnings.filterwarnings("ignore", category=FutureWarning)

POSITIVE = ["good", "great", "excellent", "superb", "lovely", "wonderful"]
NEGATIVE = ["bad", "awful", "poor", "terrible", "dull", "boring"]
FILLER = ["the", "movie", "plot", "actors", "was", "really", "quite", "film", "story", "and"]


def synthetic_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.choice(["positive", "negative"])
        words = rng.choices(FILLER, k=rng.randint(3, 8))
        cue = POSITIVE if label == "positive" else NEGATIVE
        words.insert(rng.randrange(len(words) + 1), rng.choice(cue))
        rows.append({"text": " ".join(words), "label": label})
    return rows


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A 2-layer, 32-wide random BERT with the bundled MiniLM tokenizer."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from declora.adapters import resolve_model_path

    path = tmp_path_factory.mktemp("tiny-bert")
    tok = AutoTokenizer.from_pretrained(resolve_model_path("bundled:minilm"))
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tok.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        num_labels=2,
    )
    BertForSequenceClassification(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_csv(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "reviews.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["text", "label"])
        writer.writeheader()
        writer.writerows(synthetic_rows(480))
    return path


def tiny_args(model_dir, csv_path, out) -> list[str]:
    """key=value overrides for a run of a few seconds in which pooled training clearly learns."""
    return [
        f"model.name={model_dir}",
        f"data.path={csv_path}",
        "data.eval_size=96",
        "nodes=4",
        "rounds=6",
        "local_steps=4",
        "batch_size=8",
        "lr=0.01",
        "method_lr={}",
        "schedule=constant",
        "warmup=0",
        "eval_every=3",
        "node_eval_size=48",
        "lora.rank=4",
        "partition.kind=iid",
        f"out={out}",
    ]


@pytest.fixture
def tiny_overrides(tiny_model_dir, tiny_csv, tmp_path):
    return tiny_args(tiny_model_dir, tiny_csv, tmp_path / "run")
