"""Typed, validated run configuration: YAML file + dotted ``key=value`` overrides.

Every field carries a one-line description (shown by ``declora configs --fields``). Loading
errors are raised as :class:`ConfigError` with one line that names the key.
"""

from __future__ import annotations

import re
from collections.abc import Hashable
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    field_validator,
    model_validator,
)

from declora.compress import KINDS, SCHEMES
from declora.consensus import RULES
from declora.methods import METHODS
from declora.partition import PARTITIONS
from declora.topology import MIXING_RULES, TOPOLOGIES

# Each set of choices is written once, in the module that acts on it; the config reads it there.
MethodName = Literal[tuple(METHODS)]
Rule = Literal[RULES]
TaskName = Literal["classification", "causal_lm"]  # declora.tasks.TASKS
CONFIG_DIR = Path(__file__).parent / "configs"


SEED_MAX = 2**32 - 1
# the graph and mixing matrix are dense (n, n) arrays in every process, and the spectral gap
# takes their eigenvalues: 10,000 nodes is 0.9 GB and about a minute on 2 cores
MAX_NODES = 10_000
# integers must be integers: YAML's `true` is not 1 node, and 4.0 is not 4 steps
Int = Annotated[int, Strict()]


DEVICE = re.compile(r"auto|cpu|cuda(:[0-9]+)?")  # config ``device``


class ConfigError(ValueError):
    """A bad config value; the message is one line meant for the user (a line break in the
    text it quotes, a key or a file name, is shown as \\n)."""

    def __init__(self, message: str):
        super().__init__(one_line(message))


def one_line(text: str) -> str:
    """``text`` with its line breaks written as ``\\n`` and ``\\r``."""
    return text.replace("\r", "\\r").replace("\n", "\\n")


class _Section(BaseModel):
    # no NaN or infinity anywhere: lr=.inf trains to NaN, peer_timeout=.inf waits forever
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class TopologyConfig(_Section):
    kind: Literal[TOPOLOGIES] = Field("ring", description="communication graph between nodes")
    p: float = Field(0.3, gt=0, le=1, description="edge probability for erdos_renyi")
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
    """DP-SGD on every node (declora.privacy): off unless a noise level or a target is given."""

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
    clip: float = Field(1.0, gt=0, description="per-example gradient norm bound C")
    accountant: Literal["rdp", "prv"] = Field(
        "rdp", description="Opacus accountant: rdp (Renyi DP) or prv (tighter, slower)"
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
        description="CSV / JSONL file, Hugging Face dataset id, or bundled:rotten_tomatoes",
    )
    text_column: str = Field("text", description="column holding the input text")
    encoding: str = Field(
        "utf-8", description="text encoding of CSV / JSON files (e.g. cp1252 for old exports)"
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
    gossip_steps: Int | None = Field(None, ge=1, le=100, description="mixing steps per round")


class TuneConfig(_Section):
    trials: Int = Field(8, ge=1, description="declora tune: trials per method (the same for each)")
    prune: bool = Field(
        True, description="declora tune: stop a trial whose validation curve is below the median"
    )


class Config(_Section):
    task: TaskName = Field(
        "classification",
        description="classification (encoder + head) or causal_lm (instruction pairs, or "
        "classification as generation with data.label_words)",
    )
    nodes: Int = Field(
        8,
        ge=1,
        le=MAX_NODES,
        description="number of sites in the graph (at most 10,000: every process holds the "
        "dense n x n mixing matrix)",
    )
    rounds: Int = Field(70, ge=1, description="communication rounds T")
    local_steps: Int = Field(1, ge=1, description="optimizer steps per node per round K")
    batch_size: Int = Field(16, ge=1, description="training batch size on every node")
    lr: float = Field(1e-2, gt=0, description="learning rate")
    per_method: dict[MethodName, MethodSettings] = Field(
        default_factory=lambda: {
            "centralized": MethodSettings(lr=0.001079, head_lr_scale=8.652942, schedule="cosine"),
            "dec-lora": MethodSettings(
                lr=0.015703,
                head_lr_scale=1.040526,
                schedule="cosine",
                finish_rounds=40,
                gossip_steps=1,
            ),
            "local": MethodSettings(lr=0.001202, head_lr_scale=1.080764, schedule="constant"),
        },
        description="values one method uses instead of the top-level ones, e.g. "
        "{centralized: {lr: 0.002}} (declora tune writes them)",
    )
    head_lr_scale: float = Field(
        5.0, gt=0, description="the task head learns at lr x this (random init, unlike LoRA's base)"
    )
    optimizer: Literal["adamw", "sgd"] = Field("adamw", description="local optimizer")
    schedule: Literal["constant", "linear", "cosine"] = Field(
        "constant", description="learning-rate decay over each node's own steps"
    )
    warmup: float = Field(0.0, ge=0, lt=1, description="fraction of steps with linear warm-up")
    weight_decay: float = Field(0.0, ge=0, description="decoupled weight decay (adamw)")
    finish_rounds: Int = Field(
        0,
        ge=0,
        description="gossip-only rounds after the last training round (dec-lora): the nodes' "
        "adapters agree, at the cost of bytes and no compute",
    )
    gossip_steps: Int = Field(
        1,
        ge=1,
        le=100,
        description="mixing steps after each round's local steps (dec-lora): bytes x this, "
        "the nodes closer to the network average under skewed data",
    )
    seed: Int = Field(
        0, ge=0, le=SEED_MAX, description="seed of initialisation, partition and sampling"
    )
    seeds: list[Annotated[Int, Field(ge=0, le=SEED_MAX)]] | None = Field(
        None,
        min_length=1,
        description="declora run: run the job once per seed and report mean, std and 95% "
        "interval (e.g. [0,1,2])",
    )
    eval_every: Int = Field(
        14, ge=1, description="evaluate every this many rounds (and at the end)"
    )
    node_eval_size: Int = Field(
        128,
        ge=1,
        description="validation rows that score each node's own adapter for the curves (the "
        "end scores every node on the whole test set)",
    )
    methods: list[MethodName] = Field(
        ["dec-lora", "centralized", "local"], min_length=1, description="what to run and compare"
    )
    topology: TopologyConfig = Field(default_factory=TopologyConfig)
    mixing: Literal[MIXING_RULES] = Field("metropolis", description="mixing weights on the graph")
    partition: PartitionConfig = Field(default_factory=PartitionConfig)
    lora: LoraSettings = Field(default_factory=LoraSettings)
    compression: CompressionConfig = Field(default_factory=CompressionConfig)
    consensus: Rule = Field(
        "ab",
        description="mixing rule: ab (A and B apart, the paper), frozen_a (seeded A never trained, "
        "B and head exchanged), product (mix B A, refactor to rank r by SVD); see consensus.py",
    )
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    max_length: Int = Field(64, ge=8, description="truncate inputs to this many tokens")
    out: str | None = Field(None, description="output folder (default runs/<timestamp>)")
    export_adapters: bool = Field(True, description="save PEFT adapters under out/adapters")
    faults: FaultsConfig = Field(default_factory=FaultsConfig)
    security: SecurityConfig = Field(default_factory=SecurityConfig)
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    tune: TuneConfig = Field(default_factory=TuneConfig)
    checkpoint_every: Int = Field(
        0, ge=0, description="launch: each node checkpoints every this many rounds (0 = never)"
    )
    device: str = Field(
        "auto",
        description="where the model trains and evaluates: auto (the GPU when there is one), cpu, "
        "cuda or cuda:N; launch gives each process its local GPU",
    )
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32",
        description="autocast of the forward and backward (training and evaluation); adapter "
        "tensors and optimizer state stay float32; fp16 adds a gradient scaler",
    )
    vectorize: bool = Field(
        False,
        description="declora run: every node's local steps in one batched forward and backward "
        "(the same numbers as one node at a time when dropout is off); off by default: on 2 "
        "CPU cores it is no faster",
    )
    peer_timeout: float = Field(
        300.0, gt=0, description="launch: seconds to wait for a neighbour before failing a round"
    )

    @property
    def gather(self) -> bool:
        """Whether evaluation gathers the adapters to rank 0 (``eval.gather``, resolved)."""
        return (not self.data.per_site) if self.eval.gather is None else self.eval.gather

    @field_validator("device")
    @classmethod
    def _device_name(cls, value: str) -> str:
        if not DEVICE.fullmatch(value):
            raise ValueError("choose auto, cpu, cuda or cuda:N")
        return value

    @model_validator(mode="before")
    @classmethod
    def _task_defaults(cls, data: Any) -> Any:
        """A causal LM's LoRA targets default to q_proj and v_proj (LLaMA's names)."""
        if isinstance(data, dict) and data.get("task") == "causal_lm":
            lora = data.get("lora")
            lora = dict(lora) if isinstance(lora, dict) else {} if lora is None else lora
            if isinstance(lora, dict) and "targets" not in lora:
                lora["targets"] = ["q_proj", "v_proj"]
                data = {**data, "lora": lora}
        return data

    @model_validator(mode="after")
    def _cross_checks(self) -> Config:
        if len(set(self.methods)) != len(self.methods):
            raise ValueError("methods: each method may appear once")
        if self.partition.kind == "label_skew" and self.partition.proportions is None:
            raise ValueError("partition.proportions is required when partition.kind=label_skew")
        if self.topology.kind == "custom" and not self.topology.edges:
            raise ValueError("topology.edges is required when topology.kind=custom")
        if self.compression.scheme == "choco" and (self.faults.link_drop or self.faults.node_drop):
            raise ValueError(
                "compression.scheme=choco needs every message delivered (a missed one leaves a "
                "public copy behind for good); use compression.scheme=direct with faults"
            )
        if self.consensus == "product" and self.compression.scheme == "choco":
            raise ValueError(
                "consensus=product needs compression.scheme=direct (CHOCO's public copies are "
                "mixed as factors, not products)"
            )
        d = self.data
        if d.per_site:
            _check_per_site(self)
        if d.text_column == d.label_column:
            raise ValueError(f"data.text_column and data.label_column are both '{d.text_column}'")
        if self.task == "causal_lm":
            pairs = d.prompt_column is not None or d.response_column is not None
            if pairs == (d.label_words is not None):
                raise ValueError(
                    "task=causal_lm needs either data.prompt_column and data.response_column "
                    "(instruction pairs) or data.label_words (classification as generation)"
                )
            if pairs and (d.prompt_column is None or d.response_column is None):
                raise ValueError("data.prompt_column and data.response_column go together")
            if pairs and self.partition.kind not in ("iid", "quantity_skew"):
                raise ValueError(
                    f"partition.kind={self.partition.kind} needs class labels; instruction "
                    "pairs have none (use iid or quantity_skew)"
                )
            if d.label_words is not None and "{text}" not in d.prompt_template:
                raise ValueError("data.prompt_template must contain {text}")
        elif d.label_words is not None or d.prompt_column is not None:
            raise ValueError("data.label_words / data.prompt_column need task=causal_lm")
        if "fedavg" in self.methods and self.compression.kind != "none":
            raise ValueError(
                "fedavg with compression is not supported: its server would average compressed "
                "messages with each node's exact state; use compression.kind=none for fedavg"
            )
        if self.seeds is not None and len(set(self.seeds)) != len(self.seeds):
            raise ValueError("seeds: each seed may appear once")
        return self

    @model_validator(mode="after")
    def _vectorize_checks(self) -> Config:
        if self.vectorize and self.privacy.enabled:
            raise ValueError("vectorize=true does not run DP-SGD (privacy.*): use vectorize=false")
        if self.model.gradient_checkpointing and self.privacy.enabled:
            raise ValueError(
                "model.gradient_checkpointing does not run DP-SGD (its recomputed forward would "
                "be seen twice by the per-example hooks): turn one off"
            )
        if self.precision == "fp16" and (self.vectorize or self.privacy.enabled):
            raise ValueError(
                "precision=fp16 (a gradient scaler per node) runs neither vectorize=true nor "
                "privacy.*: use precision=bf16"
            )
        return self

    def for_method(self, method: str) -> Config:
        """This config with the method's own values (``per_method``) in place of the top-level ones."""
        own = self.per_method.get(method)
        return self if own is None else self.model_copy(update=own.model_dump(exclude_none=True))


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{key}: '{part}' is not a section")
        node = child
    node[parts[-1]] = value


class _TextDates(yaml.SafeLoader):
    """YAML's safe loader, except that a date stays text: no config value is a date, and
    ``out=2024-02-30`` names a folder (PyYAML would fail on the day)."""


_TextDates.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
# Reading a YAML text raises YAMLError, but also what PyYAML's constructors' conversions raise
# for a bad explicit tag (!!int 0xZZ: ValueError, !!bool maybe: KeyError, !!timestamp x:
# AttributeError) and RecursionError for brackets nested thousands deep. Each means the text
# is not valid YAML, so both readers below catch Exception.


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """Turn ``["lora.rank=4", "methods=[dec-lora]"]`` into a nested dict (values parsed as
    YAML; a value that is not valid YAML stays the text it is)."""
    tree: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override '{item}' must look like key=value (e.g. lora.rank=4)")
        try:
            value = yaml.load(raw, Loader=_TextDates) if raw != "" else None
        except Exception:  # not valid YAML (see above)
            value = raw
        _set_dotted(tree, key.strip(), value)
    return tree


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``extra`` over ``base``, section by section; an empty mapping (``per_method={}``)
    replaces what it names rather than adding nothing to it."""
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and v and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # a name too long for the file system names no file
        return False


def resolve_config_path(name: str) -> Path:
    """A YAML path, or the name of a built-in config (``declora configs`` lists them)."""
    path = Path(name)
    if _is_file(path):
        return path
    builtin = CONFIG_DIR / f"{name.removesuffix('.yaml')}.yaml"
    if _is_file(builtin):
        return builtin
    raise ConfigError(
        f"config '{name}' is neither a file nor a built-in config (see: declora configs)"
    )


def builtin_configs() -> dict[str, str]:
    """Built-in config name -> its first comment line."""
    out = {}
    for path in sorted(CONFIG_DIR.glob("*.yaml")):
        first = path.read_text().splitlines()[0] if path.stat().st_size else ""
        out[path.stem] = first.lstrip("# ").strip()
    return out


def _format_error(err: ValidationError) -> str:
    e = err.errors()[0]
    loc = ".".join(
        str(p) for p in e["loc"] if p != "[key]" and (not isinstance(p, int) or len(e["loc"]) == 1)
    )
    msg = e["msg"].removeprefix("Value error, ")
    if e["type"] == "extra_forbidden":
        return f"unknown config key '{loc}'"
    got = e.get("input")
    shown = (
        ""
        if isinstance(got, dict) or e["type"].startswith("value_error")
        else f" (got {_clip(repr(got))})"
    )
    return f"{loc}: {msg}{shown}" if loc else msg


def _first_line(err: Exception) -> str:
    lines = str(err).strip().splitlines()
    return _clip(lines[0]) if lines else type(err).__name__


def _clip(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


class _UniqueKeyLoader(_TextDates):
    """:class:`_TextDates`, except that a key given twice in one mapping is an error (PyYAML
    keeps the last one silently). Merge keys (``<<: *defaults``) are YAML's own way of
    repeating keys and stay allowed."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, Hashable):
                break  # PyYAML refuses it below, with its line
            if key in seen:
                line = key_node.start_mark.line + 1
                raise yaml.YAMLError(f"line {line}: key '{key}' given twice")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_config(path: str | None = None, overrides: list[str] | None = None) -> Config:
    """Build a Config from an optional YAML file plus ``key=value`` overrides."""
    data = {} if path is None else _read_yaml(resolve_config_path(path))
    extra = parse_overrides(overrides or [])
    dotted = any(
        item.partition("=")[0].strip().startswith("per_method.") for item in overrides or []
    )
    if dotted and "per_method" not in data:
        # `per_method.dec-lora.gossip_steps=8` changes one value of the built-in per_method;
        # `per_method={...}` still gives the whole mapping
        default = Config.model_fields["per_method"].default_factory()
        data["per_method"] = {m: v.model_dump(exclude_none=True) for m, v in default.items()}
    try:
        return Config.model_validate(_merge(data, extra))
    except ValidationError as err:
        raise ConfigError(f"config error: {_format_error(err)}") from None
    except RecursionError:  # a YAML alias that holds itself, in the file and an override
        raise ConfigError("config error: values nested too deeply") from None


def _read_yaml(file: Path) -> dict[str, Any]:
    """The top-level mapping of a YAML config file; anything else is one ConfigError line."""
    try:
        data = yaml.load(file.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
    except UnicodeDecodeError as err:
        raise ConfigError(f"{file}: not UTF-8 text (byte {err.start})") from None
    except OSError as err:
        raise ConfigError(f"{file}: cannot read ({err.strerror})") from None
    except Exception as err:  # not valid YAML (see above _TextDates)
        reason = "nested too deeply" if isinstance(err, RecursionError) else _first_line(err)
        raise ConfigError(f"{file}: not valid YAML ({reason})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{file}: expected a mapping of config keys at the top level")
    return data


def dump_config(cfg: Config) -> str:
    """The resolved config as YAML (written next to every run's outputs)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def _check_per_site(cfg: Config) -> None:
    """Per-site files (data.path with {node}): the labels are agreed in the config, and the
    source is a file per node."""
    d = cfg.data
    if d.path.startswith("bundled:") or not Path(d.path).suffix:
        raise ValueError(
            f"data.path={d.path}: {{node}} names one CSV / JSONL / JSON file per site "
            "(e.g. sites/site_{node}.csv), not a single dataset"
        )
    if d.labels is None:
        raise ValueError("data.labels=[...] is required with per-site files (data.path has {node})")
    if cfg.task != "classification":
        raise ValueError("per-site files (data.path with {node}) need task=classification")
    if d.eval_size >= 1 and not float(d.eval_size).is_integer():
        raise ValueError(f"data.eval_size={d.eval_size}: a fraction (< 1) or a whole count")
