"""Several seeds: the job once per seed, each in its own folder (``seed_<s>/``), then per
method the mean, standard deviation and 95% interval over seeds of each reported figure.

A seed moves the partition, the initialisation and the sampling; the test and validation rows
stay (``data.split_seed``). The interval is Student's t over the seeds (scipy): with three
seeds it is wide (t = 4.30), which is what three seeds can say.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from scipy import stats

from declora.config import Config, dump_config
from declora.harness.loggers import check_installed
from declora.harness.outputs import make_out_dir
from declora.harness.report import write_json
from declora.learning.capacity import check_sizes
from declora.runtimes import sim

# summary.json figures aggregated over seeds: (key in the table, path in a method's entry)
FIGURES = {
    "accuracy": ("accuracy",),
    "f1": ("f1",),
    "loss": ("loss",),
    "node_min_accuracy": ("node_min_accuracy",),
    "average_accuracy": ("average_adapter", "accuracy"),
    "bytes_sent_per_node": ("bytes_sent_per_node",),
    "wall_s": ("wall_s",),
}


def interval(values: list[float]) -> dict:
    """Mean, sample standard deviation and two-sided 95% Student-t interval of the mean."""
    x = np.asarray(values, dtype=float)
    mean = float(x.mean())
    if len(x) < 2:
        return {"mean": mean, "std": None, "ci95": None, "values": x.tolist()}
    std = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.975, len(x) - 1)) * std / math.sqrt(len(x))
    return {"mean": mean, "std": std, "ci95": [mean - half, mean + half], "values": x.tolist()}


def _get(entry: dict, path: tuple[str, ...]):
    for key in path:
        if not isinstance(entry, dict) or entry.get(key) is None:
            return None
        entry = entry[key]
    return entry


def aggregate(summaries: dict[int, dict]) -> dict:
    """The summary over seeds: per method and figure, :func:`interval` of the seeds' values
    (a figure a method lacks, such as centralized's node min, is left out)."""
    first = next(iter(summaries.values()))
    methods = {}
    for name, entry in first["methods"].items():
        out = {"evaluated": entry["evaluated"]}
        for fig, path in FIGURES.items():
            values = [_get(s["methods"][name], path) for s in summaries.values()]
            if all(v is not None for v in values):
                out[fig] = interval(values)
        methods[name] = out
    return {"seeds": list(summaries), "test_rows": first["test_rows"], "methods": methods}


def _cell(fig: dict | None, scale: float = 1.0, digits: int = 4) -> str:
    if fig is None:
        return ""
    mean = fig["mean"] / scale
    return (
        f"{mean:.{digits}f}"
        if fig["std"] is None
        else f"{mean:.{digits}f} ± {fig['std'] / scale:.{digits}f}"
    )


def seeds_table(agg: dict) -> str:
    """Plain-text table: mean ± std over seeds, then each method's 95% interval of accuracy."""
    cols = ("accuracy", "f1", "node_min_accuracy", "average_accuracy")
    head = f"{'method':<12} " + " ".join(f"{c.replace('_accuracy', ''):>15}" for c in cols)
    lines = [
        f"test rows ({agg['test_rows']}), seeds {agg['seeds']}: mean ± std over seeds; accuracy "
        "and f1 = mean over the nodes' own adapters (centralized: its one model); node_min = "
        "the worst node; average = the network-average adapter",
        f"{head} {'MB sent/node':>12}",
    ]
    lines.append("-" * len(lines[-1]))
    for name, m in agg["methods"].items():
        cells = " ".join(f"{_cell(m.get(c)):>15}" for c in cols)
        mb = _cell(m.get("bytes_sent_per_node"), 1e6, 2)
        lines.append(f"{name:<12} {cells} {mb:>12}")
    for name, m in agg["methods"].items():
        ci = m["accuracy"]["ci95"]
        if ci is not None:
            lines.append(f"{name}: accuracy 95% interval {ci[0]:.4f} to {ci[1]:.4f}")
    return "\n".join(lines)


def run_seeds(cfg: Config, echo=print) -> tuple[Path, dict]:
    """``declora run seeds=[...]``: the job once per seed in ``out/seed_<s>/``, then the
    summary over seeds in ``out/summary.json`` and its table."""
    check_sizes(cfg)  # before the folder: each seed's run checks again, after it
    check_installed(cfg)
    out = make_out_dir(cfg)
    (out / "config.yaml").write_text(dump_config(cfg))
    summaries = {}
    for seed in cfg.seeds:
        echo(f"seed {seed} ({len(summaries) + 1} of {len(cfg.seeds)})")
        one = cfg.model_copy(update={"seed": seed, "seeds": None, "out": str(out / f"seed_{seed}")})
        summaries[seed] = sim.run(one, echo)[1]
    agg = aggregate(summaries)
    write_json(out / "summary.json", agg)
    echo(seeds_table(agg))
    return out, agg
