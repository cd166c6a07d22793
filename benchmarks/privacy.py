"""Accuracy against privacy: the built-in task (bundled MiniLM, Rotten Tomatoes, 8 nodes on
Base-2 weighted by rows, its three matchings a round, Dirichlet 0.5) without DP and with
DP-SGD at epsilon 1, 3 and 8 (delta 1e-5), for dec-lora (the nodes' own adapters) and
centralized DP-SGD on the pooled rows, at the same sample budget; and the cost of encrypting
a message.

Every (setting, method) gets the same tuning effort: the learning rates ``lr_factors`` x the
method's tuned default, each trained once; the one with the best validation figure (dec-lora:
mean of the nodes' own adapters; centralized: its model) is scored on the test rows, once.

    .venv/bin/python benchmarks/privacy.py                      # everything, 2 processes
    .venv/bin/python benchmarks/privacy.py settings=[none,3] lr_factors=[1] rounds=10 jobs=1
    .venv/bin/python benchmarks/privacy.py cost       # seconds per sample of a DP step, alone
    .venv/bin/python benchmarks/privacy.py methods=[dec-lora]   # re-measure one method
    .venv/bin/python benchmarks/privacy.py extend=true lr_factors=[0.25,0.5]  # a wider grid

Keys of this script: ``settings`` (none and epsilons), ``lr_factors``, ``jobs`` (processes,
one thread each), ``table`` (default results/privacy.md), ``methods`` (default both; the
other method's rows are kept from the table's JSON, and the table says so), ``extend``
(true: ``lr_factors`` add to the learning rates the table's JSON already tried for each row
run; a row whose earlier best is not beaten on validation keeps its test figure, so the test
rows are still read once per row). Every other key=value is a config override, as for
``declora run``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import torch

OWN = ("settings", "lr_factors", "jobs", "table", "methods", "extend")
METHOD_NAMES = ("dec-lora", "centralized")


def split_args(argv: list[str]) -> tuple[dict, list[str]]:
    from declora.config import parse_overrides

    own, config = {}, []
    for item in argv:
        if item.partition("=")[0] in OWN:
            own.update(parse_overrides([item]))
        else:
            config.append(item)
    return own, config


def setting_args(setting) -> list[str]:
    return [] if setting == "none" else [f"privacy.epsilon={setting}", "privacy.delta=1e-5"]


def run_setting(
    setting, factors: list[float], overrides: list[str], methods=METHOD_NAMES, earlier=()
) -> list[dict]:
    """Train every method at every learning rate under one privacy setting; score the one
    chosen on validation on the test rows. ``earlier``: rows of a previous table for this
    setting, whose learning rates count as tried (their test figure is kept if still best)."""
    torch.set_num_threads(1)
    from declora.config import load_config
    from declora.harness import report, session, summary
    from declora.runtimes import sim

    base = load_config(None, [*overrides, *setting_args(setting), "export_adapters=false"])
    base = base.model_copy(update={"methods": list(METHOD_NAMES)})
    s = session.prepare(base)
    rows = []
    for method in methods:
        tried = []
        for f in factors:
            cfg = base.for_method(method)
            lr = cfg.lr * f
            mine = base.per_method.get(method)
            own = {**(mine.model_dump(exclude_none=True) if mine else {}), "lr": lr}
            tree = base.model_dump(mode="json")
            one = type(base).model_validate(
                {**tree, "per_method": {**tree["per_method"], method: own}}
            )
            folder = Path("runs/privacy") / f"{setting}_{method}_{f:g}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "metrics.jsonl").unlink(missing_ok=True)
            t0 = time.perf_counter()
            last, states, _ = sim.run_method(
                dataclasses.replace(s, cfg=one), method, report.RunLog(folder)
            )
            wall = time.perf_counter() - t0
            val = report.headline(method, last)["accuracy"]
            tried.append({"lr": lr, "val": val, "last": last, "states": states, "wall": wall})
            print(
                json.dumps({"setting": setting, "method": method, "lr": lr, "val": val}), flush=True
            )
        best = max(tried, key=lambda r: r["val"])
        grid = {f"{r['lr']:.6g}": r["val"] for r in tried}
        before = next((r for r in earlier if r["method"] == method), None)
        if before is not None and before["val"] >= best["val"]:
            kept = {k: v for k, v in before.items() if k != "kept"}
            rows.append({**kept, "tried": {**before["tried"], **grid}})
            print(json.dumps(rows[-1]), flush=True)
            continue
        final = summary.final_figures(s, best["states"])
        head = final.get("node_mean_accuracy", final.get("model", {}).get("accuracy"))
        rows.append(
            {
                "setting": setting,
                "method": method,
                "lr": best["lr"],
                "tried": {**(before["tried"] if before else {}), **grid},
                "val": best["val"],
                "test": head,
                "node_min": final.get("node_min_accuracy"),
                "epsilon": best["last"].get("epsilon"),
                "noise": sorted({round(b.noise, 3) for b in _budgets(s, method)}),
                "samples": best["last"]["samples_seen"],
                "s_per_sample": best["wall"] / best["last"]["samples_seen"],
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def _method_order(row: dict) -> int:
    return METHOD_NAMES.index(row["method"])


def _budgets(s, method: str):
    return list(s.budgets.get(method, {}).values())


def step_cost(overrides: list[str], steps: int = 30) -> dict:
    """Seconds per training sample of one node's local steps (the default task's node 0),
    plain and DP-SGD (per-example gradients, clipping, noise), in this process alone."""
    from declora.algorithms.methods import METHODS
    from declora.config import load_config
    from declora.harness import session
    from declora.learning.train import train_steps

    out = {}
    for name, extra in (("plain", []), ("dp-sgd", ["privacy.noise_multiplier=1.0"])):
        s = session.prepare(load_config(None, [*overrides, *extra]))
        party = session.party_for(s, METHODS["local"])
        node = party.nodes[0]
        train_steps(s.model, node, 2, s.collate, party.losses)  # warm-up, not timed
        t0 = time.perf_counter()
        train_steps(s.model, node, steps, s.collate, party.losses)
        out[name] = (time.perf_counter() - t0) / (steps * s.cfg.batch_size)
    return out


def encryption_cost(reps: int = 500) -> dict:
    """Seconds to seal and open one MiniLM adapter message (74,498 float32 values): in clear,
    with an HMAC tag, and encrypted with AES-256-GCM."""
    from declora.protocol import keys, wire

    payload = os.urandom(4 * 74_498)
    key, stamp = keys.Keys(os.urandom(keys.SECRET_BYTES)), wire.Stamp(os.urandom(8), 3, 0)
    out = {}
    for name, to, k in (("clear", None, None), ("hmac", None, key), ("aes-gcm", 1, key)):
        wire.open_frame(
            wire.seal(payload, 0, stamp, torch.float32, k, to), 0, stamp, torch.float32, k, to
        )
        t0 = time.perf_counter()
        for _ in range(reps):
            frame = wire.seal(payload, 0, stamp, torch.float32, k, to)
            wire.open_frame(frame, 0, stamp, torch.float32, k, to)
        out[name] = {"seconds": (time.perf_counter() - t0) / reps, "bytes": len(frame)}
    return out


def job_line(cfg) -> str:
    """The job as each method plays it (dec-lora's own rounds, batch and messages)."""
    from declora.algorithms.compress import describe

    dec, cen = cfg.for_method("dec-lora"), cfg.for_method("centralized")
    return (
        f"{cfg.nodes} nodes on a {cfg.topology.kind} graph ({cfg.weighting} weighting), "
        f"{cfg.partition.kind} partition (alpha {cfg.partition.alpha:g}), model "
        f"{cfg.model.name}, data {cfg.data.path}, seed {cfg.seed}. dec-lora: {dec.rounds} rounds "
        f"of {dec.gossip_steps} gossip steps, {dec.local_steps} step x batch {dec.batch_size}, "
        f"messages {describe(dec.compression)}; centralized: {cen.rounds} rounds of "
        f"{cfg.nodes * cen.local_steps} steps (nodes x steps) x batch {cen.batch_size} on the "
        f"pooled rows: the same samples (batches expected: Poisson sampling under DP). Clip "
        f"{cfg.privacy.clip:g}, delta 1e-5, RDP accountant."
    )


def markdown(
    rows: list[dict], enc: dict, command: str, cfg, minutes: float, extend: bool = False
) -> str:
    lines = [
        "# Dec-LoRA under differential privacy",
        "",
        f"Command: `{command}`",
        "",
        job_line(cfg) + " Each row: the learning rate with the best validation accuracy among "
        "those tried, then scored once on the test rows. dec-lora's figure is the mean of the "
        "nodes' own adapters (what each site holds); epsilon is the largest over its nodes.",
        "",
        "| privacy | method | test accuracy | node min | epsilon spent | noise multiplier "
        "| lr chosen | validation (per lr tried) | s / sample |",
        "|---|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in rows:
        eps = "" if r["epsilon"] is None else f"{r['epsilon']:.2f}"
        kept = " (kept)" if r.get("kept") else ""
        low = "" if r["node_min"] is None else f"{r['node_min']:.4f}"
        noise = "-".join(dict.fromkeys(f"{n:g}" for n in r["noise"][:1] + r["noise"][-1:]))
        tried = ", ".join(f"{lr}: {v:.3f}" for lr, v in r["tried"].items())
        lines.append(
            f"| {'no DP' if r['setting'] == 'none' else 'epsilon ' + str(r['setting'])} "
            f"| {r['method']}{kept} | {r['test']:.4f} | {low} | {eps} | {noise} | {r['lr']:.6g} "
            f"| {tried} | {r['s_per_sample'] * 1e3:.1f} ms |"
        )
    lines += [
        "",
        "Encryption, per message (one MiniLM adapter, 74,498 float32 values), seal + open:",
        "",
        "| protection | bytes on the wire | ms per message |",
        "|---|---:|---:|",
    ]
    for name, e in enc.items():
        lines.append(f"| {name} | {e['bytes']:,} | {e['seconds'] * 1e3:.2f} |")
    if extend:
        lines += [
            "",
            "Learning rates: this command's factors added to those the previous table tried "
            "(all are in the validation column); a row whose earlier best was not beaten keeps "
            "that run's test figure.",
        ]
    if any(r.get("kept") for r in rows):
        lines += [
            "",
            "(kept): not run by this command; the row of the previous table "
            "(the method does not depend on what this command changed).",
        ]
    lines += [
        "",
        f"{sum(not r.get('kept') for r in rows)} method rows in {minutes:.1f} min on "
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, one thread "
        "a process.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> None:
    from declora.config import load_config

    if argv[:1] == ["cost"]:
        cost = step_cost(argv[1:])
        print(
            f"seconds per sample, one node, {torch.get_num_threads()} threads: plain "
            f"{cost['plain']:.4f}, DP-SGD {cost['dp-sgd']:.4f} "
            f"({cost['dp-sgd'] / cost['plain']:.2f}x)"
        )
        return
    own, overrides = split_args(argv)
    settings = own.get("settings") or ["none", 8, 3, 1]
    factors = [float(f) for f in own.get("lr_factors") or [1, 2]]
    table = Path(own.get("table") or "results/privacy.md")
    methods = tuple(own.get("methods") or METHOD_NAMES)
    if set(methods) - set(METHOD_NAMES):
        sys.exit(f"privacy.py: methods must be among {', '.join(METHOD_NAMES)}; got {methods}")
    cfg = load_config(None, overrides)  # checks the overrides before any work
    extend = bool(own.get("extend"))
    saved = table.with_suffix(".json")
    reads_saved = methods != METHOD_NAMES or extend  # rows to keep, or a grid to extend
    if reads_saved and not saved.is_file():
        sys.exit(f"privacy.py: extend=true and methods=... build on {saved}, which is not there")
    before = json.loads(saved.read_text()) if reads_saved else []
    earlier = [[r for r in before if r["setting"] == x] if extend else [] for x in settings]
    t0 = time.perf_counter()
    enc = encryption_cost()
    print(json.dumps(enc), flush=True)
    with ProcessPoolExecutor(int(own.get("jobs", 2)), mp_context=get_context("spawn")) as pool:
        n = len(settings)
        done = list(
            pool.map(run_setting, settings, [factors] * n, [overrides] * n, [methods] * n, earlier)
        )
    rows = []
    for setting, ran in zip(settings, done):
        old = [r for r in before if r["setting"] == setting and r["method"] not in methods]
        rows += sorted(ran + [{**r, "kept": True} for r in old], key=_method_order)
    command = " ".join(["python benchmarks/privacy.py", *argv])
    table.parent.mkdir(parents=True, exist_ok=True)
    minutes = (time.perf_counter() - t0) / 60
    table.write_text(markdown(rows, enc, command, cfg, minutes, extend))
    (table.with_suffix(".json")).write_text(json.dumps(rows, indent=1))
    print(table.read_text())


if __name__ == "__main__":
    main(sys.argv[1:])
