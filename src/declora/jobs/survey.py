"""``declora survey``: the data before any training, the first step of a rollout.

For each node: its training rows, their label histogram and the length of their texts in
words; across nodes, how far apart their label mixes are: the total-variation distance of each
node's label shares from the pooled shares, 0.5 * sum_c |p_ic - p_c| (0 when a node holds the
pooled mix, near 1 when it holds classes the others barely have). The rows and the split are
exactly those a run of the same config trains on (same held-out rows, same partition; with
per-site files, each site's own file and held-out rows); no model is loaded. Writes ``survey.json`` and ``survey.png`` (label shares per node). In a deployment
each machine surveys its own sites' files (``--nodes``), and the survey.json files, which hold
only counts, are combined into one (``--combine``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from declora.config import Config, ConfigError
from declora.harness.outputs import make_out_dir
from declora.harness.session import split
from declora.jobs.survey_file import fingerprint, read_part
from declora.learning.dataset import Rows, load_rows, load_site_rows, pair_texts


def _nodes(cfg: Config, only: list[int] | None) -> tuple[dict, list[str], int, int]:
    """{node: (training labels, words per text)}, the label names, and the validation and test
    rows held out: from the partition of one file, or from each site's own file (``only``:
    the sites whose files this machine holds)."""
    if cfg.data.per_site:
        ids = range(cfg.nodes) if only is None else _only(cfg, only)
        sites = {i: load_site_rows(cfg, i) for i in ids}
        per = {i: (r.labels[r.train_idx], _words(cfg, r, r.train_idx)) for i, r in sites.items()}
        held = [
            sum(len(r.val_idx) for r in sites.values()),
            sum(len(r.test_idx) for r in sites.values()),
        ]
        return per, list(cfg.data.labels), *held
    if only is not None:
        raise ConfigError("--nodes surveys some sites' own files: data.path needs {node}")
    r = load_rows(cfg)
    all_labels = r.labels[r.train_idx]  # (train rows,)
    all_words = _words(cfg, r, r.train_idx)  # (train rows,) or (train rows, 2) for pairs
    parts = split(cfg, all_labels)
    per = {i: (all_labels[p], all_words[p]) for i, p in enumerate(parts)}
    return per, r.names, len(r.val_idx), len(r.test_idx)


def _only(cfg: Config, only: list[int]) -> list[int]:
    """``--nodes``: each one of the run's nodes, once."""
    given = ",".join(map(str, only))
    for i in only:
        if not 0 <= i < cfg.nodes:
            last = cfg.nodes - 1
            raise ConfigError(f"--nodes {given}: node {i} is not one of nodes 0..{last}")
        if only.count(i) > 1:
            raise ConfigError(f"--nodes {given}: node {i} is given twice")
    return only


def _words(cfg: Config, r: Rows, idx: np.ndarray) -> np.ndarray:
    """Words per text of rows ``idx``: (rows,), or (rows, 2) for sentence pairs (each side)."""
    first = np.array([len(r.texts[k].split()) for k in idx], dtype=np.int64)
    second = pair_texts(cfg, [r.rows[k] for k in idx])
    if second is None:
        return first
    return np.stack([first, np.array([len(t.split()) for t in second], dtype=np.int64)], 1)


def _lengths(w: np.ndarray) -> dict:
    """words_mean / words_max of a node's texts, and pair_words_* of its second texts."""
    sides = {"": w} if w.ndim == 1 else {"": w[:, 0], "pair_": w[:, 1]}
    out = {}
    for prefix, col in sides.items():
        out[f"{prefix}words_mean"] = round(float(col.mean()), 1) if len(col) else 0.0
        out[f"{prefix}words_max"] = int(col.max()) if len(col) else 0
    return out


def survey(cfg: Config, only: list[int] | None = None) -> dict:
    """Per-node rows, label counts, text lengths, and the label heterogeneity (``only``: the
    given sites' files alone, to be combined later with :func:`combine`)."""
    per, names, val_rows, test_rows = _nodes(cfg, only)
    nodes = [
        {
            "node": i,
            "counts": dict(zip(names, np.bincount(labels, minlength=len(names)).tolist())),
            **_lengths(w),
        }
        for i, (labels, w) in per.items()
    ]
    head = {
        "fingerprint": fingerprint(cfg),
        "network_nodes": cfg.nodes,
        "data": cfg.data.path,
        "partition": "per-site files" if cfg.data.per_site else cfg.partition.model_dump(),
        "labels": names,
        "validation_rows": val_rows,
        "test_rows": test_rows,
    }
    return summarize(head, nodes)


def summarize(head: dict, nodes: list[dict]) -> dict:
    """The survey from each node's label counts alone: shares, pooled shares and the
    total-variation distance of each node from the pooled mix."""
    names = head["labels"]
    counts = np.array([[n["counts"][c] for c in names] for n in nodes], dtype=float)  # (n, C)
    shares = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    pooled = counts.sum(0) / counts.sum()  # (C,)
    tv = 0.5 * np.abs(shares - pooled).sum(1)  # (n,)
    for n, c, sh, d in zip(nodes, counts, shares, tv):
        n.update(rows=int(c.sum()), shares=dict(zip(names, sh.round(4).tolist())))
        n["tv_from_pooled"] = round(float(d), 4)
    return {
        **head,
        "rows": int(counts.sum()),
        "pooled_shares": dict(zip(names, pooled.round(4).tolist())),
        "heterogeneity": {"tv_mean": float(tv.mean()), "tv_max": float(tv.max())},
        "nodes": sorted(nodes, key=lambda n: n["node"]),
    }


def combine(paths: list[str]) -> dict:
    """One survey from several sites' survey.json files (:mod:`declora.jobs.survey_file`
    checks each): only their label counts and text lengths are read, never a row."""
    parts = [read_part(path) for path in paths]
    first = parts[0]
    names = first["labels"]
    if any(p["labels"] != names for p in parts):
        raise ConfigError(f"--combine: the surveys name different labels ({names}, ...)")
    same = ("fingerprint", "network_nodes")
    if any(p[k] != first[k] for p in parts for k in same):
        raise ConfigError(
            "--combine: the surveys are of another data set, split or partition, or of "
            "another number of nodes: survey every site with the same config"
        )
    nodes = [dict(n) for p in parts for n in p["nodes"]]
    ids = [n["node"] for n in nodes]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"--combine: a node appears in two surveys ({sorted(ids)})")
    head = {k: first[k] for k in ("fingerprint", "network_nodes", "data", "partition", "labels")}
    head["validation_rows"] = sum(p["validation_rows"] for p in parts)
    head["test_rows"] = sum(p["test_rows"] for p in parts)
    return summarize(head, nodes)


def format_survey(sv: dict) -> str:
    """The survey as a plain-text table, one row per node."""
    names = sv["labels"]
    shown = names if len(names) <= 6 else names[:5]
    head = f"{'node':>4} {'rows':>7} " + " ".join(f"{n[:9]:>9}" for n in shown)
    pairs = "pair_words_mean" in sv["nodes"][0]  # sentence pairs: each side's length
    head += f" {'words':>6} {'max':>5}" + (f" {'pair':>6} {'max':>5}" if pairs else "")
    head += f" {'TV':>6}"
    lines = [head, "-" * len(head)]
    for n in sv["nodes"]:
        cells = " ".join(f"{n['shares'][c]:>9.2f}" for c in shown)
        second = f" {n['pair_words_mean']:>6.1f} {n['pair_words_max']:>5}" if pairs else ""
        lines.append(
            f"{n['node']:>4} {n['rows']:>7,} {cells} {n['words_mean']:>6.1f} "
            f"{n['words_max']:>5}{second} {n['tv_from_pooled']:>6.3f}"
        )
    h = sv["heterogeneity"]
    lines.append(
        f"{sv['rows']:,} training rows ({sv['validation_rows']:,} validation and {sv['test_rows']:,} test rows held out), {len(names)} labels; "
        f"label shares per node; words per text (mean, max{'; pair: the second text' if pairs else ''}); TV = distance of a node's label "
        f"mix from the pooled one: mean {h['tv_mean']:.3f}, max {h['tv_max']:.3f}"
    )
    return "\n".join(lines)


def plot_survey(sv: dict, path: Path) -> None:
    """survey.png: each node's label shares as one stacked bar, its row count beside it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nodes = sv["nodes"]
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.35 * len(nodes)))
    left = np.zeros(len(nodes))
    for name in sv["labels"]:
        share = np.array([n["shares"][name] for n in nodes])
        ax.barh([n["node"] for n in nodes], share, left=left, label=name)
        left += share
    for n in nodes:
        ax.text(1.01, n["node"], f"{n['rows']:,} rows", va="center", fontsize=8)
    h = sv["heterogeneity"]
    ax.set(xlim=(0, 1), xlabel="label share", ylabel="node", yticks=[n["node"] for n in nodes])
    ax.set_title(f"label mix per node (TV from pooled: mean {h['tv_mean']:.3f})", fontsize=10)
    ax.invert_yaxis()
    ax.legend(title="label", fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.25), ncol=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_survey(
    cfg: Config, echo=print, only: list[int] | None = None, parts: list[str] | None = None
) -> tuple[Path, dict]:
    """Survey the config's data (``only`` some sites' files; or combine the ``parts``,
    survey.json files of sites); write survey.json and survey.png to a new ``out`` folder."""
    sv = combine(parts) if parts else survey(cfg, only)
    table = format_survey(sv)  # everything is computed before anything is written
    out = make_out_dir(cfg)
    (out / "survey.json").write_text(json.dumps(sv, indent=2))
    plot_survey(sv, out / "survey.png")
    echo(table)
    echo(f"written: {out / 'survey.json'}, {out / 'survey.png'}")
    return out, sv
