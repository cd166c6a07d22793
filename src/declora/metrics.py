"""Evaluation, run logging (metrics.jsonl / summary.json), the results table and the curves."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from declora.adapters import State


def macro_f1(pred: np.ndarray, gold: np.ndarray, n_classes: int) -> float:
    """Unweighted mean of per-class F1 (a class absent from both gives F1 0, as sklearn does)."""
    scores = []
    for c in range(n_classes):
        tp = np.sum((pred == c) & (gold == c))
        fp = np.sum((pred == c) & (gold != c))
        fn = np.sum((pred != c) & (gold == c))
        scores.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores))


@torch.no_grad()
def evaluate(model: nn.Module, params: State, batches: list[dict]) -> dict[str, float]:
    """Accuracy, macro-F1 and mean cross-entropy of one adapter on fixed eval batches
    (for a causal LM, :func:`declora.lm.evaluate_lm`)."""
    if batches and (batches[0]["labels"].dim() == 2):
        from declora.lm import evaluate_lm

        return evaluate_lm(model, params, batches)
    model.eval()
    preds, golds, loss_sum = [], [], 0.0
    for batch in batches:
        out = functional_call(model, params, args=(), kwargs=batch)
        loss_sum += float(out.loss) * len(batch["labels"])
        preds.append(out.logits.argmax(-1).numpy())
        golds.append(batch["labels"].numpy())
    pred, gold = np.concatenate(preds), np.concatenate(golds)
    n_classes = int(out.logits.shape[-1])
    return {
        "accuracy": float(np.mean(pred == gold)),
        "f1": macro_f1(pred, gold, n_classes),
        "loss": loss_sum / len(gold),
    }


def _clean(value):
    """JSON has no NaN: write null instead."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


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


def results_table(summary: dict) -> str:
    """Plain-text table of the final figures, one row per method."""
    head = f"{'method':<12} {'accuracy':>8} {'f1':>6} {'loss':>6} {'node min':>8} {'MB sent/node':>12} {'wall s':>7}"
    lines = [head, "-" * len(head)]
    for name, m in summary["methods"].items():
        f1, node_min = m.get("f1"), m.get("node_min_accuracy")  # no F1 for instruction pairs
        lines.append(
            f"{name:<12} {m['accuracy']:>8.4f} {'' if f1 is None else f'{f1:.4f}':>6} "
            f"{m['loss']:>6.4f} {'' if node_min is None else f'{node_min:.4f}':>8} "
            f"{m['bytes_sent_per_node'] / 1e6:>12.2f} {m['wall_s']:>7.1f}"
        )
    if "untrained" in summary:
        u = summary["untrained"]
        lines.append(
            f"untrained start (LoRA B = 0): accuracy {u['accuracy']:.4f}, loss {u['loss']:.4f}"
        )
    lines.append(f"spectral gap of the mixing matrix: {summary['spectral_gap']:.4f}")
    return "\n".join(lines)


def plot_curves(records: list[dict], path: Path) -> None:
    """curves.png: accuracy and loss against round for each method, and consensus distances."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    methods = list(dict.fromkeys(r["method"] for r in records))
    for method in methods:
        rows = [r for r in records if r["method"] == method]
        rounds = [r["round"] for r in rows]
        # local: no node holds the average, so show what the nodes hold (as summary.json does)
        acc, loss, label = (
            ("node_accuracy_mean", "node_loss_mean", "local (mean of nodes)")
            if method == "local"
            else ("accuracy", "loss", method)
        )
        axes[0].plot(rounds, [r[acc] for r in rows], marker="o", label=label)
        axes[1].plot(rounds, [r[loss] for r in rows], marker="o", label=label)
        if method in ("dec-lora", "local"):
            for key, style in (("consensus_ab", "-"), ("consensus_a", ":"), ("consensus_b", "--")):
                pts = [(r["round"], r[key]) for r in rows if r.get(key)]
                if pts:
                    axes[2].plot(*zip(*pts), style, marker=".", label=f"{method} {key[10:]}")
    axes[0].set(title="held-out accuracy", xlabel="round", ylabel="accuracy")
    axes[1].set(title="held-out loss", xlabel="round", ylabel="cross-entropy")
    axes[2].set(title="consensus distance (relative)", xlabel="round", yscale="log")
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.has_data():
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
