"""Evaluation of a round: the network's adapter on the held-out rows, each node's own on its
first ``node_eval_size`` rows, and the consensus distances between the nodes."""

from __future__ import annotations

import numpy as np

from declora.consensus import consensus_distances, network_average
from declora.session import Session
from declora.tensors import State


def evaluate_round(s: Session, states: list[State]) -> dict:
    """Figures of one round from every node's adapter (in node order)."""
    rec = s.task.evaluate(s.model, network_average(states, s.cfg.consensus), s.eval_full)
    if len(states) > 1:
        own = [s.task.evaluate(s.model, st, s.eval_nodes) for st in states]
        rec["node_accuracy_mean"] = float(np.mean([o["accuracy"] for o in own]))
        rec["node_accuracy_min"] = float(np.min([o["accuracy"] for o in own]))
        rec["node_f1_mean"] = float(np.mean([o["f1"] for o in own]))
        rec["node_loss_mean"] = float(np.mean([o["loss"] for o in own]))
        rec["node_eval_rows"] = sum(len(b["labels"]) for b in s.eval_nodes)
        rec.update(consensus_distances(states))
    return rec


def evaluate_untrained(s: Session) -> dict:
    """The starting point every method shares (LoRA B = 0: the base model, and a random head)."""
    return s.task.evaluate(s.model, s.init, s.eval_full)
