"""Traffic before training: values and bytes each node sends and receives, per round and per run.

Only shapes are needed (:func:`declora.learning.capacity.model_shapes`): the model is built from its config
on the ``meta`` device (no weights, no training) and LoRA is applied the way
:func:`declora.learning.adapters.build_model` does, so the message is the one the simulator and the
distributed runtime send. Byte counts come from
:func:`declora.algorithms.compress.payload_size`, the exact size of a payload, headers and scales included.

Compared with two alternatives under the same compression: FedAvg-LoRA through a server (each
node uploads its adapter and downloads the average, which the server sends compressed the same
way; the server receives N and sends N messages a round) and gossip of the full model. Also
the floor of the simulator's memory (:func:`declora.learning.capacity.memory_needed`) against what this
machine has available.
"""

from __future__ import annotations

import math

import numpy as np

from declora.algorithms import graphs
from declora.algorithms.compress import describe, payload_size
from declora.algorithms.schedule import relay_tree
from declora.algorithms.tensors import is_lora, is_lora_a
from declora.config import Config, ConfigError
from declora.harness.session import finish_rounds_of, graph_for, stepped
from declora.harness.summary import as_sent
from declora.learning.capacity import (
    GB,
    Shapes,
    available_memory,
    check_labels,
    check_shapes,
    held_nodes,
    memory_needed,
    model_shapes,
)
from declora.learning.dataset import load_rows


def count_labels(cfg: Config) -> int:
    """Classes in the data (the size of the task head), read without tokenizing; with
    per-site files, the classes every site agreed on (data.labels): no site's file is here."""
    if cfg.data.per_site:
        return len(cfg.data.labels)
    return len(load_rows(cfg).names)


def message_sizes(cfg: Config, num_labels: int) -> tuple[list[int], list[int]]:
    """(adapter tensor sizes in message order, full-model tensor sizes), from shapes alone."""
    return _message_sizes(cfg, model_shapes(cfg, num_labels))


def _message_sizes(cfg: Config, shapes: Shapes) -> tuple[list[int], list[int]]:
    if not any(is_lora(n) for n in shapes.trainable):
        raise ConfigError("lora.targets matched no trainable tensors")
    sent = shapes.trainable
    if cfg.consensus == "frozen_a":  # A is seeded on every node and never sent
        sent = {n: v for n, v in sent.items() if not is_lora_a(n)}
    return list(sent.values()), shapes.full


def memory(cfg: Config, shapes: Shapes) -> dict:
    """The simulator's memory floor by part (:func:`declora.learning.capacity.memory_needed`) and what
    this machine has available now, in bytes."""
    parts = memory_needed(cfg, shapes, held_nodes(cfg))
    return {"parts": parts, "total": sum(parts.values()), "available": available_memory()}


def _row(values: int, message: int, sent: np.ndarray, received: np.ndarray, rounds: int) -> dict:
    """Figures for one way of training; ``sent``/``received`` are messages per party per round."""
    return {
        "values": values,
        "bytes_per_message": message,
        "sent_per_node_round": float(sent.mean() * message),
        "received_per_node_round": float(received.mean() * message),
        "max_sent_per_node_round": int(sent.max() * message),
        "sent_per_node_run": float(sent.mean() * message * rounds),
        "received_per_node_run": float(received.mean() * message * rounds),
        "total_run": int(sent.sum() * message * rounds),
    }


def _count(x: float) -> int | float:
    """A count of messages as an int when it is one (a time-varying graph's mean may not be)."""
    return int(x) if float(x).is_integer() else float(x)


def mixing(cfg: Config) -> dict:
    """How the config's dec-lora mixes: the graph's per-round gap and rounds to the exact
    average, and the remedies against skew."""
    graph = stepped(graph_for(cfg), cfg)
    tree = relay_tree(graph) if cfg.exchange == "relay" else None
    return {
        "spectral_gap": graph.gap,
        "rounds_to_exact_average": graphs.tree_diameter(tree.adj)
        if tree is not None
        else graph.rounds_to_exact,
        "exchange": cfg.exchange,
        "correction": cfg.correction,
        "weighting": cfg.weighting,
        "second_moment": "mixed" if cfg.moments_mixed() else "own",
    }


def _dec_message(cfg: Config, adapter: list[int]) -> int:
    """Bytes of one dec-lora payload: tracking sends the adapter and its correction,
    ``second_moment=mixed`` the adapter and its second moments, relay the adapter's sum and
    its count (float32)."""
    if cfg.exchange == "relay":
        return payload_size([*adapter, 1], _Float32())
    return payload_size(adapter * _vectors(cfg), cfg.sent())


def _vectors(cfg: Config) -> int:
    """Adapter-sized vectors in a mixing message: 2 with tracking or mixed moments."""
    return 2 if cfg.correction == "tracking" or cfg.moments_mixed() else 1


def _shapes(cfg: Config, num_labels: int | None) -> Shapes:
    """The model's tensor shapes, the label count checked before anything is built."""
    if cfg.task == "causal_lm":  # no task head: the label count does not matter
        num_labels = num_labels or 2
    if num_labels is not None:  # the model's config names every class: check it fits first
        check_labels(num_labels, "--num-labels")
    shapes = model_shapes(cfg, num_labels or count_labels(cfg))
    check_shapes(cfg, shapes)
    return shapes


def estimate(cfg: Config, num_labels: int | None = None) -> dict:
    """Traffic of ``cfg`` without training; ``num_labels`` skips reading the data."""
    graph = graph_for(cfg)
    n = cfg.nodes
    dec_graph = relay_tree(graph) if cfg.exchange == "relay" else graph
    neighbours = dec_graph.messages()  # (n,) messages each node sends a round (period mean)
    shapes = _shapes(cfg, num_labels)
    adapter, full = _message_sizes(cfg, shapes)
    dec, server = cfg.for_method("dec-lora"), cfg.for_method("fedavg")
    spec, T, server_rounds = dec.compression, dec.rounds, server.rounds  # the rounds played
    finish = finish_rounds_of(cfg, "dec-lora")  # gossip-only rounds: bytes, no steps
    moments = 2 if cfg.moments_mixed() else 1  # fedavg mixes its moments too
    fedavg = sum(adapter) * moments, payload_size(adapter * moments, server.compression)
    ones, all_n = np.ones(n), np.array([n])
    return {
        "nodes": n,
        "rounds": T,
        "finish_rounds": finish,
        "finish_rounds_configured": dec.finish_rounds,
        "gossip_steps": dec.gossip_steps,
        "topology": cfg.topology.kind,
        "neighbours": {
            "min": _count(neighbours.min()),
            "mean": float(neighbours.mean()),
            "max": _count(neighbours.max()),
        },
        "mixing": mixing(cfg),
        "compression": spec.model_dump(),
        "messages": describe(spec),
        "float32_bytes_per_message": {
            "lora": payload_size(adapter, _Float32()),
            "full_model": payload_size(full, _Float32()),
        },
        "dec-lora": _row(
            sum(adapter) * _vectors(cfg),
            _dec_message(cfg, adapter),
            neighbours * dec.gossip_steps,
            neighbours * dec.gossip_steps,
            T + finish,
        ),
        "fedavg-node": _row(*fedavg, ones, ones, server_rounds),
        "fedavg-server": _row(*fedavg, all_n, all_n, server_rounds),
        "full-model-gossip": _row(
            sum(full), payload_size(full, spec), graph.messages(), graph.messages(), T
        ),
        "memory": memory(cfg, shapes),
    }


class _Float32:
    kind, bits, block, ratio = "none", 32, 0, 1.0


def human_bytes(b: float) -> str:
    """SI units: 1 kB = 1000 B."""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if b >= size:
            return f"{b / size:.2f} {unit}"
    return f"{b:.0f} B"


ROWS = (
    ("dec-lora", "Dec-LoRA gossip, each node"),
    ("fedavg-node", "FedAvg-LoRA, each node"),
    ("fedavg-server", "FedAvg-LoRA, the server"),
    ("full-model-gossip", "full-model gossip, each node"),
)


def _mixing_line(m: dict, comp: dict) -> str:
    """How fast the nodes agree, of what (``comp``: the messages' compression), and the
    remedies."""
    exact = m["rounds_to_exact_average"]
    line = (
        f"mixing: every node holds the exact average after {exact} round{'s' * (exact > 1)}"
        + as_sent(comp)
        if exact
        else f"mixing: spectral gap {m['spectral_gap']:.4f}, about "
        f"{math.ceil(math.log(0.01) / math.log(max(1 - m['spectral_gap'], 1e-12)))} rounds to "
        "1% disagreement"
    )
    extra = [f"exchange {m['exchange']}"]
    if m["correction"] != "none":
        extra.append(f"correction {m['correction']}")
    if m["weighting"] != "uniform":
        extra.append(f"weighting {m['weighting']}")
    if m["second_moment"] != "own":
        extra.append(f"second moment {m['second_moment']}")
    return line + "; " + ", ".join(extra)


def _finishing(played: int, configured: int) -> str:
    """ " (+ 40 gossip-only for Dec-LoRA)", and what a graph that averages exactly leaves."""
    if not played:
        return ""
    if played == configured:
        return f" (+ {played} gossip-only for Dec-LoRA)"
    return f" (+ {played} gossip-only for Dec-LoRA: exact by then, of finish_rounds={configured})"


def format_estimate(est: dict) -> str:
    """The estimate as a plain-text table (per node = mean over nodes)."""
    nb, comp = est["neighbours"], est["compression"]
    scheme = f"choco, gamma {comp['gamma']:g}" if comp["scheme"] == "choco" else "direct"
    lines = [
        f"{est['nodes']} nodes, {est['topology']} graph ({nb['min']}-{nb['max']} neighbours, "
        f"mean {nb['mean']:g}), {est['rounds']} rounds"
        + (f" of {est['gossip_steps']} gossip steps" if est["gossip_steps"] > 1 else "")
        + _finishing(est["finish_rounds"], est["finish_rounds_configured"]),
        f"messages: {est['messages']}; scheme {scheme}",
        _mixing_line(est["mixing"], comp),
        "",
        f"{'':<30} {'values':>11} {'bytes per':>10} {'vs':>6} {'per round':>21} "
        f"{'whole run':>21} {'all parties':>11}",
        f"{'':<30} {'per msg':>11} {'message':>10} {'fp32':>6} {'sent':>10} {'received':>10} "
        f"{'sent':>10} {'received':>10} {'whole run':>11}",
    ]
    lines.append("-" * len(lines[-1]))
    f32 = est["float32_bytes_per_message"]
    for key, label in ROWS:
        r = est[key]
        base = f32["full_model"] if key == "full-model-gossip" else f32["lora"]
        total = human_bytes(r["total_run"]) if key != "fedavg-server" else ""
        lines.append(
            f"{label:<30} {r['values']:>11,} {human_bytes(r['bytes_per_message']):>10} "
            f"{base / r['bytes_per_message']:>5.1f}x "
            f"{human_bytes(r['sent_per_node_round']):>10} "
            f"{human_bytes(r['received_per_node_round']):>10} "
            f"{human_bytes(r['sent_per_node_run']):>10} "
            f"{human_bytes(r['received_per_node_run']):>10} {total:>11}"
        )
    lines.append(
        "per node = mean over nodes; 'all parties' = bytes sent by every node together "
        "(FedAvg: uploads; the server's downloads are its own row)"
    )
    if nb["min"] != nb["max"]:
        busiest = human_bytes(est["dec-lora"]["max_sent_per_node_round"])
        lines.append(f"the busiest Dec-LoRA node sends {busiest} per round")
    mem = est["memory"]
    parts = ", ".join(f"{k} {v / GB:.2f}" for k, v in mem["parts"].items())
    lines.append(
        f"memory of declora run: at least {mem['total'] / GB:.2f} GB ({parts}); "
        f"{mem['available'] / GB:.1f} GB available here"
    )
    return "\n".join(lines)
