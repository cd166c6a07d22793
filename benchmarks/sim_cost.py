"""Cost of simulating many nodes: peak RSS and seconds per training sample of an N-node
Dec-LoRA simulation against a centralized-only run of the same config (bundled MiniLM and
Rotten Tomatoes). Each measurement runs in a fresh process so peak RSS is its own.

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
from declora.config import load_config
from declora import session
from declora.faults import no_faults
from declora.methods import METHODS
from declora.rounds import play_round
from declora.sim import MemoryTransport
from declora.train import train_steps
cfg = load_config(None, sys.argv[2:])
s = session.prepare(cfg)
party = session.party_for(s, METHODS[sys.argv[1]])
train_steps(s.model, party.nodes[0], 1, s.collate)  # warm-up step (allocator, kernels), not timed
start = time.perf_counter()
for t in range(1, cfg.rounds + 1):  # the simulator's round: steps, frames, mixing
    play_round(party, t, no_faults(party.W, party.size), MemoryTransport())
train_s = time.perf_counter() - start
samples = cfg.rounds * cfg.nodes * cfg.local_steps * cfg.batch_size
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"samples": samples, "train_s": train_s, "peak_rss": peak}))
"""


def measure(method: str, overrides: list[str]) -> dict:
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
    rows = {m: measure(m, overrides) for m in ("centralized", "dec-lora")}
    print(f"config: {' '.join(overrides)}")
    print(f"{'run':<24} {'peak RSS (MB)':>14} {'s / sample':>11} {'samples':>8}")
    for name, r in (
        ("centralized only", rows["centralized"]),
        ("dec-lora simulation", rows["dec-lora"]),
    ):
        print(
            f"{name:<24} {r['peak_rss'] / 1e6:>14.1f} {r['train_s'] / r['samples']:>11.4f} {r['samples']:>8}"
        )
    c, d = rows["centralized"], rows["dec-lora"]
    print(
        f"ratio sim/centralized: RSS {d['peak_rss'] / c['peak_rss']:.3f}x, "
        f"time per sample {(d['train_s'] / d['samples']) / (c['train_s'] / c['samples']):.3f}x "
        f"(goal <= 1.05x on both); measured in {time.time() - t0:.0f} s; "
        f"this process' own peak {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3:.0f} MB"
    )


if __name__ == "__main__":
    main()
