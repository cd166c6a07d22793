"""The remedies against label skew, measured side by side: results/skew.md.

Three phases, each resumable (a finished run or trial is not run again):

    python benchmarks/skew.py tune --jobs 2     # every variant: declora tune on validation rows
    python benchmarks/skew.py test --jobs 2     # every variant x partition x seed, test rows once
    python benchmarks/skew.py choose --jobs 2   # the candidates for the default: validation, 3 seeds
    python benchmarks/skew.py table             # results/skew.md, skew.json, skew/choose.json

``tune``: each variant gets the same search (``--trials`` trials of ``declora tune`` over the
learning rate, the head's multiple of it, the schedule and, where nodes gossip, the
gossip-only finishing rounds) on the default job's partition (8 nodes, Dirichlet 0.5, seed 0),
scored on the 500 validation rows; the test rows are not read. ``test``: each variant with the
values its search chose, on every partition (IID, Dirichlet 0.5 and 0.1 on 8 nodes,
Dirichlet 0.5 on 16), seeds 0, 1, 2, each run scored once on the 1,000 test rows. Runs go
``--jobs`` at a time, one thread each (``OMP_NUM_THREADS=1``), into ``runs/skew/``; the
tables and each variant's search (``tuned.yaml``, ``trials.csv``) go to ``results/``, and so do
the figures the tables are built from (``skew.json``, ``skew/choose.json``): ``runs/`` is not
kept, and the table phase adds what it finds there to that record.
``choose``: the candidates for the default job (``CANDIDATES``; ``--only`` names others, such
as ``RING_CANDIDATES``), each with its values, scored on the validation rows of the default
job's partition at seeds 0, 1 and 2 (one trial of
``declora tune`` each: the search's seed 0 alone cannot show a failure that only another
partition has, such as seed 2's size skew); the best mean is the default. The three best
candidates then get the same two extra values of the learning rate (``REFINED``: x0.5 and
x2, ``choose --only`` with their names), scored the same way.

Runs ``declora`` as a user would (subprocesses of the CLI), so it imports nothing of the
package but the public API (for the config's fields).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "runs" / "skew"
RESULTS = ROOT / "results"
SEEDS = (0, 1, 2)
# the search: the same values and trials for every variant; scored once at the end of each
# trial (no pruning, so no evaluation on the way: the trials' time goes into training)
SEARCH = [
    "tune.params=[lr,head_lr_scale,schedule,finish_rounds]",
    "tune.prune=false",
    "eval_every=70",
]

# variant -> (method, overrides); dec-lora's variants differ only in graph and remedies. Each
# names its graph, weighting and second moment: the built-in default is itself a variant
EQUAL = "weighting=uniform"
OWN = "second_moment=own"  # each node's AdamW keeps its own second moment (the paper's)
ONE = "gossip_steps=1"  # one mixing step a round (the paper's; the built-in job takes 3)
# the ring's W twice a round (twice the bytes), and Base-2's 3 matchings a round (the exact
# average every round), each with size weighting: two variants each, at two sets of values
RING_X2 = ["topology.kind=ring", "gossip_steps=2", "weighting=rows", OWN]
BASE_X3 = ["topology.kind=base", "gossip_steps=3", "weighting=rows", OWN]
# relay sums on the ring's spanning path, size weighting: at two sets of values too
RELAY_ROWS = ["topology.kind=ring", "exchange=relay", "weighting=rows", OWN, ONE]


def smaller(rounds: int, batch: int) -> list[str]:
    """``rounds`` rounds of ``batch`` rows a node (the default's 70 x 16 samples), 8-bit
    messages, no finishing rounds."""
    return [
        f"rounds={rounds}",
        f"batch_size={batch}",
        "compression.kind=quantize",
        "compression.bits=8",
        "per_method.dec-lora.finish_rounds=0",
    ]


VARIANTS = {
    "ring": ("dec-lora", ["topology.kind=ring", EQUAL, OWN, ONE]),
    "ring + relay": ("dec-lora", ["topology.kind=ring", "exchange=relay", EQUAL, OWN, ONE]),
    "ring + tracking": ("dec-lora", ["topology.kind=ring", "correction=tracking", EQUAL, OWN, ONE]),
    "ring + rows": ("dec-lora", ["topology.kind=ring", "weighting=rows", OWN, ONE]),
    "ring x2 + rows": ("dec-lora", RING_X2),
    # the same at the values of the ring's search with size weighting (lr 15x smaller)
    "ring x2 + rows, ring + rows' values": ("dec-lora", RING_X2),
    "ring + relay + rows": ("dec-lora", RELAY_ROWS),
    # tracking corrects each node's drift to its own labels; with rows, towards the pooled loss
    "ring + tracking + rows": (
        "dec-lora",
        ["topology.kind=ring", "correction=tracking", "weighting=rows", OWN, ONE],
    ),
    # two of the ring's remedies at the values the default runs at (Base-2's, finishing rounds 40)
    "ring x2 + rows, the default's values": ("dec-lora", RING_X2),
    "ring + relay + rows, the default's values": ("dec-lora", RELAY_ROWS),
    "one-peer exp.": ("dec-lora", ["topology.kind=one_peer_exponential", EQUAL, OWN, ONE]),
    "Base-2": ("dec-lora", ["topology.kind=base", EQUAL, OWN, ONE]),
    "one-peer exp. + rows": (
        "dec-lora",
        ["topology.kind=one_peer_exponential", "weighting=rows", OWN, ONE],
    ),
    "Base-2 + rows": ("dec-lora", ["topology.kind=base", "weighting=rows", OWN, ONE]),
    "Base-2 + rows + moments": (
        "dec-lora",
        ["topology.kind=base", "weighting=rows", "second_moment=mixed", ONE],
    ),
    # Base-2's matrices 2 a round (gossip steps), then 3 (BASE_X3)
    "Base-2 x2 + rows": (
        "dec-lora",
        ["topology.kind=base", "gossip_steps=2", "weighting=rows", OWN],
    ),
    "Base-2 x3 + rows": ("dec-lora", BASE_X3),
    # the same, at the values of its own search (the default runs at Base-2's: see CANDIDATES)
    "Base-2 x3 + rows, own search": ("dec-lora", BASE_X3),
    # the same samples in more, smaller rounds (an averaged AdamW step every 8 or 4 rows a
    # node, not every 16), its messages in 8 bits so that the bytes stay under the ring's;
    # no finishing rounds (the default's end at once: its nodes already hold the average)
    "Base-2 x3 + rows, 140 rounds of 8, 8-bit": ("dec-lora", [*BASE_X3, *smaller(140, 8)]),
    "Base-2 x3 + rows, 280 rounds of 4, 8-bit": ("dec-lora", [*BASE_X3, *smaller(280, 4)]),
    # A frozen at its (shared) start, only B and the head exchanged (FFA-LoRA, Sun et al. 2024):
    # half the bytes, and the nodes' average of B A is then the product of the averages
    "Base-2 x3 + rows, frozen A": ("dec-lora", [*BASE_X3, "consensus=frozen_a"]),
    # each node's gradient mixed before its AdamW takes it (exchange=gradients): with the exact
    # average every round the nodes stay one model with one optimizer state (large-batch
    # training on the pooled rows), where mixing the models averages eight own AdamW steps
    "Base-2 x3 + rows, gradients": ("dec-lora", [*BASE_X3, "exchange=gradients"]),
    # the same at its own search's values: one AdamW on the network's gradient of 8 x 16 rows
    # takes full steps, where the mean of eight own AdamW steps is shorter
    "Base-2 x3 + rows, gradients, own search": ("dec-lora", [*BASE_X3, "exchange=gradients"]),
    # the built-in gossip_steps: period (Base-2's period: 3 on 8 nodes, so the row above; 4 on
    # 16, exact every round there)
    "Base-2 period + rows": (
        "dec-lora",
        ["topology.kind=base", "gossip_steps=period", "weighting=rows", OWN],
    ),
    "fedavg (exact every round)": ("fedavg", [EQUAL, OWN, ONE]),
    "centralized": ("centralized", []),
}
# a variant not searched in this study takes the searched values of the one it adds to:
# both are then scored at the same values, so the choice between them is of equal effort
VALUES_OF = {
    "Base-2 + rows": "Base-2",
    "Base-2 + rows + moments": "Base-2",
    "Base-2 x2 + rows": "Base-2",
    "Base-2 x3 + rows": "Base-2",
    "Base-2 period + rows": "Base-2",
    "Base-2 x3 + rows, 140 rounds of 8, 8-bit": "Base-2",
    "Base-2 x3 + rows, 280 rounds of 4, 8-bit": "Base-2",
    "Base-2 x3 + rows, frozen A": "Base-2",
    "Base-2 x3 + rows, gradients": "Base-2",
    "ring x2 + rows": "ring",
    "ring x2 + rows, ring + rows' values": "ring + rows",
    "ring + relay + rows": "ring + relay",
    "ring + tracking + rows": "ring + tracking",
    "ring x2 + rows, the default's values": "Base-2",
    "ring + relay + rows, the default's values": "Base-2",
    # not searched: on 8 nodes (a power of 2) it averages exactly every 3 rounds, as Base-2 does
    "one-peer exp.": "Base-2",
    "one-peer exp. + rows": "Base-2",
}
# what the default job chooses between, on validation rows of three partitions; and the same
# choice for a user whose links form the paper's ring
CANDIDATES = (
    "Base-2",
    "Base-2 + rows",
    "Base-2 + rows + moments",
    "Base-2 x2 + rows",
    "Base-2 x3 + rows",
    "Base-2 x3 + rows, own search",
    "Base-2 x3 + rows, 140 rounds of 8, 8-bit",
    "Base-2 x3 + rows, 280 rounds of 4, 8-bit",
    "Base-2 x3 + rows, frozen A",
    "Base-2 x3 + rows, gradients",
    "Base-2 x3 + rows, gradients, own search",
)
# the learning rate of the three candidates with the best validation means above (0.803,
# 0.802, 0.795; the next is 0.767) halved and doubled, everything else at their values: the
# same two extra values for each finalist, scored as ``choose`` scores them. A six-trial search
# leaves wide gaps in the rate (the mixed gradients' drew nothing between 0.003 and 0.015)
FINALISTS = (
    "Base-2 x3 + rows",
    "Base-2 x3 + rows, 140 rounds of 8, 8-bit",
    "Base-2 x3 + rows, gradients, own search",
)
REFINED = {f"{name}, lr x{m:g}": (name, m) for name in FINALISTS for m in (0.5, 2.0)}
VARIANTS.update({refined: VARIANTS[name] for refined, (name, _) in REFINED.items()})
CANDIDATES += tuple(REFINED)
RING_CANDIDATES = (
    "ring + relay",
    "ring + relay + rows",
    "ring x2 + rows",
    "ring + rows",
    "ring x2 + rows, ring + rows' values",
    "ring + tracking + rows",
    "ring x2 + rows, the default's values",
    "ring + relay + rows, the default's values",
)
# the default job's partition, then the others
PARTITIONS = {
    "Dirichlet 0.5": [],
    "IID": ["partition.kind=iid"],
    "Dirichlet 0.1": ["partition.alpha=0.1"],
    "Dirichlet 0.5, 16 nodes": ["nodes=16"],
}
COMMON = ["export_adapters=false"]
# exchange=gradients needs the exact average every round: Base-2's period is 3 matchings on 8
# nodes (the x3 of the names) and 4 on 16, where 3 a round are refused
EXACT_ON = {"Dirichlet 0.5, 16 nodes": ["gossip_steps=period"]}


def overrides(name: str, part: str) -> list[str]:
    """The partition's overrides, and what a variant needs on it."""
    exact = EXACT_ON.get(part, []) if "exchange=gradients" in VARIANTS[name][1] else []
    return [*PARTITIONS[part], *exact]


# what the table's empty cells stand for, where the figure is elsewhere
ELSEWHERE = [
    "Base-2 x3 + rows on Dirichlet 0.5 was the default job until the refinement below: its "
    "three seeds are `declora run 'seeds=[0,1,2]'` from a fresh clone at that time, 0.790 ± "
    "0.003, 62.6 MB a node, at the same values `skew.py test` would use. The default job now "
    "is Base-2 x3 + rows, 140 rounds of 8, 8-bit, lr x0.5 (its row above).",
    "centralized on 8 nodes pools every training row whatever the partition (IID and Dirichlet "
    "cover every row) and samples them from its own stream: its Dirichlet 0.5 figure is its "
    "figure on IID and Dirichlet 0.1 too.",
    "On 16 nodes the mixed gradients (the variants with gradients in their names) play Base-2's "
    "whole period a round, 4 matchings (`gossip_steps=period`): exchange=gradients needs the "
    "exact average every round, and 3 a round, the x3 of their names, are refused there. On 8 "
    "nodes the period is 3, so their 8-node rows are the same config. The MB column is of 8 "
    "nodes: on 16, the 4 matchings send 4/3 of it.",
]


def slug(name: str) -> str:
    """A folder name: ``one-peer exp. + rows`` -> ``one-peer-exp-rows``."""
    words = "".join(c if c.isalnum() else " " for c in name.lower()).split()
    return "-".join(words)


def declora(args: list[str], log: Path) -> tuple[int, float]:
    """``declora ARGS`` on one thread; its output to ``log``; (exit code, seconds)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    log.parent.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    with log.open("w") as out:
        cmd = [sys.executable, "-m", "declora.cli", *args]
        code = subprocess.call(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    return code, time.perf_counter() - began


def tune_job(name: str, trials: int) -> str:
    method, extra = VARIANTS[name]
    out = RUNS / "tune" / slug(name)
    args = ["tune", f"methods=[{method}]", f"tune.trials={trials}", *SEARCH, *COMMON, *extra]
    code, sec = declora([*args, f"out={out}"], out.with_suffix(".log"))
    keep = RESULTS / "skew" / "tune" / slug(name)
    keep.mkdir(parents=True, exist_ok=True)
    for f in ("tuned.yaml", "trials.csv", "tune.png"):
        if (out / f).is_file():
            shutil.copy(out / f, keep / f)
    return f"tune {name}: exit {code}, {sec / 60:.1f} min"


def start_of(name: str) -> list[str]:
    """A variant's values: its search's ``tuned.yaml``; or (not searched in this study) the
    searched values of the variant it adds to (``VALUES_OF``), or else the built-in default's,
    with the variant's overrides."""
    if name in REFINED:
        finalist, times = REFINED[name]
        start = start_of(finalist)
        method = VARIANTS[name][0]
        lr = yaml.safe_load(Path(start[0]).read_text())["per_method"][method]["lr"]
        return [*start, f"per_method.{method}.lr={lr * times:.6g}"]
    tuned = RESULTS / "skew" / "tune" / slug(name) / "tuned.yaml"
    if tuned.is_file():
        return [str(tuned)]
    borrowed = RESULTS / "skew" / "tune" / slug(VALUES_OF.get(name, name)) / "tuned.yaml"
    return [str(borrowed)] * borrowed.is_file() + [*VARIANTS[name][1]]


def choose_job(name: str, seed: int) -> str:
    """One trial of ``declora tune`` with the variant's values (trial 0 is the config's own)
    on the validation rows of the default job's partition at ``seed``."""
    method = VARIANTS[name][0]
    out = RUNS / "choose" / slug(name) / f"seed_{seed}"
    if (out / "trials.csv").is_file():
        return f"choose {name} / {seed}: done before"
    shutil.rmtree(out, ignore_errors=True)
    args = ["tune", *start_of(name), f"methods=[{method}]", "tune.trials=1", *SEARCH]
    code, sec = declora([*args, f"seed={seed}", *COMMON, f"out={out}"], out.with_suffix(".log"))
    return f"choose {name} / {seed}: exit {code}, {sec / 60:.1f} min"


def test_job(name: str, part: str, seed: int) -> str:
    method = VARIANTS[name][0]
    start = start_of(name)
    out = RUNS / "test" / slug(name) / slug(part) / f"seed_{seed}"
    if (out / "summary.json").is_file():
        return f"test {name} / {part} / {seed}: done before"
    shutil.rmtree(out, ignore_errors=True)
    args = ["run", *start, f"methods=[{method}]", f"seed={seed}", "eval_every=35"]
    code, sec = declora(
        [*args, *COMMON, *overrides(name, part), f"out={out}"], out.with_suffix(".log")
    )
    return f"test {name} / {part} / {seed}: exit {code}, {sec / 60:.1f} min"


def choice_rows(got: dict, candidates: tuple[str, ...]) -> list[str]:
    """The candidates on the validation rows of seeds 0, 1, 2."""
    lines = ["| candidate | seed 0 | seed 1 | seed 2 | mean |", "|---|---:|---:|---:|---:|"]
    for name in candidates:
        if seeds := got.get(name):
            cells = [f"{seeds[str(s)]:.3f}" if str(s) in seeds else "" for s in SEEDS]
            whole = len(seeds) == len(SEEDS)
            mean = f"{_mean_std(list(seeds.values()))[0]:.3f}" if whole else ""
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {mean} |")
    return lines if len(lines) > 2 else []


def run_all(jobs: list, workers: int) -> None:
    with ThreadPoolExecutor(workers) as pool:
        for line in pool.map(lambda job: job[0](*job[1:]), jobs):
            print(line, flush=True)


def summaries() -> dict:
    """variant -> partition -> seed -> the method's summary.json entry: the record kept in
    ``results/skew.json`` (``runs/`` is not kept: a fresh clone has only the record),
    overlaid with the runs finished here."""
    got = _kept(RESULTS / "skew.json")
    for name, (method, _) in VARIANTS.items():
        for part in PARTITIONS:
            for seed in SEEDS:
                path = RUNS / "test" / slug(name) / slug(part) / f"seed_{seed}" / "summary.json"
                if path.is_file():
                    entry = json.loads(path.read_text())["methods"][method]
                    got.setdefault(name, {}).setdefault(part, {})[str(seed)] = entry
    return got


def choices() -> dict:
    """candidate -> seed -> validation accuracy (``skew.py choose``): the record kept in
    ``results/skew/choose.json``, overlaid with the runs finished here."""
    got = _kept(RESULTS / "skew" / "choose.json")
    for name in VARIANTS:
        for seed in SEEDS:
            path = RUNS / "choose" / slug(name) / f"seed_{seed}" / "trials.csv"
            if path.is_file():
                row = next(csv.DictReader(path.read_text().splitlines()))
                got.setdefault(name, {})[str(seed)] = round(float(row["validation_accuracy"]), 4)
    return got


def _kept(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _mean_std(values: list[float]) -> tuple[float, float]:
    m = sum(values) / len(values)
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0
    return m, sd


def cell(entries: dict, key) -> str:
    values = [key(e) for e in entries.values() if key(e) is not None]
    if not values:
        return ""
    m, sd = _mean_std(values)
    return f"{m:.3f} ± {sd:.3f}" if len(values) > 1 else f"{m:.3f}"


def table(got: dict) -> list[str]:
    """The headline table: variant x partition, node mean ± std (seeds), node min, MB."""
    parts = [p for p in PARTITIONS if any(p in v for v in got.values())]
    head = "| variant | " + " | ".join(parts) + " | MB sent / node | wall min |"
    lines = [head, "|---|" + "---:|" * (len(parts) + 2)]
    for name in VARIANTS:
        if name not in got:
            continue
        row, mb, wall = [], "", ""
        for part in parts:
            entries = got.get(name, {}).get(part, {})
            acc = cell(entries, lambda e: e["accuracy"])
            low = cell(entries, lambda e: e.get("node_min_accuracy"))
            avg = cell(entries, lambda e: (e.get("average_adapter") or {}).get("accuracy"))
            row.append(acc + (f" (min {low})" if low else "") + (f" (avg {avg})" if avg else ""))
            if part == "Dirichlet 0.5" and entries:
                mb = f"{_mean_std([e['bytes_sent_per_node'] / 1e6 for e in entries.values()])[0]:.1f}"
                wall = f"{_mean_std([e['wall_s'] / 60 for e in entries.values()])[0]:.1f}"
        lines.append(f"| {name} | " + " | ".join(row) + f" | {mb} | {wall} |")
    return lines


def tuning_rows() -> list[str]:
    """What each variant's search chose, and its best validation accuracy."""
    lines = [
        "| variant | trials (complete) | best validation (node mean) | lr | head x | schedule | finish |"
    ]
    lines.append("|---|---:|---:|---:|---:|---|---:|")
    for name in VARIANTS:
        path = RESULTS / "skew" / "tune" / slug(name) / "trials.csv"
        if not path.is_file():
            continue
        rows = list(csv.DictReader(path.open()))
        done = [r for r in rows if r["state"] == "complete"]
        best = max(done, key=lambda r: float(r["validation_accuracy"]))
        lines.append(
            f"| {name} | {len(done)} | {float(best['validation_accuracy']):.3f} | "
            f"{float(best['param_lr']):.4g} | {float(best['param_head_lr_scale']):.3g} | "
            f"{best['param_schedule']} | {best.get('param_finish_rounds') or ''} |"
        )
    return lines


def not_run(got: dict) -> list[str]:
    """What the table leaves out: variants not searched (built-in values) or not run."""
    lines = []
    unsearched = [
        n
        for n in got
        if n not in REFINED and not (RESULTS / "skew" / "tune" / slug(n) / "tuned.yaml").is_file()
    ]
    if refined := [n for n in got if n in REFINED]:
        lines.append(
            f"Run at a finalist's values with its learning rate halved or doubled (``REFINED``): "
            f"{'; '.join(refined)}."
        )
    borrowed = [f"{n} (with {VALUES_OF[n]}'s)" for n in unsearched if n in VALUES_OF]
    if borrowed:
        lines.append(
            f"Not searched, run with the values of the variant they add to: {'; '.join(borrowed)}."
        )
    plain = [n for n in unsearched if n not in VALUES_OF]
    if plain:
        lines.append(
            f"Not searched in this study, run with the built-in default's values: "
            f"{'; '.join(plain)}."
        )
    missing = [n for n in VARIANTS if n not in got]
    if missing:
        lines.append(f"Not run on the test rows: {'; '.join(missing)}.")
    return [*lines, ""] if lines else []


def write_table() -> None:
    got, chosen = summaries(), choices()
    (RESULTS / "skew.json").write_text(json.dumps(got, indent=1))
    (RESULTS / "skew" / "choose.json").write_text(json.dumps(chosen, indent=1))
    text = [
        "# Remedies against label skew: the study",
        "",
        "Written by `python benchmarks/skew.py table` from the runs of `benchmarks/skew.py "
        "tune` and `test` (the commands and the design are in the script's docstring).",
        "Test accuracy on 1,000 rows, the mean over the nodes of each node's own adapter "
        "(centralized: its one model); mean ± std over seeds 0, 1, 2; min: the worst node, "
        "same seeds; avg: the network-average adapter, which no site holds. MB: sent per node over the run, Dirichlet 0.5 on 8 nodes; wall: minutes "
        "per run there, one thread, two runs side by side.",
        "",
        *table(got),
        "",
        *ELSEWHERE,
        "",
        *not_run(got),
        "## What each variant's search chose (validation rows, seed 0, Dirichlet 0.5)",
        "",
        *tuning_rows(),
        "",
    ]
    for what, candidates in (("the default", CANDIDATES), ("the ring's remedy", RING_CANDIDATES)):
        if choice := choice_rows(chosen, candidates):
            text += [
                f"## Choosing {what} (validation rows, Dirichlet 0.5, seeds 0, 1, 2)",
                "",
                "Each candidate with its values above (a variant not searched: those of the "
                "variant it adds to), one run per seed scored on the 500 validation rows "
                "(`skew.py choose`).",
                "",
                *choice,
                "",
            ]
    (RESULTS / "skew.md").write_text("\n".join(text))
    print("\n".join(text))


def listed(text: str, known) -> list[str]:
    """Names in a comma-separated list, where a name may hold commas itself ("Dirichlet 0.5,
    16 nodes": the longest known name wins); an unknown name exits with a one-line error."""
    words, names = text.split(","), []
    while words:
        for k in range(len(words), 0, -1):
            if (name := ",".join(words[:k]).strip()) in known:
                names.append(name)
                words = words[k:]
                break
        else:
            sys.exit(f"skew.py: unknown name {words[0].strip()!r} (known: {'; '.join(known)})")
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("phase", choices=["tune", "test", "choose", "table"])
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time, one thread each")
    parser.add_argument("--trials", type=int, default=6, help="tune: trials per variant")
    parser.add_argument("--only", help="comma-separated variants (default: all)")
    parser.add_argument("--parts", help="comma-separated partitions (default: all)")
    a = parser.parse_args()
    names = (
        listed(a.only, VARIANTS)
        if a.only
        else list(CANDIDATES if a.phase == "choose" else VARIANTS)
    )
    parts = listed(a.parts, PARTITIONS) if a.parts else list(PARTITIONS)
    if a.phase == "tune":
        run_all([(tune_job, n, a.trials) for n in names], a.jobs)
    elif a.phase == "test":
        # a variant's seeds one after another: a study stopped part-way leaves whole rows
        jobs = [(test_job, n, p, s) for p in parts for n in names for s in SEEDS]
        run_all(jobs, a.jobs)
    elif a.phase == "choose":
        run_all([(choose_job, n, s) for s in SEEDS for n in names], a.jobs)
    write_table()


if __name__ == "__main__":
    main()
