"""Records and summaries: one metrics.jsonl record per evaluated round, the summary.json entry
of a finished method, and the results table. Both runtimes write exactly these."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from declora.algorithms import topology as topo
from declora.algorithms.methods import HEADLINES, METHODS
from declora.algorithms.scores import mean_finite
from declora.algorithms.tensors import State
from declora.harness.evaluation import (
    evaluate_nodes,
    evaluate_round,
    evaluate_untrained,
    pool_sites,
    rows_of,
)
from declora.harness.session import Session
from declora.protocol.rounds import Counters, NodeCounters


class RunLog:
    """Appends one JSON object per method and evaluated round to ``metrics.jsonl``."""

    def __init__(self, out: Path):
        self.path = out / "metrics.jsonl"
        self.records: list[dict] = []

    def write(self, record: dict) -> None:
        record = {k: _clean(v) for k, v in record.items()}
        self.records.append(record)
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")


def _clean(value):
    """JSON has no NaN: write null instead (in lists and dicts too)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def write_json(path: Path, data: dict) -> None:
    """``data`` as indented JSON, NaN written as null."""
    path.write_text(json.dumps(_clean(data), indent=2))


def round_record(
    s: Session, method: str, t: int, states: list[State], per_node: list[NodeCounters], c: Counters
) -> dict:
    """One metrics.jsonl record: the evaluation of ``states``, then the round's counters."""
    rec = evaluate_round(s, states)
    rec.update(_counter_fields(method, t, per_node, c))
    return rec


def site_record(
    method: str, t: int, counts: list[np.ndarray], per_node: list[NodeCounters], c: Counters
) -> dict:
    """The record of a round evaluated on each site's own rows (per-site files): pooled
    figures, the sites' mean and worst, each site's accuracy, then the counters."""
    p = pool_sites(counts)
    rec = {
        **p["pooled"],
        "split": "validation (each site's own rows)",
        "node_accuracy_mean": p["node_mean_accuracy"],
        "node_accuracy_min": p["node_min_accuracy"],
        "node_f1_mean": p["node_mean_f1"],
        "node_loss_mean": p["node_mean_loss"],
        "node_eval_rows": p["rows"],
        "site_accuracy": [x["accuracy"] for x in p["sites"]],
    }
    rec.update(_counter_fields(method, t, per_node, c))
    return rec


def _counter_fields(method: str, t: int, per_node: list[NodeCounters], c: Counters) -> dict:
    sent = np.array([n.sent for n in per_node])
    eps = [n.epsilon for n in per_node]
    spent = [e for e in eps if not math.isnan(e)]
    private = {"epsilon": max(spent), "epsilon_nodes": eps} if spent else {}  # DP-SGD
    return dict(
        method=method,
        round=t,
        samples_seen=c.samples,
        train_loss=mean_finite(n.loss for n in per_node),
        grad_norm=mean_finite(n.grad_norm for n in per_node),
        bytes_sent=int(sent.mean()),
        bytes_sent_total=int(sent.sum()),
        bytes_per_edge_round=max(n.payload for n in per_node),
        messages_refused=sum(n.refused for n in per_node),
        wall_s=c.wall_s,
        **private,
    )


# what a method's summary keeps of its last validation record
VALIDATION_KEYS = (
    "accuracy",
    "f1",
    "loss",
    "node_accuracy_mean",
    "node_accuracy_min",
    "node_eval_rows",
)


def _fmt(value, missing: str = "") -> str:
    """A figure for the table: 4 decimals; ``missing`` for None (JSON's NaN) or NaN."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return missing
    return f"{value:.4f}"


def _eps(value) -> str:
    if value is None:
        return ""
    return "inf" if math.isinf(value) else f"{value:.2f}"


def start_summary(s: Session) -> dict:
    """summary.json before any method: the split sizes, the spectral gap and the untrained
    start (on the test rows)."""
    return {
        "methods": {},
        "test_rows": rows_of(s.test),
        "validation_rows": rows_of(s.val),
        "spectral_gap": topo.spectral_gap(s.W),
        "untrained": evaluate_untrained(s),
    }


def headline(method: str, rec: dict) -> dict:
    """accuracy, f1 and loss of what the method's headline reports (:data:`HEADLINES`) in one
    validation record: the mean of the nodes' own adapters (a single node: its record's own
    figures), or the one model's."""
    keys = ("accuracy", "f1", "loss")
    if METHODS[method].headline != "nodes":
        return {k: rec.get(k) for k in keys}
    return {k: rec.get(f"node_{k}_mean", rec.get(k)) for k in keys}


def final_figures(s: Session, states: list[State]) -> dict:
    """What the nodes hold at the end, on the test rows (:func:`evaluate_nodes`)."""
    return evaluate_nodes(s, states, s.test)


def method_summary(method: str, last: dict, final: dict) -> dict:
    """summary.json entry of a finished method: its headline on the test rows (``final``,
    :func:`final_figures`) is what its sites hold (:data:`declora.algorithms.methods.HEADLINES`), then
    the worst node and the network average, the last validation record and the counters."""
    keys = ("accuracy", "f1", "loss")
    if "sites" in final:  # per-site files: each site's own test rows, pooled from counts
        head = {k: final[f"node_mean_{k}"] for k in keys}  # mean over sites, every method
        spread = {k: v for k, v in final.items() if k.startswith("node_") or k == "pooled"}
        spread["sites"] = final["sites"]
        where = f"each site's own test rows ({final['rows']} in all)"
    elif "nodes" in final:
        head = {k: final[f"node_mean_{k}"] for k in keys if f"node_mean_{k}" in final}
        spread = {k: v for k, v in final.items() if k.startswith("node_")}
        spread["average_adapter"] = final["average_adapter"]
        spread["nodes"] = final["nodes"]
        where = f"test rows ({final['rows']})"
    else:
        head, spread = final["model"], {}
        where = f"test rows ({final['rows']})"
    out = {
        **head,
        "evaluated": f"{where}: {HEADLINES[METHODS[method].headline]}",
        **spread,
        "validation": {k: v for k, v in last.items() if k in VALIDATION_KEYS},
        "bytes_sent_per_node": last["bytes_sent"],
        "bytes_sent_total": last["bytes_sent_total"],
        "bytes_per_edge_round": last["bytes_per_edge_round"],
        "messages_refused": last["messages_refused"],
        "wall_s": round(last["wall_s"], 2),
        "rounds": last["round"],
        "samples_seen": last["samples_seen"],
    }
    if "consensus_ab" in last:
        out["consensus_ab"] = last["consensus_ab"]
    if "epsilon" in last:  # DP-SGD: the largest over the method's nodes (delta: finish_method)
        out["epsilon"] = last["epsilon"]
    return out


def results_table(summary: dict) -> str:
    """Plain-text table of the final figures on the test rows, one row per method."""
    head = (
        f"{'method':<12} {'accuracy':>8} {'f1':>6} {'loss':>6} {'node min':>8} {'average':>8} "
        f"{'MB sent/node':>12} {'wall s':>7}"
    )
    sites = any("sites" in m for m in summary["methods"].values())
    private = any("epsilon" in m for m in summary["methods"].values())
    if private:
        head += f" {'epsilon':>7}"
    first = (
        f"each site's own test rows ({summary['test_rows']} in all): accuracy, f1, loss = mean "
        "over the sites of the adapter each holds (centralized: its one model on each site's "
        "rows); node min = the worst site; average = pooled, every site's rows together"
        if sites
        else f"test rows ({summary['test_rows']}): accuracy, f1, loss = mean over the nodes' own "
        "adapters (what each site holds; centralized: its one model); node min = the worst "
        "node; average = the network-average adapter, which no site holds"
    )
    lines = [first, head, "-" * len(head)]
    for name, m in summary["methods"].items():
        # no F1 for instruction pairs, no node figures for one model; NaN (null) if it diverged
        acc, loss = _fmt(m["accuracy"], "nan"), _fmt(m["loss"], "nan")
        f1, low = _fmt(m.get("f1")), _fmt(m.get("node_min_accuracy"))
        avg = _fmt(m.get("average_adapter", m.get("pooled", {})).get("accuracy"))
        lines.append(
            f"{name:<12} {acc:>8} {f1:>6} {loss:>6} {low:>8} {avg:>8} "
            f"{m['bytes_sent_per_node'] / 1e6:>12.2f} {m['wall_s']:>7.1f}"
            + (f" {_eps(m.get('epsilon')):>7}" if private else "")
        )
    if private:
        delta = next(m["delta"] for m in summary["methods"].values() if "delta" in m)
        lines.append(f"epsilon: DP-SGD privacy spent at delta {delta:g}, the largest over nodes")
    u = summary["untrained"]
    lines.append(
        f"untrained start (LoRA B = 0): accuracy {u['accuracy']:.4f}, loss {u['loss']:.4f}"
    )
    lines.append(f"spectral gap of the mixing matrix: {summary['spectral_gap']:.4f}")
    return "\n".join(lines)
