"""The sections of the run configuration: one pydantic model per part (graph, data, model,
privacy, ...), each field with a one-line help (``declora configs --fields``), and the types the
sections share. The whole config is :class:`declora.config.schema.Config`."""

from __future__ import annotations

import re
from typing import Annotated, Literal, get_args

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    field_validator,
    model_validator,
)

from declora.algorithms.compress import KINDS, SCHEMES
from declora.algorithms.consensus import RULES
from declora.algorithms.methods import METHODS
from declora.algorithms.partition import PARTITIONS
from declora.algorithms.schedule import KINDS as TOPOLOGIES

# Each set of choices is written once, in the module that acts on it; the config reads it there.
MethodName = Literal[tuple(METHODS)]
Rule = Literal[RULES]
TaskName = Literal["classification", "causal_lm"]  # declora.learning.tasks.TASKS

SEED_MAX = 2**32 - 1
# integers must be integers: YAML's `true` is not 1 node, and 4.0 is not 4 steps
Int = Annotated[int, Strict()]


def _gossip_steps(value):
    """A count of gossip steps from 1 to 100, or ``period``; one message for anything else."""
    if value == "period" or (type(value) is int and 1 <= value <= 100):
        return value
    raise ValueError(f"a whole number from 1 to 100, or period (got {value!r})")


# gossip steps a round: a count, or the graph's period (Config.for_method resolves it)
GossipSteps = Annotated[
    Annotated[int, Strict(), Field(ge=1, le=100)] | Literal["period"],
    BeforeValidator(_gossip_steps),
]


DEVICE = re.compile(r"auto|cpu|cuda(:[0-9]+)?")  # config ``device``


class _Section(BaseModel):
    # no NaN or infinity anywhere: lr=.inf trains to NaN, peer_timeout=.inf waits forever
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_boolean_numbers(cls, value, info):
        """A number is not true or false: lr=true would be read as 1.0 (as Int refuses
        nodes=true)."""
        kind = cls.model_fields[info.field_name].annotation
        if isinstance(value, bool) and float in (kind, *get_args(kind)):
            raise ValueError(f"expected a number, got a boolean ({str(value).lower()})")
        return value


class TopologyConfig(_Section):
    kind: Literal[TOPOLOGIES] = Field(
        "base",
        description="communication graph between nodes; one_peer_exponential and base change "
        "every round and average exactly after a few rounds (their own weights); base (the "
        "Base-(k+1) graph, k = degree) is the default: exact for any nodes, half the ring's "
        "messages at degree 1",
    )
    p: float = Field(0.3, gt=0, le=1, description="edge probability for erdos_renyi")
    degree: Int = Field(
        1, ge=1, le=64, description="kind=base: peers per node per round (the Base-(k+1) graph's k)"
    )
    edges: list[tuple[int, int]] | None = Field(
        None, description="0-based node pairs, for kind=custom"
    )


class PartitionConfig(_Section):
    kind: Literal[PARTITIONS] = Field(
        "dirichlet", description="how training rows are split over nodes"
    )
    alpha: float = Field(0.5, gt=0, description="Dirichlet concentration (smaller = more skew)")
    proportions: list[list[float]] | None = Field(
        None, description="per-node class proportions, for kind=label_skew"
    )


class CompressionConfig(_Section):
    kind: Literal[tuple(KINDS)] = Field(
        "none", description="what nodes send: float32 (none), b-bit quantize, or topk entries"
    )
    bits: Int = Field(4, ge=1, le=16, description="bits per value for kind=quantize")
    block: Int = Field(
        256,
        ge=0,
        le=2**32 - 1,  # the wire format stores it in 32 bits
        description="values per float32 scale for quantize (0 = one per tensor; never crosses one)",
    )
    ratio: float = Field(0.1, gt=0, le=1, description="fraction of entries kept for kind=topk")
    scheme: Literal[SCHEMES] = Field(
        "direct",
        description="direct: send the adapter; choco: send the difference to its public copy",
    )
    gamma: float = Field(1.0, gt=0, le=1, description="consensus step size for scheme=choco")

    @field_validator("block", mode="before")
    @classmethod
    def _none_is_per_tensor(cls, value):
        return 0 if value is None else value


class FaultsConfig(_Section):
    link_drop: float = Field(
        0.0, ge=0, lt=1, description="chance that a graph edge is down for a round (dec-lora)"
    )
    node_drop: float = Field(
        0.0, ge=0, lt=1, description="chance that a node sits a round out: no steps, no messages"
    )


class SecurityConfig(_Section):
    key_file: str | None = Field(
        None, description="shared secret file: launch tags every message with HMAC-SHA256"
    )
    encrypt: bool = Field(
        False,
        description="encrypt every adapter message with AES-256-GCM (needs security.key_file); "
        "a new key file may be given at a restart",
    )

    @model_validator(mode="after")
    def _key_for_encryption(self) -> SecurityConfig:
        if self.encrypt and not self.key_file:
            raise ValueError(
                "encrypt=true needs key_file (the shared secret the encryption keys are "
                "derived from)"
            )
        return self


class PrivacyConfig(_Section):
    """DP-SGD on every node (declora.learning.privacy): off unless a noise level or a target is given."""

    noise_multiplier: float | None = Field(
        None, ge=0, description="Gaussian noise std / clip (DP-SGD sigma); or give privacy.epsilon"
    )
    epsilon: float | None = Field(
        None,
        gt=0,
        description="target epsilon at privacy.delta: the noise is computed for the run's "
        "steps; with noise_multiplier too, a cap at which the run stops",
    )
    delta: float = Field(
        1e-5, gt=0, lt=1, description="delta of (epsilon, delta)-DP; below 1/rows of every site"
    )
    clip: float = Field(
        1.0,
        gt=0,
        le=1e6,  # the noise's std is noise_multiplier x clip: far above any gradient norm
        description="per-example gradient norm bound C",
    )
    accountant: Literal["rdp", "prv"] = Field(
        "rdp", description="Opacus accountant: rdp (Renyi DP) or prv (tighter, slower)"
    )
    reproducible: bool = Field(
        False,
        description="research and tests only: draw the DP noise and sample from the shared "
        "seed, so runs repeat; then anyone with the config can remove the noise (no privacy)",
    )

    @property
    def enabled(self) -> bool:
        return self.noise_multiplier is not None or self.epsilon is not None


class LoraSettings(_Section):
    rank: Int = Field(8, ge=1, description="LoRA rank r")
    alpha: float = Field(16, gt=0, description="LoRA scaling numerator (scale = alpha / rank)")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the LoRA input")
    targets: list[str] = Field(
        ["query", "value"],
        min_length=1,
        description="module names that get LoRA adapters (task causal_lm: q_proj, v_proj)",
    )


class ModelConfig(_Section):
    name: str = Field(
        "bundled:minilm",
        description="Hugging Face id, local path, bundled:minilm (offline MiniLM-L6) or "
        "bundled:smollm2 (offline SmolLM2-135M-Instruct, a LLaMA)",
    )
    quantize: Literal["none", "int8", "4bit"] = Field(
        "none",
        description="frozen base weights: none (float32), int8, or 4bit NF4 (QLoRA); bitsandbytes",
    )
    gradient_checkpointing: bool = Field(
        False,
        description="recompute the base's activations in the backward instead of keeping them "
        "(less memory for long sequences and causal LMs, about a third more compute)",
    )


class DataConfig(_Section):
    path: str = Field(
        "bundled:rotten_tomatoes",
        description="CSV / JSONL / Parquet / Arrow file, a save_to_disk folder, Hugging Face "
        "dataset id, or bundled:rotten_tomatoes",
    )
    text_column: str = Field("text", description="column holding the input text")
    text_pair_column: str | None = Field(
        None,
        description="sentence pairs: column holding each row's second text (hypothesis, "
        "passage, code); the tokenizer gets (text, text_pair), max_length cuts the longer first",
    )
    encoding: str = Field(
        "utf-8",
        description="text encoding of CSV / JSON files (e.g. cp1252 for old exports); per-site "
        "files: each site's own, for the files that are not UTF-8",
    )
    label_column: str = Field("label", description="column holding the class (int or string)")
    test_size: Int = Field(
        1000, ge=1, description="test rows: held out, scored once at the end (the reported figures)"
    )
    val_size: Int = Field(
        500, ge=1, description="validation rows: held out, for curves, tuning and choices"
    )
    train_size: Int | None = Field(
        None, ge=1, description="use at most this many training rows (all when empty)"
    )
    split_seed: Int = Field(
        0, ge=0, le=SEED_MAX, description="seed of the test / validation split (fixed across seeds)"
    )
    prompt_column: str | None = Field(
        None, description="causal_lm instruction data: column holding the prompt"
    )
    response_column: str | None = Field(
        None, description="causal_lm instruction data: column holding the response (the loss)"
    )
    label_words: list[str] | None = Field(
        None,
        description="causal_lm classification as generation: one word per class, in class-id "
        "order (labels.json)",
    )
    prompt_template: str = Field(
        "{text}", description="causal_lm classification: the prompt around {text}"
    )
    chat_template: bool = Field(
        True, description="causal_lm: wrap prompts in the tokenizer's chat template if it has one"
    )
    labels: list[str] | None = Field(
        None,
        min_length=2,
        description="the classes, in id order, agreed by every site (required with per-site "
        "files: data.path with {node})",
    )
    eval_size: float = Field(
        0.1,
        gt=0,
        description="per-site files: rows each site holds out for validation and as many for "
        "test, a count (>= 1) or a fraction of its rows (< 1)",
    )

    @property
    def per_site(self) -> bool:
        """One file per node: data.path holds {node}."""
        return "{node}" in self.path

    def site_path(self, node: int) -> str:
        return self.path.replace("{node}", str(node))


class EvalConfig(_Section):
    gather: bool | None = Field(
        None,
        description="rank 0 gathers every adapter and scores it on one common set (research; "
        "with per-site files, site 0's held-out rows); default: on for one file, off for "
        "per-site files, where each site scores its own rows and only scalars leave it",
    )


class MethodSettings(_Section):
    """Values one method uses instead of the top-level ones (what ``declora tune`` writes)."""

    lr: float | None = Field(None, gt=0, description="learning rate")
    head_lr_scale: float | None = Field(None, gt=0, description="the head learns at lr x this")
    schedule: Literal["constant", "linear", "cosine"] | None = Field(
        None, description="learning-rate decay"
    )
    finish_rounds: Int | None = Field(None, ge=0, description="gossip-only rounds at the end")
    gossip_steps: GossipSteps | None = Field(
        None, description="mixing steps per round (period: the graph's period)"
    )
    subrounds: Int | None = Field(
        None, ge=1, description="each round played as this many of batch_size / subrounds rows"
    )
    compression: CompressionConfig | None = Field(
        None, description="what the method's messages carry, e.g. {kind: quantize, bits: 8}"
    )


TUNED = ("lr", "head_lr_scale", "schedule", "gossip_steps", "finish_rounds")  # jobs.tune


class TuneConfig(_Section):
    trials: Int = Field(8, ge=1, description="declora tune: trials per method (the same for each)")
    params: list[Literal[TUNED]] = Field(
        list(TUNED),
        min_length=1,
        description="declora tune: the values searched (the others keep the config's own; "
        "gossip_steps and finish_rounds only for methods whose nodes gossip)",
    )
    prune: bool = Field(
        True, description="declora tune: stop a trial whose validation curve is below the median"
    )
