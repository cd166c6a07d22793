"""What a run builds once and every method shares: graph, data, model and starting adapter;
and the party of nodes a process plays for each method. Both runtimes start here."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from declora.algorithms import partition as part
from declora.algorithms.methods import METHODS, Method
from declora.algorithms.schedule import Schedule, relay_tree, schedule_for, server
from declora.algorithms.tensors import State
from declora.config import Config, ConfigError
from declora.learning import privacy
from declora.learning.adapters import build_model, load_tokenizer, trainable_state
from declora.learning.capacity import check_sizes
from declora.learning.dataset import Dataset, concat
from declora.learning.devices import CPU, choose
from declora.learning.dpsgd import ExampleGrads
from declora.learning.tasks import Task, load_task_data, task_for
from declora.learning.train import Node, moment_template
from declora.learning.vectorize import Together
from declora.protocol import keys, wire
from declora.protocol.exchange import Exchange
from declora.protocol.gossip import Link
from declora.protocol.keys import Keys
from declora.protocol.relay import RelayExchange
from declora.protocol.rounds import Party, say
from declora.protocol.tracking import TrackingExchange

POOLED_STREAM = 10**6  # RNG stream of the pooled model, apart from every node's
TOGETHER_STREAM = 10**6 + 1  # RNG stream of the nodes' stacked batches (vectorize=true)


@dataclass
class Session:
    """Everything built once per run and shared by all methods."""

    cfg: Config
    task: Task
    model: nn.Module  # the frozen base with LoRA, once in memory
    pad_id: int
    train: Dataset
    parts: list[np.ndarray]  # row ids of each node, into train
    node_rows: list[int]  # training rows of each node (also where train holds one node's only)
    graph: Schedule  # the configured graph: each round's edges and mixing matrix
    init: State  # identical starting adapter for every node (CPU tensors, as sent)
    val: list[dict]  # validation batches: curves and choices during training
    val_nodes: list[dict]  # the first node_eval_size validation rows: each node's own curve
    test: list[dict]  # test batches: scored once, at the end
    key: bytes | None  # HMAC key (security.key_file)
    budgets: dict[str, dict[int, privacy.Budget]] = field(default_factory=dict)  # DP-SGD
    site_val: dict[int, list[dict]] = field(default_factory=dict)  # per-site files: own rows
    site_test: dict[int, list[dict]] = field(default_factory=dict)
    device: torch.device = CPU  # where the model trains and evaluates (config ``device``)

    def collate(self, ds: Dataset, idx) -> dict:
        """A training batch of rows ``idx`` of ``ds``, as the task builds it."""
        return self.task.collate(ds, idx, self.pad_id)


def graph_for(cfg: Config) -> Schedule:
    """The config's graph, round by round (edges and checked mixing matrices); bad settings
    raise ConfigError."""
    t = cfg.topology
    try:
        return schedule_for(t.kind, cfg.nodes, cfg.mixing, t.p, t.edges, cfg.seed, t.degree)
    except ValueError as err:
        raise ConfigError(f"topology: {err}") from None


def split(cfg: Config, labels: np.ndarray) -> list[np.ndarray]:
    """Row ids of each node's share of the training rows whose labels are ``labels``
    (config ``partition``)."""
    p = cfg.partition
    try:
        return part.partition(
            labels, cfg.nodes, p.kind, alpha=p.alpha, proportions=p.proportions, seed=cfg.seed
        )
    except ValueError as err:
        raise ConfigError(f"partition: {err}") from None


def prepare(
    cfg: Config,
    node: int | None = None,
    device: torch.device | None = None,
    key: bytes | None = None,
) -> Session:
    """Validate the graph and data against the config and load the model onto ``device``
    (default: the one config ``device`` names) (writes nothing). ``key``: the secret of
    ``security.key_file`` when the caller has read it already (it is read here otherwise).

    With ``node`` (a distributed process), ``train`` keeps only that node's rows: the others
    are dropped right after the partition (or never read: per-site files), and every other
    node's ``parts`` entry is empty. Sizes that cannot run
    (:func:`declora.learning.capacity.check_sizes`) are refused first.
    """
    check_sizes(cfg, held=None if node is None else 1)
    device = choose(cfg.device) if device is None else device
    graph = graph_for(cfg)
    key = read_key(cfg) if key is None else key
    task, tok = task_for(cfg), load_tokenizer(cfg)
    load = _sites if cfg.data.per_site else _one_file
    train, parts, node_rows, common, sites = load(cfg, tok, node)
    # a distributed process plays dec-lora's nodes only; the simulator every method
    played = {m: METHODS[m].pooled for m in cfg.methods if node is None or not METHODS[m].pooled}
    budgets = privacy.plan(cfg, node_rows, played)
    model, init = _model(cfg, train, device)
    if budgets:  # every trainable tensor must sit in a Linear layer (per-example gradients)
        ExampleGrads(model, list(init))
    pad = tok.pad_token_id
    batches = lambda ds, limit=None: task.eval_batches(ds, pad, limit)  # noqa: E731
    return Session(
        cfg=cfg,
        task=task,
        model=model,
        pad_id=pad,
        train=train,
        parts=parts,
        node_rows=node_rows,
        graph=graph,
        init=init,
        val=batches(common.val) if common else [],
        val_nodes=batches(common.val, cfg.node_eval_size) if common else [],
        test=batches(common.test) if common else [],
        key=key,
        budgets=budgets,
        site_val={i: batches(sp.val) for i, sp in sites.items()},
        site_test={i: batches(sp.test) for i, sp in sites.items()},
        device=device,
    )


def read_key(cfg: Config) -> Keys | None:
    """The keys of ``security.key_file`` (None without one): read once per process."""
    return keys.read_key(cfg.security.key_file) if cfg.security.key_file else None


def _one_file(cfg: Config, tok, node: int | None):
    """(training rows, each node's row ids into them, every node's training rows, the
    held-out splits, {}) of one data file."""
    splits = load_task_data(cfg, tok)
    train = splits.train
    parts = split(cfg, train.labels)
    node_rows = [len(ix) for ix in parts]
    if node is not None:
        train = train.subset(parts[node])
        parts = [np.arange(len(train)) if i == node else ix[:0] for i, ix in enumerate(parts)]
    return train, parts, node_rows, splits, {}


def check_privacy(cfg: Config) -> None:
    """Refuse DP settings that cannot run on the config's one data file (each node's rows
    from the partition; no model is loaded): ``declora launch`` calls it before torchrun."""
    if cfg.privacy.enabled and not cfg.data.per_site:
        _, _, node_rows, _, _ = _one_file(cfg, load_tokenizer(cfg), None)
        privacy.plan(cfg, node_rows, {"dec-lora": False})


def _sites(cfg: Config, tok, node: int | None):
    """Per-site files: only the files of the nodes this process holds (all of them in the
    simulator), each with its own held-out rows; the common set of ``eval.gather`` is site
    0's held-out rows (None where site 0 is not held)."""
    held = range(cfg.nodes) if node is None else [node]
    sites = {i: load_task_data(cfg, tok, node=i) for i in held}
    train = concat([sp.train for sp in sites.values()])
    parts, start = [np.arange(0)] * cfg.nodes, 0
    for i, sp in sites.items():
        parts[i] = np.arange(start, start + len(sp.train))
        start += len(sp.train)
    return train, parts, [len(ix) for ix in parts], sites.get(0), sites


def _model(cfg: Config, train: Dataset, device: torch.device):
    """The frozen base with LoRA on ``device``, and the starting adapter every node shares."""
    model = build_model(cfg, len(train.label_names), device)
    init = trainable_state(model)
    if not init:
        raise ConfigError("lora.targets matched no trainable tensors")
    for p in model.parameters():  # nodes own the trainable tensors; the module stays frozen
        p.requires_grad_(False)
    return model, init


def party_for(
    s: Session,
    method: Method,
    held: list[int] | None = None,
    run: bytes = bytes(wire.RUN_BYTES),
    warn=say,
    node_rows: list[int] | None = None,
) -> Party:
    """The nodes a process plays for ``method``: all of them (simulator) or ``held`` (one
    distributed process), their messages bound to ``run`` and their refusals told to
    ``warn``; ``node_rows``: every node's training rows where this process does not know
    them (per-site files: from the start-up handshake). Every method sees the same number of
    training samples per round, nodes x local_steps x batch_size: the pooled model takes
    nodes x local_steps steps."""
    cfg = s.cfg.for_method(method.name)
    rows = s.node_rows if node_rows is None else node_rows
    mixing = _mixing(s, cfg, method)
    nodes, steps = _nodes(s, cfg, method, held, rows)
    return Party(
        method=method,
        model=s.model,
        collate=s.collate,
        nodes=nodes,
        exchanges=[_exchange(s, cfg, method, n.node_id, mixing, rows) for n in nodes],
        steps=steps,
        batch_size=cfg.batch_size,
        size=1 if method.pooled else cfg.nodes,
        mixing=mixing,
        rounds=cfg.rounds,
        finish_rounds=finishing(cfg, method, mixing),
        gossip_steps=cfg.gossip_steps if method.gossips else 1,
        link=Link(s.key, cfg.security.encrypt, run),
        losses=s.task.example_losses,
        together=_together(s, cfg, len(nodes)),
        warn=warn,
    )


def finishing(cfg: Config, method: Method, mixing: Schedule | None) -> int:
    """The method's gossip-only rounds: ``finish_rounds``, ended early once they have averaged
    exactly: plain gossip of uncompressed factors (``consensus`` ab or frozen_a, no tracking,
    no relay) with no ``faults``, once the graph's matrices from the last training round on
    multiply to J within 1e-12 (Base after at most its period, one-peer exponential at a
    power of 2; a static graph only with many gossip steps); none when the last training
    round's own steps did (the complete graph; Base-2 with as many gossip steps as its
    period). Every node then holds the average to far below float32's
    resolution, and more rounds would send it back and forth unchanged. Every process
    computes the same count from the config (under launch a peer that does not answer fails
    the round, so no message is silently missing)."""
    if not method.gossips or cfg.exchange == "gradients":
        return 0  # exchange=gradients: the nodes are one model after every round
    exact = (
        mixing is not None
        and cfg.exchange == "gossip"
        and cfg.correction == "none"
        and cfg.compression.kind == "none"
        and cfg.consensus in ("ab", "frozen_a")
        and cfg.faults.link_drop == 0
        and cfg.faults.node_drop == 0
    )
    if exact and cfg.finish_rounds and mixing.exact_within(cfg.rounds - 1, 1) == 1:
        return 0  # the last training round's gossip steps ended at the exact average
    k = mixing.exact_within(cfg.rounds, cfg.finish_rounds) if exact else None
    return cfg.finish_rounds if k is None else k


def finish_rounds_of(cfg: Config, name: str) -> int:
    """Method ``name``'s gossip-only rounds under ``cfg`` (:func:`finishing`), without a
    session: for what a run or an estimate says beforehand."""
    own = cfg.for_method(name)
    return finishing(own, METHODS[name], stepped(graph_for(own), own))


def _mixing(s: Session, cfg: Config, method: Method) -> Schedule | None:
    """Who the method's nodes mix with, round by round (None: nobody)."""
    if method.pooled or not method.mixes:
        return None
    if method.server:
        return server(cfg.nodes)
    return relay_tree(s.graph) if cfg.exchange == "relay" else stepped(s.graph, cfg)


def stepped(graph: Schedule, cfg: Config) -> Schedule:
    """``graph`` with dec-lora's gossip steps a round (a time-varying graph walks on through
    its matrices within the round)."""
    return graph.with_steps(cfg.for_method("dec-lora").gossip_steps)


def _exchange(s: Session, cfg: Config, method: Method, i: int, mixing, rows: list[int]):
    """Node i's side of the exchange: gossip (direct or CHOCO), tracking, or relay."""
    if method.gossips and cfg.exchange == "relay":
        tree = np.flatnonzero(mixing.adj[i]).tolist()
        if cfg.weighting == "rows":
            return RelayExchange(i, s.init, tree, rows[i], sum(rows), cfg.consensus)
        return RelayExchange(i, s.init, tree, 1.0, cfg.nodes, cfg.consensus)
    if method.gossips and cfg.correction == "tracking":
        return TrackingExchange(i, s.init, cfg.compression, cfg.seed, cfg.consensus)
    template = moment_template(s.init) if mixes_moments(cfg, method) else s.init
    return Exchange(i, template, cfg.compression, seed=cfg.seed, consensus=cfg.consensus)


def mixes_gradients(cfg: Config, method: Method) -> bool:
    """``exchange=gradients`` for dec-lora: its nodes mix each step's gradient, not the
    adapter (the other methods ignore the setting)."""
    return method.gossips and cfg.exchange == "gradients"


def mixes_moments(cfg: Config, method: Method) -> bool:
    """``second_moment`` mixed (or auto, where it applies) for a method whose nodes average
    their models: each node mixes its AdamW second moments with the adapter."""
    return cfg.moments_mixed() and method.mixes and not method.pooled


def update_scale(cfg: Config, method: Method, i: int, rows: list[int]) -> float:
    """``weighting=rows`` for a method whose nodes average their models (gossip, tracking, a
    server): node i's every update times n n_i / sum(n), so that the mean the network keeps
    descends the pooled objective sum_i (n_i / sum(n)) f_i (AdamW cancels a gradient's
    scale, not its own update's; under ``exchange=gradients`` the gradient it sends is
    scaled, before the one optimizer). Relay weights its sums instead: 1."""
    if cfg.weighting != "rows" or method.pooled or not method.mixes:
        return 1.0
    if method.gossips and cfg.exchange == "relay":
        return 1.0
    return len(rows) * rows[i] / sum(rows)


def _nodes(s: Session, cfg: Config, method: Method, held: list[int] | None, rows: list[int]):
    """(the held nodes, their optimizer steps a round)."""
    if method.pooled:
        pooled = s.train.subset(np.sort(np.concatenate(s.parts)))
        steps = cfg.nodes * cfg.local_steps
        dp = s.budgets.get(method.name, {}).get(0)
        total = cfg.rounds * steps
        one = Node.create(0, pooled, s.init, cfg, POOLED_STREAM, total, dp, device=s.device)
        return [one], steps
    dp = s.budgets.get(method.name, {})
    nodes = [
        Node.create(
            i,
            s.train.subset(s.parts[i]),
            s.init,
            cfg,
            i,
            budget=dp.get(i),
            device=s.device,
            scale=update_scale(cfg, method, i, rows),
        )
        for i in (range(cfg.nodes) if held is None else held)
    ]
    for node in nodes:
        node.moments = mixes_moments(cfg, method)
        node.gradients = mixes_gradients(cfg, method)
    return nodes, cfg.local_steps


def _together(s: Session, cfg: Config, held: int) -> Together | None:
    """How the held nodes train in one batch (``vectorize=true`` and more than one node)."""
    if not cfg.vectorize or held < 2:
        return None
    rng = torch.Generator().manual_seed(cfg.seed * 100_003 + TOGETHER_STREAM).get_state()
    return Together(s.task.loss_terms, s.pad_id, rng)
