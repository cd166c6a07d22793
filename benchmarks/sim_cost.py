"""Cost of simulating many nodes: peak RSS and seconds per training sample of an N-node
Dec-LoRA simulation, one node at a time and with ``vectorize=true`` (every node's step in one
stacked batch), against a centralized-only run of the same config (bundled MiniLM and Rotten
Tomatoes), side by side. Each measurement runs in a fresh process so peak RSS is its own.

    .venv/bin/python benchmarks/sim_cost.py            # 10 nodes, 3 rounds x 5 local steps
    .venv/bin/python benchmarks/sim_cost.py nodes=8 rounds=2
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time

CHILD = r"""
import json, resource, sys, time
import torch
from declora.config import load_config
from declora.harness import session
from declora.harness.runner import plan_of_round
from declora.algorithms.methods import METHODS
from declora.protocol.rounds import play_round
from declora.runtimes.sim import MemoryTransport
from declora.learning.train import train_steps
cfg = load_config(None, sys.argv[2:])
s = session.prepare(cfg)
party = session.party_for(s, METHODS[sys.argv[1]])
gpu = s.device.type == "cuda"
train_steps(s.model, party.nodes[0], 1, s.collate)  # warm-up step (allocator, kernels), not timed
first, counters = 1, party.counters()
if gpu:  # on a GPU also one untimed round: the stacked batch's kernels and cuBLAS handles
    play_round(party, counters, 1, plan_of_round(s, party, 1), MemoryTransport())
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    first = 2
start = time.perf_counter()
for t in range(first, first + cfg.rounds):  # the simulator's round: steps, frames, mixing
    play_round(party, counters, t, plan_of_round(s, party, t), MemoryTransport())
if gpu:
    torch.cuda.synchronize()
train_s = time.perf_counter() - start
samples = cfg.rounds * cfg.nodes * cfg.local_steps * cfg.batch_size
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
gpu_peak = torch.cuda.max_memory_allocated() if gpu else None
print(json.dumps({"samples": samples, "train_s": train_s, "peak_rss": peak, "peak_gpu": gpu_peak}))
"""


def measure(method: str, overrides: list[str]) -> dict:
    """One run of ``method`` in a fresh process: samples, training seconds, peak RSS (bytes)
    and, on a GPU, peak GPU memory allocated (bytes)."""
    out = subprocess.run(
        [sys.executable, "-c", CHILD, method, *overrides],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    overrides = [
        "nodes=10",
        "rounds=3",
        "local_steps=5",
        "data.test_size=100",
        "data.val_size=100",
        *sys.argv[1:],
    ]
    t0 = time.time()
    runs = {
        "centralized only": measure("centralized", overrides),
        "dec-lora, node by node": measure("dec-lora", [*overrides, "vectorize=false"]),
        "dec-lora, vectorized": measure("dec-lora", [*overrides, "vectorize=true"]),
    }
    c = runs["centralized only"]
    per = {name: r["train_s"] / r["samples"] for name, r in runs.items()}
    print(f"config: {' '.join(overrides)}")
    print(
        f"{'run':<26} {'peak RSS (MB)':>14} {'s / sample':>11} {'samples':>8} "
        f"{'time vs centralized':>20} {'RSS vs centralized':>19}"
    )
    for name, r in runs.items():
        print(
            f"{name:<26} {r['peak_rss'] / 1e6:>14.1f} {per[name]:>11.4f} {r['samples']:>8} "
            f"{per[name] / per['centralized only']:>19.3f}x "
            f"{r['peak_rss'] / c['peak_rss']:>18.3f}x"
        )
    loop, batched = per["dec-lora, node by node"], per["dec-lora, vectorized"]
    print(
        f"vectorized vs node by node: {loop / batched:.2f}x the samples per second; measured in "
        f"{time.time() - t0:.0f} s; this process' own peak "
        f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3:.0f} MB"
    )


if __name__ == "__main__":
    main()
