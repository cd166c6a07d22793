"""Evaluation: during training, the curves on validation rows (the network's adapter on all of
them, each node's own on the first ``node_eval_size``, and the consensus distances); at the
end, every node's own adapter and the network average on a whole split (the test rows, once).

With per-site files each site scores the adapter it holds on its own rows and only counts
leave it (:func:`site_counts`); network figures are pooled from them (:func:`pool_sites`)."""

from __future__ import annotations

import numpy as np

from declora.algorithms.consensus import consensus_distances, network_average
from declora.algorithms.scores import from_counts
from declora.algorithms.tensors import State, same_as_earlier
from declora.harness.session import Session


def rows_of(batches: list[dict]) -> int:
    """Rows in a list of evaluation batches."""
    return sum(len(b["labels"]) for b in batches)


def each_node(
    s: Session, states: list[State], batches: list[dict], first: list[int] | None = None
) -> list[dict]:
    """Every node's own adapter scored on ``batches``; an adapter equal bit for bit to an
    earlier node's (after exact averaging every node holds the same) is scored once
    (``first``: :func:`same_as_earlier` of ``states``, when the caller has it)."""
    first = same_as_earlier(states) if first is None else first
    scored = {j: s.task.evaluate(s.model, states[j], batches) for j in sorted(set(first))}
    return [dict(scored[j]) for j in first]


def evaluate_round(s: Session, states: list[State]) -> dict:
    """Validation figures of one round from every node's adapter (in node order)."""
    rec = s.task.evaluate(s.model, network_average(states, s.cfg.consensus), s.val)
    rec["split"] = "validation"
    if len(states) > 1:
        own = each_node(s, states, s.val_nodes)
        rec["node_accuracy_mean"] = float(np.mean([o["accuracy"] for o in own]))
        rec["node_accuracy_min"] = float(np.min([o["accuracy"] for o in own]))
        rec["node_f1_mean"] = float(np.mean([o["f1"] for o in own]))
        rec["node_loss_mean"] = float(np.mean([o["loss"] for o in own]))
        rec["node_eval_rows"] = rows_of(s.val_nodes)
        rec.update(consensus_distances(states))
    return rec


def evaluate_nodes(s: Session, states: list[State], batches: list[dict]) -> dict:
    """What the nodes hold, scored on ``batches`` (a whole split): one model's figures under
    ``model``; or every node's own under ``nodes``, their mean and worst (``node_mean_*``,
    ``node_min_accuracy`` / ``_f1``, ``node_max_loss``) and the network average beside them
    (when every node holds the same adapter bit for bit, that adapter, scored once)."""
    rows = rows_of(batches)
    if len(states) == 1:
        return {"rows": rows, "model": s.task.evaluate(s.model, states[0], batches)}
    first = same_as_earlier(states)
    own = each_node(s, states, batches, first)
    if first == [0] * len(states):  # all hold one adapter: it is the average
        average = dict(own[0])
    else:
        average = s.task.evaluate(s.model, network_average(states, s.cfg.consensus), batches)
    out = {"rows": rows, "nodes": own, "average_adapter": average}
    for key in own[0]:
        values = np.array([o[key] for o in own])
        out[f"node_mean_{key}"] = float(values.mean())
        worst = values.max() if key == "loss" else values.min()
        out[f"node_{'max' if key == 'loss' else 'min'}_{key}"] = float(worst)
    return out


def evaluate_untrained(s: Session) -> dict:
    """The starting point every method shares (LoRA B = 0: the base model, and a random head),
    on the test rows."""
    return s.task.evaluate(s.model, s.init, s.test)


def site_counts(s: Session, states: dict[int, State], batches: dict[int, list[dict]]) -> dict:
    """Each site's counts (:func:`declora.algorithms.scores.counts`) of the adapter it holds on its own
    rows: ``states[i]`` on ``batches[i]``; one state (a pooled model) is scored on every site."""
    if len(states) == 1 and len(batches) > 1:
        (only,) = states.values()
        states = dict.fromkeys(batches, only)
    return {i: s.task.counts(s.model, states[i], batches[i]) for i in sorted(batches)}


def pool_sites(counts: list[np.ndarray]) -> dict:
    """Network figures from the sites' counts alone: the pooled figure (every site's rows
    together), each site's, and their mean and worst (``node_*`` keys, as for nodes)."""
    own = [{"node": i, "rows": int(c[0]), **from_counts(c)} for i, c in enumerate(counts)]
    out = {"rows": int(sum(c[0] for c in counts)), "pooled": from_counts(np.sum(counts, axis=0))}
    for key in ("accuracy", "f1", "loss"):
        values = np.array([o[key] for o in own])
        out[f"node_mean_{key}"] = float(values.mean())
        worst = values.max() if key == "loss" else values.min()
        out[f"node_{'max' if key == 'loss' else 'min'}_{key}"] = float(worst)
    out["sites"] = own
    return out
