"""Reproduction study of Dec-LoRA (arXiv 2501.15361) and the consensus rules of issue 5, as one
markdown table (results/reproduce.md by default).

Groups of rows: the paper's Table-1 analogue (10 nodes, ring and Erdos-Renyi, (K=1, T=20) and
(K=5, T=10), dec-lora beside centralized), the ring rows again with 3x the rounds, LoRA ranks 2/4/8/16, 10 and 20 nodes, heterogeneity
(iid, Dirichlet 1 / 0.3 / 0.1, the paper's 3-node label skew) and the consensus rules
ab / frozen_a / product at Dirichlet 0.1. Every row is one ``declora.runtimes.sim.run`` per seed; the
table gives mean +- std over seeds, with the spectral gap of the row's mixing matrix beside it.
Learning rates come from the config (``lr``, ``per_method``), as for ``declora run``.

    .venv/bin/python benchmarks/reproduce.py --quick                 # minutes: a few rows, 1 seed
    .venv/bin/python benchmarks/reproduce.py                         # every row, 3 seeds
    .venv/bin/python benchmarks/reproduce.py --quick model.name=/path/to/tiny-bert data.path=x.csv
    .venv/bin/python benchmarks/reproduce.py --groups rules,ranks --seeds 0,1

Trailing ``key=value`` items are config overrides applied to every run, after the row's own.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from declora.config import ConfigError, load_config
from declora.runtimes import sim

LABEL_SKEW = "[[0.15,0.85],[0.85,0.15],[0.5,0.5]]"
TABLE1 = ["nodes=10", "partition.kind=iid", "methods=[dec-lora,centralized]"]
STUDY_BASE = ["nodes=10", "topology.kind=ring", "local_steps=5", "rounds=10", "methods=[dec-lora]"]

# group -> [(setting shown in the table, overrides)]; later overrides win
ROWS: dict[str, list[tuple[str, list[str]]]] = {
    "table1": [
        (f"{g}, K={k}, T={t}", [*TABLE1, f"topology.kind={g}", f"local_steps={k}", f"rounds={t}"])
        for g in ("ring", "erdos_renyi")
        for k, t in ((1, 20), (5, 10))
    ],
    # the same rows with three times the rounds: how far the gap to centralized is a budget gap
    "budget": [
        (f"ring, K={k}, T={t}", [*TABLE1, "topology.kind=ring", f"local_steps={k}", f"rounds={t}"])
        for k, t in ((1, 60), (5, 30))
    ],
    "ranks": [
        (f"rank {r}", [*STUDY_BASE, "partition.kind=iid", f"lora.rank={r}"]) for r in (2, 4, 8, 16)
    ],
    "nodes": [(f"{n} nodes", [*STUDY_BASE, "partition.kind=iid", f"nodes={n}"]) for n in (10, 20)],
    "heterogeneity": [
        ("iid", [*STUDY_BASE, "partition.kind=iid"]),
        *(
            (f"dirichlet {a:g}", [*STUDY_BASE, "partition.kind=dirichlet", f"partition.alpha={a}"])
            for a in (1.0, 0.3, 0.1)
        ),
        (
            "label skew, 3 nodes",
            [
                *STUDY_BASE,
                "nodes=3",
                "partition.kind=label_skew",
                f"partition.proportions={LABEL_SKEW}",
            ],
        ),
    ],
    "rules": [
        (
            f"consensus={rule}, dirichlet 0.1",
            [*STUDY_BASE, "partition.kind=dirichlet", "partition.alpha=0.1", f"consensus={rule}"],
        )
        for rule in ("ab", "frozen_a", "product")
    ],
}
# --quick: these rows, one seed, shrunk so that the bundled MiniLM takes a few minutes on 2 cores
QUICK_ROWS = {"table1": [1], "rules": [0, 1, 2]}
QUICK = [
    "nodes=4",
    "rounds=4",
    "local_steps=2",
    "batch_size=8",
    "max_length=32",
    "data.train_size=400",
    "data.test_size=200",
    "data.val_size=200",
    "node_eval_size=50",
]
ALWAYS = ["export_adapters=false"]


def row_overrides(overrides: list[str], extra: list[str]) -> list[str]:
    """The paper's equal weights and each node's own AdamW, the row's settings, then ``extra``; a label-skew row keeps its
    node count (one share vector per node), whatever quick mode or the command line say."""
    pinned = [o for o in overrides if o.startswith("nodes=")]
    rows = [*overrides, *extra, *(pinned if "partition.kind=label_skew" in overrides else [])]
    return ["weighting=uniform", "second_moment=own", *rows]


def plan(quick: bool, groups: list[str] | None) -> list[tuple[str, str, list[str]]]:
    """(group, setting, overrides) of every row to run."""
    chosen = groups or (list(QUICK_ROWS) if quick else list(ROWS))
    unknown = [g for g in chosen if g not in ROWS]
    if unknown:
        raise ConfigError(f"unknown groups {unknown}; choose from {list(ROWS)}")
    out = []
    for g in chosen:
        picks = QUICK_ROWS.get(g, range(len(ROWS[g]))) if quick else range(len(ROWS[g]))
        out += [(g, *ROWS[g][i]) for i in picks]
    return out


def run_key(cfg) -> str:
    """What makes two rows the same run: the resolved config without its output folder."""
    return json.dumps(cfg.model_dump(mode="json", exclude={"out"}), sort_keys=True)


def run_row(
    overrides: list[str], seeds: list[int], folder: Path, done: dict[str, dict]
) -> dict[str, list[dict]]:
    """method -> per-seed summary entries (spectral gap added), one sim.run per seed. A run whose
    resolved config is in ``done`` (another group's row, e.g. rank 8 = iid) is not repeated."""
    per_method: dict[str, list[dict]] = {}
    for seed in seeds:
        out = folder / f"seed{seed}"
        cfg = load_config(None, [*overrides, f"seed={seed}", f"out={out}"])
        key = run_key(cfg)
        if key not in done:
            _, summary = sim.run(cfg, echo=lambda *_: None)
            saved = json.loads((out / "summary.json").read_text())
            assert saved["methods"].keys() == summary["methods"].keys()
            done[key] = saved
        saved = done[key]
        for method, entry in saved["methods"].items():
            per_method.setdefault(method, []).append({**entry, "gap": saved["spectral_gap"]})
    return per_method


def stat(values: list[float | None], digits: int = 4) -> str:
    """mean +- std over seeds (std left out for one seed); empty when nothing was measured."""
    vals = [v for v in values if v is not None and np.isfinite(v)]
    if not vals:
        return ""
    mean = f"{np.mean(vals):.{digits}f}"
    return mean if len(vals) == 1 else f"{mean} ± {np.std(vals, ddof=1):.{digits}f}"


def table_lines(results: list[tuple[str, str, str, list[dict]]]) -> list[str]:
    lines = [
        "| group | setting | method | seeds | accuracy | F1 | node min acc | average acc "
        "| consensus AB | spectral gap | bytes / edge / round | MB sent / node |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for group, setting, method, runs in results:
        dec = method != "centralized"

        def col(key, digits=4, runs=runs):
            return stat([r.get(key) for r in runs], digits)

        mb = stat([r["bytes_sent_per_node"] / 1e6 for r in runs], 2) if dec else "0"
        avg = stat([r.get("average_adapter", {}).get("accuracy") for r in runs])
        lines.append(
            f"| {group} | {setting} | {method} | {len(runs)} | {col('accuracy')} | {col('f1')} "
            f"| {col('node_min_accuracy') if dec else ''} | {avg if dec else ''} "
            f"| {col('consensus_ab', 3) if dec else ''} "
            f"| {col('gap') if dec else ''} "
            f"| {runs[0]['bytes_per_edge_round'] if dec else 0:,} | {mb} |"
        )
    return lines


def markdown(results, command: str, args, extra: list[str], seconds: float) -> str:
    cfg = load_config(None, extra)
    mode = "quick" if args.quick else "full"
    lines = [
        "# Dec-LoRA reproduction study and consensus rules",
        "",
        f"Command: `{command}`",
        "",
        f"Mode: {mode}; seeds {args.seeds}; model {cfg.model.name}, data {cfg.data.path}. Unless a "
        f"row says otherwise: {cfg.mixing} weights, LoRA rank {cfg.lora.rank}, batch "
        f"{cfg.batch_size}, lr {cfg.lr:g} (per_method {cfg.per_method or '{}'}), {cfg.optimizer}, "
        f"{cfg.schedule} schedule, messages {cfg.compression.kind}.",
    ]
    if args.quick:
        lines.append(
            f"Quick mode shrinks every row with `{' '.join(QUICK)}` (after the row's own settings, "
            "so nodes / K / T in the setting column are overridden): a smoke test of the study, "
            "not its numbers."
        )
    lines += [
        "",
        f"Accuracy and F1: the mean over the nodes' own adapters (what each site holds; the "
        f"one model for centralized) on the {cfg.data.test_size} test rows, scored once at the "
        "end; node min acc: the worst node's own adapter; average acc: the network-average "
        "adapter, which no site holds; consensus AB: mean_i ||B_i A_i - mean_j B_j A_j||_F / "
        "||mean_j B_j A_j||_F at the last round; mean ± std over seeds.",
        "",
        *table_lines(results),
        "",
        f"{sum(len(r[3]) for r in results)} method runs in {seconds / 60:.1f} min on "
        f"{platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a few rows, one seed, small data")
    p.add_argument("--seeds", default=None, help="comma-separated seeds (default 0 quick, 0,1,2)")
    p.add_argument("--groups", default=None, help=f"comma-separated subset of {list(ROWS)}")
    p.add_argument("--one-seed", default=None, help="groups to run with the first seed only")
    p.add_argument("--out", default=None, help="folder for the runs (default: a temp folder)")
    p.add_argument("--table", default="results/reproduce.md", help="markdown output")
    p.add_argument("overrides", nargs="*", help="key=value config overrides for every run")
    args = p.parse_args(argv)
    args.seeds = [int(x) for x in (args.seeds or ("0" if args.quick else "0,1,2")).split(",")]
    extra = [*(QUICK if args.quick else []), *args.overrides, *ALWAYS]
    try:
        rows = plan(args.quick, args.groups.split(",") if args.groups else None)
        for _, _, overrides in rows:  # refuse a bad override before any training
            load_config(None, row_overrides(overrides, extra))
    except ConfigError as err:
        print(f"reproduce: {err}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    results, done = [], {}
    one_seed = set(args.one_seed.split(",")) if args.one_seed else set()
    command = " ".join(["python benchmarks/reproduce.py", *argv])
    with tempfile.TemporaryDirectory(prefix="declora-reproduce-") as tmp:
        root = Path(args.out or tmp)
        for n, (group, setting, overrides) in enumerate(rows):
            folder = root / f"{n:02d}-{group}"
            print(f"[{n + 1}/{len(rows)}] {group}: {setting}", file=sys.stderr, flush=True)
            seeds = args.seeds[:1] if group in one_seed else args.seeds
            per_method = run_row(row_overrides(overrides, extra), seeds, folder, done)
            for method, runs in per_method.items():
                results.append((group, setting, method, runs))
                accuracy = [r["accuracy"] for r in runs]
                print(
                    json.dumps(
                        {"group": group, "setting": setting, "method": method, "accuracy": accuracy}
                    ),
                    flush=True,
                )
            # the table so far, so that an interrupted study keeps what it measured
            write_outputs(results, command, args, extra, time.perf_counter() - t0)
    print(Path(args.table).read_text())
    return 0


def write_outputs(results, command, args, extra, seconds) -> None:
    """The markdown table, the raw per-seed entries beside it (.json) and the plot (.png)."""
    table = Path(args.table)
    table.parent.mkdir(parents=True, exist_ok=True)
    table.write_text(markdown(results, command, args, extra, seconds))
    raw = [{"group": g, "setting": s, "method": m, "runs": runs} for g, s, m, runs in results]
    table.with_suffix(".json").write_text(json.dumps(raw, indent=1))
    plot(results, table.with_suffix(".png"))


def plot(results, path: Path) -> None:
    """Accuracy (mean, std bars over seeds) of every row, one panel per group."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(dict.fromkeys(g for g, *_ in results))
    fig, axes = plt.subplots(1, len(groups), figsize=(3.2 * len(groups) + 1, 4), squeeze=False)
    colors = {"dec-lora": "tab:blue", "centralized": "tab:orange", "local": "tab:green"}
    for ax, group in zip(axes[0], groups):
        rows = [r for r in results if r[0] == group]
        for x, (*_, method, runs) in enumerate(rows):
            acc = [r["accuracy"] for r in runs]
            ax.bar(
                x,
                np.mean(acc),
                yerr=np.std(acc, ddof=1) if len(acc) > 1 else None,
                color=colors.get(method, "tab:gray"),
                capsize=3,
                label=method,
            )
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels(
            [f"{s}\n{m}" if group == "table1" else s for _, s, m, _ in rows],
            rotation=60,
            ha="right",
            fontsize=7,
        )
        low = min(min(r["accuracy"] for r in runs) for *_, runs in rows)
        ax.set_ylim(max(0.0, low - 0.05), 1.0)
        ax.set_title(group)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("test accuracy (mean of the nodes' own adapters)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    fig.legend(unique.values(), unique.keys(), loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
