"""A run's folder: config.yaml and labels.json at the start, then adapters, summary.json,
curves.png and the results table at the end. The opening lines a run prints."""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path

import numpy as np

from declora.algorithms.compress import describe
from declora.algorithms.consensus import network_average
from declora.algorithms.methods import METHODS
from declora.algorithms.scores import from_counts
from declora.algorithms.tensors import State, numel
from declora.config import Config, ConfigError, dump_config
from declora.harness.evaluation import evaluate_untrained
from declora.harness.loggers import log_site
from declora.harness.report import RunLog, headline, write_json
from declora.harness.runner import Played
from declora.harness.session import Session, finish_rounds_of, stepped
from declora.harness.summary import Summary, final_figures
from declora.learning import devices
from declora.learning.adapters import export_adapter


def make_out_dir(cfg: Config) -> Path:
    """A new or empty output folder (never one that holds another run's files)."""
    out = new_out_dir(cfg)
    create_dir(out)
    return out


def new_out_dir(cfg: Config) -> Path:
    """The folder ``make_out_dir`` will create, checked (:func:`check_out`) and refused if it
    holds files; nothing is created (a run checks it before it loads anything)."""
    out = Path(cfg.out or f"runs/{datetime.now():%Y%m%d-%H%M%S}")
    if check_out(out):
        raise ConfigError(f"out={out} already holds files; choose an empty or new folder")
    return out


def check_out(out: Path) -> bool:
    """Whether ``out`` is a folder that holds files; an ``out`` that cannot be a run's
    folder is one ConfigError line: a file, a name the file system refuses (too long), a
    place this user cannot write in (read-only, immutable, another user's)."""
    try:
        if out.exists() and not out.is_dir():
            raise ConfigError(f"out={out} is a file, not a folder; choose a new folder")
        held = out.is_dir() and any(out.iterdir())
        base = next(p for p in (out, *out.parents) if p.exists())
    except OSError as err:
        raise ConfigError(f"out={out}: cannot use this path ({err.strerror})") from None
    if not base.is_dir():
        raise ConfigError(f"out={out}: cannot create the folder ({base} is a file)")
    if not os.access(base, os.W_OK | os.X_OK):
        raise ConfigError(
            f"out={out}: cannot write in {base} (read-only, immutable or another user's); "
            "choose another folder"
        )
    return held


def create_dir(out: Path) -> None:
    """mkdir -p, with a one-line error for a path that cannot be created."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"out={out}: cannot create the folder ({err.strerror})") from None


def write_run_files(s: Session, out: Path) -> None:
    """config.yaml and labels.json, written when a run starts."""
    (out / "config.yaml").write_text(dump_config(s.cfg))
    (out / "labels.json").write_text(json.dumps(dict(enumerate(s.train.label_names)), indent=1))


def describe_run(s: Session, out: Path) -> list[str]:
    """The lines a run opens with: graph, data, adapter, messages, faults."""
    cfg = s.cfg
    comp = cfg.sent()  # dec-lora's messages
    scheme = f"choco, gamma {comp.gamma:g}" if comp.scheme == "choco" else "direct"
    lines = [
        f"{cfg.nodes} nodes on a {describe_graph(s)}; "
        f"{sum(s.node_rows)} training rows, {min(s.node_rows)}-{max(s.node_rows)} a node; "
        f"adapter {numel(s.init):,} values; output in {out}",
        f"messages: {describe(comp)}; scheme {scheme}",
        f"compute: {devices.describe(s.device)}, precision {cfg.precision}"
        + (", every node's steps in one batch (vectorize)" if cfg.vectorize else ""),
        *describe_methods(cfg),
    ]
    lines += describe_pairs(s)
    if cfg.data.per_site:
        how = "off: each site scores its own rows" if not cfg.gather else "on: site 0's rows"
        lines.append(f"data: one file per site ({cfg.data.path}); eval.gather {how}")
        if "partition" in cfg.model_fields_set:
            lines.append("partition settings do not apply: each site's file is its data")
    f = cfg.faults
    if f.link_drop or f.node_drop:
        lines.append(
            f"faults (dec-lora): each link down with p={f.link_drop:g}, each node out with "
            f"p={f.node_drop:g} per round; Metropolis weights on the surviving graph"
        )
    lines += describe_privacy(s)
    return lines


def describe_methods(cfg: Config) -> list[str]:
    """Each method's own values (``per_method`` over the top-level ones): learning rate,
    schedule and, where its nodes gossip, gossip steps and gossip-only rounds."""
    lines = []
    for name in cfg.methods:
        own = cfg.for_method(name)
        line = f"{name}: lr {own.lr:g} (head x{own.head_lr_scale:g}), {own.schedule} schedule"
        if METHODS[name].gossips:
            g = own.gossip_steps
            line += f"; {g} gossip step{'s' * (g != 1)} a round, {_finishing(cfg, name)} at the end"
        lines.append(line)
    return lines


def _finishing(cfg: Config, name: str) -> str:
    """ "40 gossip-only rounds", "3 gossip-only rounds (of 40: the graph has then averaged
    exactly)", or none when every round ends at the exact average."""
    own, played = cfg.for_method(name).finish_rounds, finish_rounds_of(cfg, name)
    line = f"{played} gossip-only round{'s' * (played != 1)}"
    if played == own:
        return line
    if not played:
        return f"no gossip-only rounds (of {own}: every round ends at the exact average)"
    return f"{line} (of {own}: the graph has then averaged exactly)"


def describe_pairs(s: Session) -> list[str]:
    """What the tokenizer receives of a sentence-pair task (none for single texts)."""
    cfg, d = s.cfg, s.cfg.data
    if d.text_pair_column is None:
        return []
    if cfg.task == "causal_lm":
        how = f"both in the prompt template '{d.prompt_template}'"
    elif s.train.token_types is not None:
        how = "token type ids 0 and 1 (as BERT was pre-trained on pairs)"
    else:
        how = "no token type ids (the tokenizer gives none)"
    return [
        f"data: sentence pairs ({d.text_column}, {d.text_pair_column}), {cfg.max_length} tokens "
        f"together, the longer side cut first; {how}"
    ]


def describe_graph(s: Session) -> str:
    """The graph, its weights and how fast it mixes; the remedies against skew in use."""
    cfg, g = s.cfg, stepped(s.graph, s.cfg)
    if g.varies:
        exact = g.rounds_to_exact
        mixes = (
            f"the exact average every {'round' if exact == 1 else f'{exact} rounds'}"
            if exact
            else f"per-round contraction {1 - g.gap:.4f}"
        )
        walk = "changing every round" if g.steps == 1 else f"{g.steps} of its matrices a round"
        text = f"{cfg.topology.kind} graph (its own weights, {walk}: {mixes})"
    else:
        text = f"{cfg.topology.kind} ({cfg.mixing} weights, spectral gap {g.gap:.4f})"
    remedies = []
    if cfg.exchange == "relay":
        remedies.append("relay along a spanning tree")
    if cfg.exchange == "gradients":
        remedies.append("each step's gradient mixed before the optimizer (one model)")
    if cfg.correction == "tracking":
        remedies.append("gradient tracking")
    if cfg.weighting == "rows":
        remedies.append("nodes weighted by their rows")
    if cfg.moments_mixed():
        remedies.append("AdamW's second moments mixed")
    return text + "".join(f", {r}" for r in remedies)


REPRODUCIBLE = (
    "WARNING privacy.reproducible=true: the DP noise and sample follow the shared seed, so "
    "anyone with the config can remove the noise: NO privacy guarantee holds (research and "
    "tests only)"
)


def describe_privacy(s: Session) -> list[str]:
    """DP-SGD's settings: each method's noise and the epsilon it ends at; encryption."""
    p, lines = s.cfg.privacy, []
    for method, budgets in s.budgets.items():
        lo, hi = (f(b.noise for b in budgets.values()) for f in (min, max))
        end = max(b.spent(b.limit) for b in budgets.values())
        stop = min(b.limit for b in budgets.values())
        planned = max(b.steps for b in budgets.values())
        lines.append(
            f"privacy ({method}): DP-SGD, Poisson sampling, clip {p.clip:g}, noise multiplier "
            f"{lo:.3g}"
            + (f"-{hi:.3g}" if hi > lo else "")
            + f"; epsilon {end:.3g} at delta {p.delta:g} by the "
            "end (largest over nodes, "
            + p.accountant.upper()
            + " accountant)"
            + (f"; the epsilon cap stops training after {stop} steps" if stop < planned else "")
        )
    if p.enabled and p.reproducible:
        lines.append(REPRODUCIBLE)
    if s.cfg.security.encrypt:
        lines.append("links: every adapter message is encrypted (AES-256-GCM, a key per run)")
    return lines


def finish_method(
    s: Session,
    out: Path,
    summary: Summary,
    method: str,
    last: dict,
    states: list[State] | None,
    sites: dict | None = None,
) -> None:
    """Score what the method's nodes hold on the test rows (or take ``sites``, the sites'
    figures on their own test rows), add it to the summary, and export its adapters (where
    this process holds them all)."""
    summary.add(method, last, sites or final_figures(s, states))
    if s.cfg.export_adapters and states is not None:
        export_method(s, method, states, out / "adapters" / method)


def export_site(s: Session, out: Path, node: int, state: State) -> Path:
    """A site's own outputs, on its own machine: out/node_<i>/adapter (PEFT)."""
    folder = out / f"node_{node}"
    export_adapter(s.model, state, folder / "adapter")
    return folder


def export_method(s: Session, method: str, states: list[State], path: Path) -> None:
    """adapters/<method>/ holds the network's adapter; node_<i>/ the nodes' own adapters."""
    export_adapter(s.model, network_average(states, s.cfg.consensus), path)
    if METHODS[method].export_nodes:
        for i, st in enumerate(states):
            export_adapter(s.model, st, path / f"node_{i}")


def write_site(s: Session, out: Path, node: int, state: State, counts: np.ndarray) -> None:
    """out/node_<i>/ on this site's machine: its adapter (PEFT) and its own test figures from
    ``counts``, its scoring at the end (beside its log.txt), also to its own loggers."""
    folder = out / f"node_{node}"
    if s.cfg.export_adapters:
        export_site(s, out, node, state)
    folder.mkdir(parents=True, exist_ok=True)
    figures = {"rows": int(counts[0]), **from_counts(counts)}
    write_json(folder / "site.json", {"node": node, **figures})
    rounds = s.cfg.for_method("dec-lora").rounds + finish_rounds_of(s.cfg, "dec-lora")
    log_site(s.cfg, folder, node, figures, rounds)


def finish_dist(
    s: Session, out: Path, log: RunLog, played: Played, runtime: dict, echo=print
) -> None:
    """Rank 0 of a launch: the summary (as the simulator writes it), adapters and curves."""
    summary = Summary(s, evaluate_untrained(s))
    finish_method(s, out, summary, "dec-lora", log.records[-1], played.states, played.sites)
    finish_run(out, log, summary, runtime, echo)


def finish_run(out: Path, log: RunLog, summary: Summary, runtime: dict, echo=print) -> None:
    """summary.json (with where the run ran) and curves.png, then the results table."""
    summary.write(out, runtime)
    plot_curves(log.records, out / "curves.png")
    echo(summary.table())


def keep_stopped(out: Path, log: RunLog, summary: Summary, reason: str) -> None:
    """A run that stopped early keeps what ran: the methods before, the curves up to then."""
    summary.stop(reason)
    summary.write(out)
    plot_curves(log.records, out / "curves.png")


def plot_curves(records: list[dict], path: Path) -> None:
    """curves.png: accuracy and loss against round for each method, and consensus distances."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for name in dict.fromkeys(r["method"] for r in records):
        method = METHODS[name]
        rows = [r for r in records if r["method"] == name]
        rounds = [r["round"] for r in rows]
        # what the headline reports: the nodes' own adapters where no node holds the average
        shown = [headline(name, r) for r in rows]
        label = f"{name} (mean of nodes)" if method.spread else name
        axes[0].plot(rounds, [h["accuracy"] for h in shown], marker="o", label=label)
        axes[1].plot(rounds, [h["loss"] for h in shown], marker="o", label=label)
        if method.spread:
            for key, style in (("consensus_ab", "-"), ("consensus_a", ":"), ("consensus_b", "--")):
                pts = [(r["round"], r[key]) for r in rows if r.get(key)]
                if pts:
                    axes[2].plot(*zip(*pts), style, marker=".", label=f"{name} {key[10:]}")
    axes[0].set(title="validation accuracy", xlabel="round", ylabel="accuracy")
    axes[1].set(title="validation loss", xlabel="round", ylabel="cross-entropy")
    axes[2].set(title="consensus distance (relative)", xlabel="round", yscale="log")
    save_figure(fig, axes, path)


def save_figure(fig, axes, path: Path) -> None:
    """Grid and legend on every panel that drew something, then the PNG; the figure is closed."""
    import matplotlib.pyplot as plt

    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.has_data():
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
