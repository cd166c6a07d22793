"""summary.json, assembled here only: the run's split sizes, the graph's spectral gap and the
untrained start, one entry per finished method (its figures on the test rows, what its sites
hold), how the run stopped, and where it ran; and the results table printed from it. Both
runtimes write exactly this."""

from __future__ import annotations

import math
from pathlib import Path

from declora.algorithms.methods import HEADLINES, METHODS
from declora.algorithms.tensors import State
from declora.harness.evaluation import evaluate_nodes, rows_of
from declora.harness.report import write_json
from declora.harness.session import Session, stepped


def as_sent(c: dict) -> str:
    """What "the exact average" is of, given what the nodes send (a compression config as a
    dict): nothing to add for float32 messages."""
    if c["scheme"] == "choco" and (c["kind"] != "none" or c["gamma"] < 1):
        part = f", and moves gamma {c['gamma']:g} of the way" * (c["gamma"] < 1)
        return f" (of the public copies, CHOCO: a node's adapter differs by what it has not sent{part})"
    if c["kind"] == "quantize":
        return f" (of the messages as sent: {c['bits']}-bit, the nodes differ by the rounding)"
    if c["kind"] == "topk":
        return (
            f" (of the messages as sent: the largest {c['ratio']:g} of the entries, the nodes "
            "differ by the rest)"
        )
    return ""


class Summary:
    """summary.json of one run, built up as methods finish."""

    def __init__(self, s: Session, untrained: dict):
        """``untrained``: the starting adapter's figures on the test rows (every method's
        start, :func:`declora.harness.evaluation.evaluate_untrained`)."""
        self.data: dict = {
            "methods": {},
            "test_rows": rows_of(s.test),
            "validation_rows": rows_of(s.val),
            "spectral_gap": s.graph.gap,
            "rounds_to_exact_average": stepped(s.graph, s.cfg).rounds_to_exact,
            "sent": s.cfg.sent().model_dump(),
            "untrained": untrained,
        }
        self.delta = s.cfg.privacy.delta
        if s.cfg.privacy.enabled:  # where the DP noise and sample come from
            self.data["dp_randomness"] = (
                "reproducible from the shared seed: anyone with the config can remove the "
                "noise; no privacy guarantee holds"
                if s.cfg.privacy.reproducible
                else "each site's own secret key (os.urandom at its start, kept in its checkpoint)"
            )

    def add(self, method: str, last: dict, final: dict) -> None:
        """A finished method: its last validation record and its figures on the test rows
        (``final``: :func:`final_figures`, or the sites' own test rows pooled from counts)."""
        self.data["methods"][method] = entry = method_entry(method, last, final)
        if "epsilon" in entry:
            entry["delta"] = self.delta
        if "sites" in final:  # per-site files: the split sizes and the start, pooled over sites
            self.data.update(test_rows=final["rows"], untrained=final["untrained"])
            self.data["validation_rows"] = last["node_eval_rows"]

    def stop(self, reason: str) -> None:
        """The run stopped early (what ran until then is kept)."""
        self.data["stopped"] = reason

    def write(self, out: Path, runtime: dict | None = None) -> None:
        """summary.json, with where the run ran (``runtime``: processes, backend, device)."""
        if runtime is not None:
            self.data["runtime"] = runtime
        write_json(out / "summary.json", self.data)

    def table(self) -> str:
        return results_table(self.data)


def final_figures(s: Session, states: list[State]) -> dict:
    """What the nodes hold at the end, on the test rows (:func:`evaluate_nodes`)."""
    return evaluate_nodes(s, states, s.test)


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
    return "inf" if value == "inf" or math.isinf(value) else f"{value:.2f}"


def method_entry(method: str, last: dict, final: dict) -> dict:
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
    exact = summary.get("rounds_to_exact_average")
    if exact:  # an exact graph's gap is 1.0, which says less
        every = "every round" if exact == 1 else f"every {exact} rounds"
        rounded = as_sent(summary["sent"]) if "sent" in summary else ""
        lines.append(f"mixing: every node holds the exact average {every}{rounded}")
    else:
        lines.append(f"spectral gap of the mixing matrix: {summary['spectral_gap']:.4f}")
    return "\n".join(lines)
