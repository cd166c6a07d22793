"""How far apart do the nodes' own adapters end, and what brings them together?

Trains dec-lora on the default job once per learning-rate schedule, then keeps gossiping
without training (the consensus finish, ``finish_rounds``) and scores, after 0, 10, 20 and 40
finishing rounds, every node's own adapter and the network average on the whole validation
set (the test rows are not read). One training run per schedule serves every finish length,
since finishing rounds only mix. Prints a markdown table (results/agreement.md).

    .venv/bin/python benchmarks/agreement.py                       # the default job
    .venv/bin/python benchmarks/agreement.py --schedules constant --finish 0,5 rounds=10

Trailing ``key=value`` items are config overrides.
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import time

import numpy as np
import torch

from declora.algorithms.consensus import consensus_distances
from declora.algorithms.methods import METHODS
from declora.config import load_config
from declora.harness.evaluation import evaluate_nodes
from declora.harness.runner import plan_of_round
from declora.harness.session import party_for, prepare
from declora.protocol.rounds import play_round
from declora.runtimes.sim import MemoryTransport


def rows_for(s, schedule: str, finishes: list[int]) -> list[dict]:
    """Train once with ``schedule``, then score the nodes after each finish length."""
    # the top-level values (and the command line's) rule here, not dec-lora's own per_method
    per = {m: v for m, v in s.cfg.per_method.items() if m != "dec-lora"}
    cfg = s.cfg.model_copy(update={"schedule": schedule, "finish_rounds": 0, "per_method": per})
    st = dataclasses.replace(s, cfg=cfg)
    party = party_for(st, METHODS["dec-lora"])
    transport, began = MemoryTransport(), time.perf_counter()
    counters = party.counters()
    for t in range(1, cfg.rounds + 1):
        play_round(party, counters, t, plan_of_round(st, party, t), transport)
    trained_s = time.perf_counter() - began
    rows, done = [], 0
    for finish in sorted(finishes):
        while done < finish:
            done += 1
            t = cfg.rounds + done
            play_round(party, counters, t, plan_of_round(st, party, t), transport, train=False)
        states = [n.state() for n in party.nodes]
        fig = evaluate_nodes(st, states, st.val)
        sent = np.mean([c.sent for c in counters.nodes.values()])
        rows.append(
            {
                "schedule": schedule,
                "finish_rounds": finish,
                "node_mean": fig["node_mean_accuracy"],
                "node_min": fig["node_min_accuracy"],
                "average": fig["average_adapter"]["accuracy"],
                "consensus_ab": consensus_distances(states)["consensus_ab"],
                "mb_per_node": sent / 1e6,
                "train_s": trained_s,
            }
        )
        print(rows[-1], flush=True)
    return rows


def table(rows: list[dict], cfg, seconds: float) -> str:
    lines = [
        "# Nodes in agreement: learning-rate schedule and consensus finish",
        "",
        "Command: `.venv/bin/python benchmarks/agreement.py` (the default job, dec-lora only; "
        f"{cfg.rounds} training rounds, lr {cfg.lr:g}, head x{cfg.head_lr_scale:g}, "
        f"{cfg.gossip_steps} gossip step(s) a round, seed {cfg.seed}).",
        "",
        f"Validation rows ({cfg.data.val_size}), never the test rows. node mean / node min: each "
        "node's own adapter (what a site holds), mean and worst over the "
        f"{cfg.nodes} nodes; average: the network-average adapter, which no site holds; "
        "consensus AB: mean_i ||B_i A_i - mean_j B_j A_j|| / ||mean_j B_j A_j||; MB sent per "
        "node over the whole run, finishing rounds included (they train nothing).",
        "",
        "| schedule | finish rounds | node mean | node min | average | consensus AB | MB sent / node |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['schedule']} | {r['finish_rounds']} | {r['node_mean']:.4f} | "
            f"{r['node_min']:.4f} | {r['average']:.4f} | {r['consensus_ab']:.3f} | "
            f"{r['mb_per_node']:.2f} |"
        )
    lines += [
        "",
        f"{len({r['schedule'] for r in rows})} training runs in {seconds / 60:.1f} min on "
        f"{platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schedules", default="constant,cosine")
    parser.add_argument("--finish", default="0,10,20,40")
    parser.add_argument("--out", default="results/agreement.md")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    cfg = load_config(None, ["methods=[dec-lora]", *args.overrides])
    began = time.perf_counter()
    s = prepare(cfg)
    finishes = [int(x) for x in args.finish.split(",")]
    rows = [r for sch in args.schedules.split(",") for r in rows_for(s, sch, finishes)]
    text = table(rows, cfg, time.perf_counter() - began)
    print(text)
    if args.out != "-":
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
