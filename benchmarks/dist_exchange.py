"""Compute against exchange time per round of the distributed runtime: bundled MiniLM-L6,
4 processes on loopback (gloo), a ring, the default local_steps / batch.

Each round every node times its local steps (compute), waits at a barrier (load imbalance,
reported apart: on a shared CPU the nodes do not finish together), then times its exchange
step: frame, checksum (and HMAC if a key is set), the phases of a gossip step with both
neighbours (authenticated lengths, acknowledgements, frames, verdicts: declora.protocol.gossip), checks of
what arrived, and mixing. The exchange share is exchange / (compute + exchange).

    .venv/bin/python benchmarks/dist_exchange.py                      # 3 rounds
    .venv/bin/python benchmarks/dist_exchange.py rounds=5 compression.kind=quantize
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

DEFAULTS = [
    "nodes=4",
    "rounds=3",
    "topology.kind=ring",
    "partition.kind=iid",
    "data.train_size=2000",
    "data.test_size=200",
    "data.val_size=200",
    "methods=[dec-lora]",
]


def main() -> int:
    env = {
        "MASTER_ADDR": "127.0.0.1",
        "GLOO_SOCKET_IFNAME": "lo",
        "OMP_NUM_THREADS": "1",
        **os.environ,
    }
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=4"]
    return subprocess.call([*cmd, __file__, *sys.argv[1:]], env=env)


def worker() -> None:
    import torch
    import torch.distributed as dist

    from declora.algorithms.methods import METHODS
    from declora.config import load_config
    from declora.harness.session import party_for, prepare
    from declora.learning.train import train_steps
    from declora.protocol.rounds import communicate
    from declora.runtimes.distributed.p2p import P2PTransport
    from declora.runtimes.distributed.rendezvous import placement

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    cfg = load_config(None, [*DEFAULTS, *sys.argv[1:]])
    where = placement(cfg)
    s = prepare(cfg, rank, where.device)
    dist.init_process_group(where.backend)
    party = party_for(s, METHODS["dec-lora"], held=[rank])
    node, key, counters = party.nodes[0], party.link.key, party.counters()
    transport = P2PTransport(where.wire, cfg.peer_timeout, key)
    train_steps(s.model, node, 1, s.collate)  # warm-up (allocator, kernels), not timed
    rows = []
    for t in range(1, cfg.rounds + 1):
        t0 = time.perf_counter()
        train_steps(s.model, node, cfg.local_steps, s.collate)
        t1 = time.perf_counter()
        dist.barrier()
        t2 = time.perf_counter()
        communicate(party, counters, s.graph.at(t), t, transport)
        t3 = time.perf_counter()
        rows.append([t1 - t0, t2 - t1, t3 - t2])
    mine = torch.tensor(rows, dtype=torch.float64)  # (rounds, 3)
    every = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(every, mine)
    if rank == 0:
        x = torch.stack(every).numpy()  # (nodes, rounds, 3)
        print(
            f"\nMiniLM-L6 LoRA r={cfg.lora.rank}, {world} processes ({where.backend}), ring; "
            f"{cfg.local_steps} local steps x batch {cfg.batch_size}; payload "
            f"{counters.nodes[rank].payload:,} bytes per neighbour; HMAC {'on' if key else 'off'}"
        )
        print(f"{'round':>5} {'compute s':>10} {'wait s':>8} {'exchange s':>11} {'share':>7}")
        for t in range(cfg.rounds):
            comp, wait, exch = x[:, t, 0].mean(), x[:, t, 1].mean(), x[:, t, 2].max()
            print(
                f"{t + 1:>5} {comp:>10.3f} {wait:>8.3f} {exch:>11.4f} {exch / (comp + exch):>7.2%}"
            )
        comp, exch = x[:, :, 0].mean(), x[:, :, 2].max(0).mean()
        print(
            f"{'mean':>5} {comp:>10.3f} {x[:, :, 1].mean():>8.3f} {exch:>11.4f} "
            f"{exch / (comp + exch):>7.2%}   (compute: mean over nodes; exchange: slowest node)"
        )
        verdict = "met" if exch / (comp + exch) <= 0.05 else "NOT met"
        print(f"goal, exchange at most 5% of a round: {verdict}")
    dist.destroy_process_group()


if __name__ == "__main__":
    if "RANK" in os.environ:
        worker()
    else:
        sys.exit(main())
