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
from declora.config import Config, ConfigError, dump_config
from declora.consensus import average, consensus_distances
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
    adj: np.ndarray  # (n, n) bool
    W: np.ndarray  # (n, n) mixing matrix
    init: State  # identical starting adapter for every node
    eval_full: list[dict]
    eval_nodes: list[dict]


def prepare(cfg: Config) -> Setup:
    """Validate the graph and data against the config and load the model (writes nothing)."""
    try:
        adj = topo.build_graph(
            cfg.topology.kind, cfg.nodes, p=cfg.topology.p, edges=cfg.topology.edges, seed=cfg.seed
        )
        W = topo.mixing_matrix(adj, cfg.mixing)
    except ValueError as err:
        raise ConfigError(f"topology: {err}") from None
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
    cfg = s.cfg
    if method == "centralized":
        pooled = s.train.subset(np.sort(np.concatenate(s.parts)))
        return (
            [Node.create(0, pooled, s.init, cfg, stream=10**6)],
            None,
            cfg.nodes * cfg.local_steps,
        )
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
    """
    payloads = [ex.outgoing(n.state(), t) for ex, n in zip(exchanges, nodes)]
    mixed = []
    for i, (ex, node) in enumerate(zip(exchanges, nodes)):
        weights = row_weights(W, i)
        received = {j: payloads[j] for j in weights if j != i}
        mixed.append(ex.incoming(node.state(), received, weights))
    for node, state in zip(nodes, mixed):
        node.set_state(state)
    copies = np.ones(len(nodes)) if server else (W > 0).sum(1) - 1  # (n,) messages each sends
    return np.array([len(p) for p in payloads]) * copies


def evaluate_round(s: Setup, nodes: list[Node]) -> dict:
    """Network-average adapter on the eval set; each node's own on its first node_eval_size rows."""
    states = [n.state() for n in nodes]
    rec = evaluate(s.model, average(states), s.eval_full)
    if len(nodes) > 1:
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
    exchanges = [Exchange(n.node_id, s.init) for n in nodes]
    sent = np.zeros(len(nodes))  # cumulative bytes each node sent
    start = time.perf_counter()
    bar = tqdm(range(1, cfg.rounds + 1), desc=f"{method:>11}", unit="round", leave=True)
    for t in bar:
        losses = [local_steps(s.model, node, steps, s.pad_id) for node in nodes]
        if W is not None:
            sent += exchange(exchanges, nodes, W, t, server=method == "fedavg")
        if t % cfg.eval_every == 0 or t == cfg.rounds:
            rec = evaluate_round(s, nodes)
            rec.update(
                method=method,
                round=t,
                samples_seen=t * cfg.nodes * cfg.local_steps * cfg.batch_size,
                train_loss=float(np.mean(losses)),
                grad_norm=float(np.mean([n.last_grad_norm for n in nodes])),
                bytes_sent=int(sent.mean()),
                bytes_sent_total=int(sent.sum()),
                wall_s=time.perf_counter() - start,
            )
            log.write(rec)
            bar.set_postfix(acc=f"{rec['accuracy']:.3f}", loss=f"{rec['loss']:.3f}")
    bar.close()
    return log.records[-1], nodes


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


def run(cfg: Config, echo=print) -> tuple[Path, dict]:
    """Run every configured method and write config, metrics, summary, curves and adapters."""
    s = prepare(cfg)
    out = make_out_dir(cfg)
    (out / "config.yaml").write_text(dump_config(cfg))
    (out / "labels.json").write_text(json.dumps(dict(enumerate(s.train.label_names)), indent=1))
    gap = topo.spectral_gap(s.W)
    echo(
        f"{cfg.nodes} nodes on a {cfg.topology.kind} ({cfg.mixing} weights, spectral gap {gap:.4f}); "
        f"{len(s.train)} training rows, sizes {min(map(len, s.parts))}-{max(map(len, s.parts))}; "
        f"adapter {numel(s.init):,} values; output in {out}"
    )
    log = RunLog(out)
    summary = {"methods": {}, "spectral_gap": gap}
    for method in cfg.methods:
        last, nodes = run_method(s, method, log)
        summary["methods"][method] = method_summary(method, last)
        if cfg.export_adapters:
            export_method(s, method, nodes, out / "adapters" / method)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    plot_curves(log.records, out / "curves.png")
    echo(results_table(summary))
    return out, summary


def export_method(s: Setup, method: str, nodes: list[Node], path: Path) -> None:
    """adapters/<method>/ holds the network average; node_<i>/ the nodes' own adapters."""
    states = [n.state() for n in nodes]
    export_adapter(s.model, average(states), path)
    if method in ("dec-lora", "local"):
        for node, st in zip(nodes, states):
            export_adapter(s.model, st, path / f"node_{node.node_id}")
