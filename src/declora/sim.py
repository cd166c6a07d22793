"""In-process runtime: all nodes in one process over ONE frozen base model.

Memory is base + N x (adapter + optimizer state), not N x model. The round is the paper's:
every node takes ``local_steps`` steps on its own rows, then mixes with its neighbours.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from declora import faults
from declora import partition as part
from declora import topology as topo
from declora.adapters import (
    State,
    build_model,
    export_adapter,
    load_tokenizer,
    numel,
    trainable_state,
)
from declora.compress import describe
from declora.config import Config, ConfigError, dump_config
from declora.consensus import consensus_distances, network_average
from declora.data import Dataset, eval_batches, load_dataset
from declora.gossip import Exchange, row_weights
from declora.metrics import RunLog, evaluate, plot_curves, results_table
from declora.train import Node, local_steps


@dataclass
class Setup:
    """Everything built once per run and shared by all methods."""

    cfg: Config
    model: object
    pad_id: int
    train: Dataset
    parts: list[np.ndarray]  # row ids of each node, into train
    sizes: list[int]  # training rows of each node (also where train holds one node's only)
    adj: np.ndarray  # (n, n) bool
    W: np.ndarray  # (n, n) mixing matrix
    init: State  # identical starting adapter for every node
    eval_full: list[dict]
    eval_nodes: list[dict]


def graph_for(cfg: Config) -> tuple[np.ndarray, np.ndarray]:
    """The config's graph (adjacency) and checked mixing matrix; bad settings -> ConfigError."""
    try:
        adj = topo.build_graph(
            cfg.topology.kind, cfg.nodes, p=cfg.topology.p, edges=cfg.topology.edges, seed=cfg.seed
        )
        return adj, topo.mixing_matrix(adj, cfg.mixing)
    except ValueError as err:
        raise ConfigError(f"topology: {err}") from None


def prepare(cfg: Config, node: int | None = None) -> Setup:
    """Validate the graph and data against the config and load the model (writes nothing).

    With ``node`` (a distributed process), ``train`` keeps only that node's rows: the others
    are dropped right after the partition, and every other node's ``parts`` entry is empty.
    """
    adj, W = graph_for(cfg)
    tok = load_tokenizer(cfg)
    train, held_out = load_dataset(cfg, tok)
    try:
        parts = part.partition(
            train.labels,
            cfg.nodes,
            cfg.partition.kind,
            alpha=cfg.partition.alpha,
            proportions=cfg.partition.proportions,
            seed=cfg.seed,
        )
    except ValueError as err:
        raise ConfigError(f"partition: {err}") from None
    sizes = [len(ix) for ix in parts]
    if node is not None:
        train = train.subset(parts[node])
        parts = [np.arange(len(train)) if i == node else ix[:0] for i, ix in enumerate(parts)]
    model = build_model(cfg, num_labels=len(train.label_names))
    init = trainable_state_of(model)
    for p in model.parameters():  # nodes own the trainable tensors; the module stays frozen
        p.requires_grad_(False)
    pad_id = tok.pad_token_id
    return Setup(
        cfg=cfg,
        model=model,
        pad_id=pad_id,
        train=train,
        parts=parts,
        sizes=sizes,
        adj=adj,
        W=W,
        init=init,
        eval_full=eval_batches(held_out, pad_id),
        eval_nodes=eval_batches(held_out, pad_id, limit=cfg.node_eval_size),
    )


def trainable_state_of(model) -> State:
    """The PEFT trainable tensors, read before the module is frozen for functional calls."""
    state = trainable_state(model)
    if not state:
        raise ConfigError("lora.targets matched no trainable tensors")
    return state


def method_nodes(s: Setup, method: str) -> tuple[list[Node], np.ndarray | None, int]:
    """Nodes, mixing matrix (None = no communication) and steps per round for a method.

    Every method sees the same number of training samples per round: nodes x local_steps x batch.
    """
    cfg = s.cfg.for_method(method)
    if method == "centralized":
        pooled = s.train.subset(np.sort(np.concatenate(s.parts)))
        steps = cfg.nodes * cfg.local_steps
        node = Node.create(0, pooled, s.init, cfg, stream=10**6, total_steps=cfg.rounds * steps)
        return [node], None, steps
    nodes = [
        Node.create(i, s.train.subset(ix), s.init, cfg, stream=i) for i, ix in enumerate(s.parts)
    ]
    if method == "local":
        return nodes, None, cfg.local_steps
    if method == "fedavg":
        return nodes, np.full((cfg.nodes, cfg.nodes), 1.0 / cfg.nodes), cfg.local_steps
    return nodes, s.W, cfg.local_steps


def exchange(
    exchanges: list[Exchange], nodes: list[Node], W: np.ndarray, t: int, server: bool
) -> np.ndarray:
    """Every node sends its payload and mixes what it receives; returns bytes each node sent.

    With ``server`` (fedavg) each node uploads once and the server's average comes back (the
    broadcast is the server's traffic); otherwise one copy goes to each graph neighbour.
    A node with no live edge this round (faults) neither sends nor mixes, as in dist.
    """
    talks = (W > 0).sum(1) > 1  # (n,) nodes with at least one live neighbour
    payloads = [
        ex.outgoing(n.state(), t) if talks[i] else b""
        for i, (ex, n) in enumerate(zip(exchanges, nodes))
    ]
    mixed = {}
    for i, (ex, node) in enumerate(zip(exchanges, nodes)):
        if talks[i]:
            weights = row_weights(W, i)
            received = {j: payloads[j] for j in weights if j != i}
            mixed[i] = ex.incoming(node.state(), received, weights)
    for i, state in mixed.items():
        nodes[i].set_state(state)
    copies = np.ones(len(nodes)) if server else (W > 0).sum(1) - 1  # (n,) messages each sends
    return np.array([len(p) for p in payloads]) * copies


def evaluate_round(s: Setup, states: list[State]) -> dict:
    """Network-average adapter on the eval set; each node's own on its first node_eval_size rows."""
    rec = evaluate(s.model, network_average(states, s.cfg.consensus), s.eval_full)
    if len(states) > 1:
        batches = s.eval_nodes
        own = [evaluate(s.model, st, batches) for st in states]
        rec["node_accuracy_mean"] = float(np.mean([o["accuracy"] for o in own]))
        rec["node_accuracy_min"] = float(np.min([o["accuracy"] for o in own]))
        rec["node_f1_mean"] = float(np.mean([o["f1"] for o in own]))
        rec["node_loss_mean"] = float(np.mean([o["loss"] for o in own]))
        rec["node_eval_rows"] = sum(len(b["labels"]) for b in batches)
        rec.update(consensus_distances(states))
    return rec


def run_method(s: Setup, method: str, log: RunLog) -> tuple[dict, list[Node]]:
    """Train one method for ``rounds`` rounds, logging every ``eval_every`` rounds."""
    cfg = s.cfg
    nodes, W, steps = method_nodes(s, method)
    exchanges = [
        Exchange(n.node_id, s.init, cfg.compression, seed=cfg.seed, consensus=cfg.consensus)
        for n in nodes
    ]
    sent = np.zeros(len(nodes))  # cumulative bytes each node sent
    samples = 0
    start = time.perf_counter()
    bar = tqdm(range(1, cfg.rounds + 1), desc=f"{method:>11}", unit="round", leave=True)
    for t in bar:
        plan = round_plan(s, method, W, len(nodes), t)
        losses = [
            local_steps(s.model, node, steps, s.pad_id) if up else float("nan")
            for node, up in zip(nodes, plan.active)
        ]
        samples += int(plan.active.sum()) * steps * cfg.batch_size
        if W is not None:
            sent += exchange(exchanges, nodes, plan.W, t, server=method == "fedavg")
        if is_eval_round(cfg, t):
            rec = round_record(
                s,
                [n.state() for n in nodes],
                method=method,
                round=t,
                samples_seen=samples,
                train_loss=_mean_finite(losses),
                grad_norm=_mean_finite([n.last_grad_norm for n in nodes]),
                bytes_sent=int(sent.mean()),
                bytes_sent_total=int(sent.sum()),
                bytes_per_edge_round=max(ex.last_payload_size for ex in exchanges),
                wall_s=time.perf_counter() - start,
            )
            log.write(rec)
            bar.set_postfix(acc=f"{rec['accuracy']:.3f}", loss=f"{rec['loss']:.3f}")
    bar.close()
    return log.records[-1], nodes


def round_plan(s: Setup, method: str, W: np.ndarray | None, n: int, t: int) -> faults.RoundPlan:
    """Round t's W and active nodes: faults (config ``faults``) apply to dec-lora only."""
    if method == "dec-lora":
        return faults.plan_for(s.cfg, s.adj, W, t)
    return faults.no_faults(W, n)


def is_eval_round(cfg: Config, t: int) -> bool:
    return t % cfg.eval_every == 0 or t == cfg.rounds


def _mean_finite(values: list[float]) -> float:
    """Mean over the finite values (nodes that sat a round out report NaN); NaN if none."""
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def round_record(s: Setup, states: list[State], **fields) -> dict:
    """One metrics.jsonl record: the evaluation of ``states`` followed by ``fields``.

    The distributed runtime builds its records with this too, so both write the same keys.
    """
    rec = evaluate_round(s, states)
    rec.update(fields)
    return rec


def method_summary(method: str, last: dict) -> dict:
    """summary.json entry; for ``local`` the headline is the mean of the nodes' own adapters."""
    keys = ("accuracy", "f1", "loss")
    if method == "local":
        headline = {k: last[f"node_{k}_mean"] for k in keys}
        headline["evaluated"] = "mean of the nodes' own adapters (no node holds the average)"
    else:
        headline = {k: last[k] for k in keys}
        headline["evaluated"] = "network-average adapter" if method != "centralized" else "model"
    out = {
        **headline,
        "average_adapter": {k: last[k] for k in keys},
        "bytes_sent_per_node": last["bytes_sent"],
        "bytes_sent_total": last["bytes_sent_total"],
        "bytes_per_edge_round": last["bytes_per_edge_round"],
        "wall_s": round(last["wall_s"], 2),
        "rounds": last["round"],
        "samples_seen": last["samples_seen"],
    }
    renamed = {
        "node_accuracy_mean": "node_mean_accuracy",
        "node_accuracy_min": "node_min_accuracy",
        "consensus_ab": "consensus_ab",
    }
    out.update({new: last[old] for old, new in renamed.items() if old in last})
    return out


def make_out_dir(cfg: Config) -> Path:
    out = Path(cfg.out or f"runs/{datetime.now():%Y%m%d-%H%M%S}")
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"out={out} already holds files; choose an empty or new folder")
    out.mkdir(parents=True, exist_ok=True)
    return out


def write_run_files(s: Setup, out: Path) -> None:
    """config.yaml and labels.json, written when a run starts."""
    (out / "config.yaml").write_text(dump_config(s.cfg))
    (out / "labels.json").write_text(json.dumps(dict(enumerate(s.train.label_names)), indent=1))


def describe_run(s: Setup, out: Path) -> list[str]:
    """The lines a run opens with: graph, data, adapter, messages, faults."""
    cfg = s.cfg
    gap = topo.spectral_gap(s.W)
    comp = cfg.compression
    scheme = f"choco, gamma {comp.gamma:g}" if comp.scheme == "choco" else "direct"
    lines = [
        f"{cfg.nodes} nodes on a {cfg.topology.kind} ({cfg.mixing} weights, spectral gap {gap:.4f}); "
        f"{sum(s.sizes)} training rows, sizes {min(s.sizes)}-{max(s.sizes)}; "
        f"adapter {numel(s.init):,} values; output in {out}",
        f"messages: {describe(comp)}; scheme {scheme}",
    ]
    f = cfg.faults
    if f.link_drop or f.node_drop:
        lines.append(
            f"faults (dec-lora): each link down with p={f.link_drop:g}, each node out with "
            f"p={f.node_drop:g} per round; Metropolis weights on the surviving graph"
        )
    return lines


def finish_method(
    s: Setup, out: Path, summary: dict, method: str, last: dict, states: list[State]
) -> None:
    """Add a finished method (its last record) to the summary and export its adapters."""
    summary["methods"][method] = method_summary(method, last)
    if s.cfg.export_adapters:
        export_method(s, method, states, out / "adapters" / method)


def write_summary(out: Path, log: RunLog, summary: dict, echo=print) -> None:
    """summary.json and curves.png, then the results table."""
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    plot_curves(log.records, out / "curves.png")
    echo(results_table(summary))


def run(cfg: Config, echo=print) -> tuple[Path, dict]:
    """Run every configured method and write config, metrics, summary, curves and adapters."""
    s = prepare(cfg)
    out = make_out_dir(cfg)
    write_run_files(s, out)
    for line in describe_run(s, out):
        echo(line)
    log = RunLog(out)
    summary = {"methods": {}, "spectral_gap": topo.spectral_gap(s.W)}
    # the starting point every method shares (LoRA B = 0: the base model, and a random head)
    summary["untrained"] = evaluate(s.model, s.init, s.eval_full)
    for method in cfg.methods:
        last, nodes = run_method(s, method, log)
        finish_method(s, out, summary, method, last, [n.state() for n in nodes])
    write_summary(out, log, summary, echo)
    return out, summary


def export_method(s: Setup, method: str, states: list[State], path: Path) -> None:
    """adapters/<method>/ holds the network average; node_<i>/ the nodes' own adapters."""
    export_adapter(s.model, network_average(states, s.cfg.consensus), path)
    if method in ("dec-lora", "local"):
        for i, st in enumerate(states):
            export_adapter(s.model, st, path / f"node_{i}")
