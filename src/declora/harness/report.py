"""Records: one metrics.jsonl record per method and evaluated round (the network's figures on
the validation rows, or the sites' own, then the counters), and what a method's headline reads
of a record. Both runtimes write exactly these."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from declora.algorithms.methods import METHODS
from declora.algorithms.scores import mean_finite
from declora.algorithms.tensors import State
from declora.config import ConfigError
from declora.harness.evaluation import (
    evaluate_round,
    pool_sites,
)
from declora.harness.loggers import Loggers
from declora.harness.session import Session
from declora.protocol.rounds import Counters, NodeCounters, say


class RunLog:
    """Appends one JSON object per method and evaluated round to ``metrics.jsonl``, each line
    whole in one write (a kill cannot cut a line in two writes; a cut that a crash of the
    machine leaves is dropped on resume, :meth:`keep_until`), and hands it to the config's
    metric loggers (:mod:`declora.harness.loggers`) if any."""

    def __init__(self, out: Path, loggers: Loggers | None = None):
        self.path = out / "metrics.jsonl"
        self.records: list[dict] = []
        self.loggers = loggers

    def start(self, method: str) -> None:
        """A method begins: the loggers open its run."""
        if self.loggers is not None:
            self.loggers.start(method)

    def close(self) -> None:
        if self.loggers is not None:
            self.loggers.close()

    def keep_until(self, t: int, warn=say) -> None:
        """Drop the records after round t (a resumed run plays them again), in place. A last
        line cut by a crash is dropped and ``warn`` says so; any other line that is not a
        record is one ConfigError."""
        kept = [r for r in self._read(warn) if r["round"] <= t]
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
        os.replace(tmp, self.path)
        self.records = kept

    def _read(self, warn) -> list[dict]:
        try:
            text = self.path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as err:
            raise ConfigError(f"{self.path}: not UTF-8 text (byte {err.start})") from None
        lines = text.split("\n")
        out = []
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            rec = _record(line)
            if rec is None and n == len(lines):  # no line end after it: cut by a crash
                warn(f"declora: {self.path}: dropped a partial last line (cut by a crash)")
            elif rec is None:
                raise ConfigError(
                    f"{self.path}:{n}: not a record of metrics.jsonl; restore the file or "
                    "start a new run (a new out=)"
                )
            else:
                out.append(rec)
        return out

    def write(self, record: dict) -> None:
        record = {k: _clean(v) for k, v in record.items()}
        self.records.append(record)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, (json.dumps(record) + "\n").encode())
        finally:
            os.close(fd)
        if self.loggers is not None:
            self.loggers.record(record)


def _record(line: str) -> dict | None:
    """One metrics.jsonl line as a record (a JSON object with a round), or None."""
    try:
        rec = json.loads(line)
    except ValueError:
        return None
    ok = isinstance(rec, dict) and type(rec.get("round")) is int and "method" in rec
    return rec if ok else None


def _clean(value):
    """JSON has no NaN: write null instead (in lists and dicts too)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def _inf(value: float):
    """Infinity as the text "inf" (JSON has no infinity; null would read as no value)."""
    return "inf" if value == math.inf else value


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
    # DP-SGD; no noise (noise_multiplier=0) spends an infinite epsilon: "inf", not null
    private = (
        {"epsilon": _inf(max(spent)), "epsilon_nodes": [_inf(e) for e in eps]} if spent else {}
    )
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


def headline(method: str, rec: dict) -> dict:
    """accuracy, f1 and loss of what the method's headline reports (:data:`HEADLINES`) in one
    validation record: the mean of the nodes' own adapters (a single node: its record's own
    figures), or the one model's."""
    keys = ("accuracy", "f1", "loss")
    if METHODS[method].headline != "nodes":
        return {k: rec.get(k) for k in keys}
    return {k: rec.get(f"node_{k}_mean", rec.get(k)) for k in keys}
