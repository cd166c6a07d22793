"""The whole run configuration, typed and validated: :class:`Config` (its sections are in
:mod:`declora.config.sections`), and the checks that span several sections."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, PrivateAttr, field_validator, model_validator

from declora.algorithms.schedule import TIME_VARYING, period_of, schedule_for
from declora.algorithms.topology import MIXING_RULES
from declora.config.errors import ConfigError
from declora.config.labels import is_missing, label_key
from declora.config.sections import (
    DEVICE,
    SEED_MAX,
    CompressionConfig,
    DataConfig,
    EvalConfig,
    FaultsConfig,
    GossipSteps,
    Int,
    LoraSettings,
    MethodName,
    MethodSettings,
    ModelConfig,
    PartitionConfig,
    PrivacyConfig,
    Rule,
    SecurityConfig,
    TaskName,
    TopologyConfig,
    TuneConfig,
    _Section,
)

# the graph and mixing matrix are dense (n, n) arrays in every process, and the spectral gap
# takes their eigenvalues: 10,000 nodes is 0.9 GB and about a minute on 2 cores
MAX_NODES = 10_000


# what subrounds multiply: counted in the rounds a method plays
PLAYED = ("rounds", "eval_every", "checkpoint_every")


class Config(_Section):
    """A run's whole configuration: every key with its default and a one-line help
    (``declora configs --fields``; the reference in docs/reference/config.md). Sections are
    the models of :mod:`declora.config.sections`. Build one with
    :func:`declora.config.load_config`; it is saved as ``config.yaml`` beside every run."""

    _played: bool = PrivateAttr(False)  # a method's config (for_method): subrounds applied

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
    subrounds: Int = Field(
        1,
        ge=1,
        description="play every round as this many rounds of batch_size / subrounds rows a "
        "node: the same samples in more, smaller averaged steps (rounds, eval_every and "
        "checkpoint_every count the rounds played); mostly per method, e.g. "
        "per_method.dec-lora.subrounds=2",
    )
    lr: float = Field(1e-2, gt=0, description="learning rate")
    per_method: dict[MethodName, MethodSettings] = Field(
        default_factory=lambda: {
            "centralized": MethodSettings(lr=0.001079, head_lr_scale=8.652942, schedule="cosine"),
            "dec-lora": MethodSettings(
                lr=0.0078515,
                head_lr_scale=1.040526,
                schedule="cosine",
                finish_rounds=0,
                gossip_steps="period",
                subrounds=2,
                compression=CompressionConfig(kind="quantize", bits=8),
            ),
            "local": MethodSettings(lr=0.001202, head_lr_scale=1.080764, schedule="constant"),
        },
        description="values one method uses instead of the top-level ones, e.g. "
        "{centralized: {lr: 0.002}} (declora tune writes them); a top-level value given in "
        "the config file or on the command line wins over the per-method ones below it "
        "(built-in, then file) unless that layer gives the method's own value too",
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
        "adapters agree, at the cost of bytes and no compute; they end early once the graph "
        "has averaged exactly (Base, one-peer exponential; not under faults or compression)",
    )
    gossip_steps: GossipSteps = Field(
        1,
        description="mixing steps after each round's local steps (dec-lora): bytes x this, "
        "the nodes closer to the network average under skewed data; a static graph mixes with "
        "its W again, a time-varying one takes its next matrices. period: the graph's period "
        "(Base-2 on 8 nodes: 3, the exact average every round; 1 on a static graph)",
    )
    exchange: Literal["gossip", "relay", "gradients"] = Field(
        "gossip",
        description="dec-lora: gossip (mix with the round's W) or relay (sums and counts relayed "
        "along a spanning tree of the graph: every node holds the exact average of every "
        "node's model, delayed by its distance, RelaySum/Model), or gradients (gossip each "
        "step's gradient before the optimizer: every node applies the network's gradient with "
        "an optimizer that then agrees everywhere, large-batch training; needs a graph that "
        "averages exactly every round, such as Base with gossip_steps=period)",
    )
    correction: Literal["none", "tracking"] = Field(
        "none",
        description="dec-lora: tracking adds each node's correction c_i, the network's mean "
        "update minus its own, to what it mixes (gradient tracking on the optimizer's "
        "update; twice the bytes)",
    )
    second_moment: Literal["auto", "own", "mixed"] = Field(
        "own",
        description="mixing methods: AdamW's second-moment estimate (exp_avg_sq), each node's "
        "own (the default) or mixed with its neighbours like the adapter (mixed: the nodes "
        "divide by about the network's estimate, so their mean update is about AdamW's on the "
        "mean gradient; twice the bytes; Chen et al. 2021, arXiv 2109.03194); auto: mixed "
        "where it applies (adamw, plain gossip, no compression, consensus ab or frozen_a), "
        "own elsewhere",
    )
    weighting: Literal["uniform", "rows"] = Field(
        "rows",
        description="mixing methods: rows (each node's update weighted by its training rows: "
        "the pooled objective, the default; each node's row count is shared) or uniform "
        "(every node's objective counts alike, the paper's)",
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
        24, ge=1, description="evaluate every this many rounds (and at the end)"
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
        300.0,
        gt=0,
        le=86_400,  # a day; torch's timedelta overflows near 1e14 s
        description="launch: seconds to wait for a neighbour before failing a round",
    )
    report_to: list[Literal["tensorboard", "mlflow", "wandb"]] = Field(
        [],
        description="metric loggers that get every metrics.jsonl record and the config, as in "
        "Hugging Face Trainer: tensorboard (out/tensorboard), mlflow, wandb; none for none",
    )

    @field_validator("report_to", mode="before")
    @classmethod
    def _loggers(cls, value: Any) -> Any:
        """report_to=tensorboard is [tensorboard]; none (alone) is []."""
        names = [value] if isinstance(value, str) else value
        if isinstance(names, list) and "none" in names:
            if len(names) > 1:
                raise ValueError("none reports to no logger: give it alone")
            return []
        if isinstance(names, list) and len(set(names)) != len(names):
            raise ValueError("each logger may appear once")
        return names

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

    @model_validator(mode="before")
    @classmethod
    def _labels_as_text(cls, data: Any) -> Any:
        """``data.labels=[0, 1]``: YAML reads numbers, the labels are their text; ``yes`` and
        ``no`` are YAML's booleans, so a label of that name must be quoted."""
        d = data.get("data") if isinstance(data, dict) else None
        labels = d.get("labels") if isinstance(d, dict) else None
        if not isinstance(labels, list):
            return data
        if any(isinstance(x, bool) or not isinstance(x, str | int | float) for x in labels):
            raise ValueError(
                f"data.labels={labels}: each label is a text; quote them "
                '(data.labels=\'["yes", "no"]\'; YAML reads yes, no, true, off as booleans)'
            )
        text = [x if isinstance(x, str) else str(x) for x in labels]
        return {**data, "data": {**d, "labels": text}}

    @model_validator(mode="after")
    def _cross_checks(self) -> Config:
        if len(set(self.methods)) != len(self.methods):
            raise ValueError("methods: each method may appear once")
        if self.partition.kind == "label_skew" and self.partition.proportions is None:
            raise ValueError("partition.proportions is required when partition.kind=label_skew")
        if self.topology.kind == "custom" and not self.topology.edges:
            raise ValueError("topology.edges is required when topology.kind=custom")
        if self.sent().scheme == "choco" and (self.faults.link_drop or self.faults.node_drop):
            raise ValueError(
                "compression.scheme=choco needs every message delivered (a missed one leaves a "
                "public copy behind for good); use compression.scheme=direct with faults"
            )
        if self.consensus == "product" and self.sent().scheme == "choco":
            raise ValueError(
                "consensus=product needs compression.scheme=direct (CHOCO's public copies are "
                "mixed as factors, not products)"
            )
        d = self.data
        _check_data_path(self)
        if d.text_column == d.label_column:
            raise ValueError(f"data.text_column and data.label_column are both '{d.text_column}'")
        _pair_checks(self)
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
        if "fedavg" in self.methods and self.for_method("fedavg").compression.kind != "none":
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

    @model_validator(mode="after")
    def _subround_checks(self) -> Config:
        """Every subround takes batch_size / subrounds rows a node: the count must divide."""
        given = {"subrounds": self.subrounds} | {
            f"per_method.{m}.subrounds": own.subrounds
            for m, own in self.per_method.items()
            if own.subrounds
        }
        for where, k in given.items():
            if self.batch_size % k:
                raise ValueError(
                    f"{where}={k} must divide batch_size={self.batch_size}: every subround "
                    "takes batch_size / subrounds rows a node (subrounds=1: none)"
                )
        return self

    @model_validator(mode="after")
    def _remedy_checks(self) -> Config:
        """The graphs and remedies against label skew, in the combinations that are sound."""
        varying = self.topology.kind in ("one_peer_exponential", "base")
        faults = self.faults.link_drop or self.faults.node_drop
        if self.topology.kind == "one_peer_exponential" and (
            faults or self.sent().scheme == "choco"
        ):
            raise ValueError(
                "topology.kind=one_peer_exponential sends one way in each round: a dropped "
                "link cannot be re-weighted without moving the network average, and CHOCO's "
                "copies need links both ways; use topology.kind=base (its rounds go both ways)"
            )
        if self.exchange == "relay":
            _relay_checks(self, varying)
        if self.exchange == "gradients":
            _gradient_checks(self)
        if self.correction == "tracking":
            _tracking_checks(self)
        if self.second_moment == "mixed" and (why := _moment_conflict(self)):
            raise ValueError(why)
        return self

    def moments_mixed(self) -> bool:
        """Whether mixing nodes mix AdamW's second moment: ``mixed``, or ``auto`` where it
        applies."""
        if self.second_moment == "auto":
            return _moment_conflict(self) is None
        return self.second_moment == "mixed"

    def one_seed(self, command: str) -> None:
        """``command`` runs one seed: ``seeds=[...]`` is refused in one line."""
        if self.seeds is not None:
            raise ConfigError(
                f"{command} runs one seed at a time (seed=N); seeds=[...] runs the job once "
                "per seed under declora run"
            )

    def for_method(self, method: str) -> Config:
        """This config with the method's own values (``per_method``) in place of the top-level
        ones, its rounds and batch those it plays (``subrounds``, applied once: a method's
        config asked again keeps them)."""
        own = self.per_method.get(method)
        fields = MethodSettings.model_fields if own is not None else {}
        given = {k: v for k in fields if (v := getattr(own, k)) is not None}
        cfg = self.model_copy(update=given) if given else self
        if cfg.gossip_steps == "period":
            period = period_of(cfg.topology.kind, cfg.nodes, cfg.topology.degree)
            cfg = cfg.model_copy(update={"gossip_steps": period})
        if self._played:  # subrounds applied already: the rounds and batch stay those played
            kept = {f: getattr(self, f) for f in (*PLAYED, "batch_size")}
            return cfg.model_copy(update={**kept, "subrounds": 1})
        if (k := cfg.subrounds) == 1:
            return cfg
        # checked by _subround_checks: subrounds divides batch_size
        played = {f: getattr(cfg, f) * k for f in PLAYED} | {"batch_size": cfg.batch_size // k}
        cfg = cfg.model_copy(update={**played, "subrounds": 1})
        cfg._played = True
        return cfg

    def sent(self) -> CompressionConfig:
        """What dec-lora's messages carry: its own ``per_method`` compression, or the
        top-level one (what the checks of which remedies combine read)."""
        return self.for_method("dec-lora").compression


def _relay_checks(cfg: Config, varying: bool) -> None:
    """exchange=relay: what relaying sums along a fixed tree cannot combine with."""
    if varying:
        raise ValueError(
            f"exchange=relay relays along a fixed spanning tree; topology.kind="
            f"{cfg.topology.kind} changes every round: choose a static graph "
            "(topology.kind=ring, ...)"
        )
    if cfg.sent().kind != "none":
        raise ValueError(
            "exchange=relay passes on sums of what it received; compressed, every hop would "
            "add its own rounding: use compression.kind=none"
        )
    if cfg.consensus == "product":
        raise ValueError(
            "exchange=relay averages A and B as they are: use consensus=ab or frozen_a"
        )
    if cfg.correction == "tracking":
        raise ValueError("exchange=relay already averages exactly: use correction=none with it")
    if cfg.for_method("dec-lora").gossip_steps > 1:
        raise ValueError(
            "exchange=relay relays once a round: use gossip_steps=1 (or period, the built-in: 1 "
            "on a static graph)"
        )


def _gradient_checks(cfg: Config) -> None:
    """exchange=gradients: every node must apply the same gradient, so that the nodes stay
    one model; anything that leaves two nodes with different averages is refused."""
    own = cfg.for_method("dec-lora")
    if cfg.faults.link_drop or cfg.faults.node_drop:
        raise ValueError(
            "exchange=gradients needs every message: a lost one leaves two nodes with "
            "different gradients, and nothing pulls them back; use exchange=gossip with faults"
        )
    if cfg.sent().kind != "none" or cfg.consensus != "ab" or cfg.correction != "none":
        raise ValueError(
            "exchange=gradients averages the gradients exactly as plain vectors: use "
            "compression.kind=none, consensus=ab and correction=none"
        )
    if own.local_steps != 1:
        raise ValueError(
            "exchange=gradients averages the gradient of every step: use local_steps=1 (more "
            "rows a step: batch_size)"
        )
    if cfg.vectorize or cfg.precision == "fp16":
        raise ValueError(
            "exchange=gradients already gives every node the same optimizer state; it runs "
            "with vectorize=false and precision fp32 or bf16"
        )
    if not _averages_every_round(cfg, own.gossip_steps):
        raise ValueError(
            f"exchange=gradients needs the exact average every round; topology.kind="
            f"{cfg.topology.kind} with {own.gossip_steps} gossip step(s) does not give it: use "
            "topology.kind=base (or complete) with gossip_steps=period"
        )


def _averages_every_round(cfg: Config, steps: int) -> bool:
    """Whether every round's gossip steps multiply to J (to 1e-12) on the configured graph:
    a time-varying graph over its period, the complete graph, nothing else."""
    kind = cfg.topology.kind
    if kind not in (*TIME_VARYING, "complete"):
        return False
    graph = schedule_for(kind, cfg.nodes, cfg.mixing, degree=cfg.topology.degree)
    stepped = graph.with_steps(steps)
    return all(stepped.exact_within(t, 1) == 1 for t in range(max(steps, 1) + 1))


def _tracking_checks(cfg: Config) -> None:
    """correction=tracking: it mixes the adapter and its correction once a round."""
    if cfg.sent().scheme == "choco" or cfg.consensus == "product":
        raise ValueError(
            "correction=tracking mixes the adapter and its correction as plain vectors: use "
            "compression.scheme=direct and consensus=ab or frozen_a"
        )
    if cfg.for_method("dec-lora").gossip_steps > 1:
        raise ValueError(
            "correction=tracking mixes once a round: use gossip_steps=1 (the built-in, period, "
            "takes all of a time-varying graph's matrices: Base-2's 3 on 8 nodes)"
        )


def _moment_conflict(cfg: Config) -> str | None:
    """Why AdamW's second moment cannot be mixed under ``cfg`` (None: it can). They are
    mixed as plain vectors beside the adapter, exactly."""
    if cfg.optimizer != "adamw":
        return (
            f"second_moment=mixed mixes AdamW's second moment; optimizer={cfg.optimizer} "
            "keeps none: use optimizer=adamw or second_moment=own"
        )
    if cfg.exchange != "gossip" or cfg.correction == "tracking":
        return (
            "second_moment=mixed is gossip's remedy: relay, tracking and mixed gradients "
            "already move the nodes by the network's update; use exchange=gossip and "
            "correction=none"
        )
    if cfg.sent().kind != "none" or cfg.consensus == "product":
        return (
            "second_moment=mixed averages the moments exactly as plain vectors: use "
            "compression.kind=none and consensus=ab or frozen_a"
        )
    return None


def _check_data_path(cfg: Config) -> None:
    """What data.path names: one file per site (it holds {node}), or one dataset, where
    the per-site keys do not apply."""
    d = cfg.data
    if d.per_site:
        _check_per_site(cfg)
        return
    if "{node" in d.path:
        raise ValueError(
            f"data.path={d.path}: only {{node}} is expanded, to the site's number "
            "(site_{node}.csv names site_0.csv, site_1.csv, ...): no format such as {node:03d}"
        )
    for key in ("labels", "eval_size"):
        given = getattr(d, key)
        if given != DataConfig.model_fields[key].default:
            raise ValueError(
                f"data.{key} applies to per-site files (data.path with {{node}}); one dataset "
                "holds its own labels and holds out data.test_size and data.val_size rows"
            )


def _pair_checks(cfg: Config) -> None:
    """data.text_pair_column: a second text beside data.text_column, for classification or
    label words (whose prompt names both sides)."""
    d = cfg.data
    pair = d.text_pair_column
    if pair is None:
        if "{text_pair}" in d.prompt_template:
            raise ValueError("data.prompt_template names {text_pair}: set data.text_pair_column")
        return
    if pair in (d.text_column, d.label_column):
        raise ValueError(f"data.text_pair_column={pair} is also the text or label column")
    if d.prompt_column is not None:
        raise ValueError(
            "data.text_pair_column is for classification (or data.label_words), not instruction "
            "pairs: put both texts in data.prompt_column"
        )
    if cfg.task == "causal_lm" and "{text_pair}" not in d.prompt_template:
        raise ValueError(
            "task=causal_lm with data.text_pair_column: data.prompt_template must place both "
            "texts, e.g. 'premise: {text} hypothesis: {text_pair} answer:'"
        )


def _check_per_site(cfg: Config) -> None:
    """Per-site files (data.path with {node}): the labels are agreed in the config, and the
    source is a file per node."""
    d = cfg.data
    if d.path.startswith("bundled:") or not Path(d.path).suffix:
        raise ValueError(
            f"data.path={d.path}: {{node}} names one CSV / JSONL / JSON / Parquet file per site "
            "(e.g. sites/site_{node}.csv), not a single dataset"
        )
    if d.labels is None:
        raise ValueError("data.labels=[...] is required with per-site files (data.path has {node})")
    if cfg.task != "classification":
        raise ValueError("per-site files (data.path with {node}) need task=classification")
    if d.eval_size >= 1 and not (float(d.eval_size).is_integer() and d.eval_size < 2**31):
        raise ValueError(f"data.eval_size={d.eval_size:g}: a fraction (< 1) or a whole count")
    _check_labels(d.labels)


def _check_labels(labels: list[str]) -> None:
    """Each class once (after the rule that makes two texts one class, :func:`label_key`),
    and none that means no label."""
    seen: dict[str, str] = {}
    for name in labels:
        key = label_key(name)
        if is_missing(key):
            raise ValueError(f"data.labels: '{name}' means no label; name the class otherwise")
        if key in seen:
            again = "given twice" if name == seen[key] else f"the class '{seen[key]}' again"
            raise ValueError(f"data.labels: '{name}' is {again}; give each class once")
        seen[key] = name
