"""Shared fixtures: a tiny random BERT (saved like a Hugging Face checkpoint) and a small
synthetic sentiment CSV with a learnable signal, so tests run in seconds on 2 cores."""

from __future__ import annotations

import warnings

import pytest

from tests.helpers import (
    CHAT_TEMPLATE,
    LLAMA_LABEL_WORDS,
    save_tiny_bert,
    synthetic_rows,
    tiny_args,
    write_csv,
)

warnings.filterwarnings("ignore", category=FutureWarning)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A 2-layer, 32-wide random BERT with the bundled MiniLM tokenizer."""
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory):
    """A 2-layer, 64-wide LLaMA (bitsandbytes packs 4-bit CPU weights in blocks of 64) with
    the bundled MiniLM tokenizer, given an end-of-text token and a small chat template (so both
    prompt paths are exercised). It is briefly pre-trained so that LoRA has something to adapt,
    as on a real base: it learns to answer a review with the *wrong* label word. Trained on the
    right labels, the adapter must turn that around: the untrained model scores near 0."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from declora.config import load_config
    from declora.learning.adapters import resolve_model_path
    from declora.learning.dataset import Sampler
    from declora.learning.tasks import TASKS, load_task_data

    path = tmp_path_factory.mktemp("tiny-llama")
    tok = AutoTokenizer.from_pretrained(resolve_model_path("bundled:minilm"))
    tok.eos_token = "[SEP]"
    tok.chat_template = CHAT_TEMPLATE
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=tok.vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
    )
    model = LlamaForCausalLM(config)
    flip = {"positive": "negative", "negative": "positive"}
    flipped = [{**r, "label": flip[r["label"]]} for r in synthetic_rows(480, 9)]
    data = tmp_path_factory.mktemp("pretrain")
    flipped_csv = write_csv(data / "flipped.csv", flipped)
    sets = []
    for chat in ("true", "false"):
        keys = [*LLAMA_LABEL_WORDS, f"data.path={flipped_csv}", f"data.chat_template={chat}"]
        cfg = load_config(None, ["task=causal_lm", "data.test_size=1", "data.val_size=1", *keys])
        sets.append(load_task_data(cfg, tok).train)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
    sampler = Sampler(len(sets[0]), 16, seed=0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same sums on any number of cores
    for step in range(240):
        batch = TASKS["causal_lm"]().collate(sets[step % 2], sampler.next(), tok.pad_token_id)
        loss = model(**batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.set_num_threads(threads)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_csv(tmp_path_factory):
    return write_csv(tmp_path_factory.mktemp("data") / "reviews.csv", synthetic_rows(480))


@pytest.fixture
def tiny_overrides(tiny_model_dir, tiny_csv, tmp_path):
    return tiny_args(tiny_model_dir, tiny_csv, tmp_path / "run")
