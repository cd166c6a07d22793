"""Accuracy against drop rate: Dec-LoRA in the simulator with intermittent links and nodes.

Each setting is a full simulator run of the same config and seed, with ``faults.link_drop``
and ``faults.node_drop`` set; W is recomputed each round on the surviving graph (Metropolis).
Prints the network-average accuracy, the worst node's own accuracy, the product consensus
distance and the bytes each node sent. Default: bundled MiniLM-L6, 8-node ring, Dirichlet(0.5).

    .venv/bin/python benchmarks/faults.py                        # the full sweep (slow on CPU)
    .venv/bin/python benchmarks/faults.py --quick rounds=4 nodes=4
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

DEFAULTS = [
    "nodes=8",
    "rounds=10",
    "local_steps=2",
    "eval_every=100",  # evaluate at the end only
    "data.train_size=2000",
    "data.test_size=500",
    "data.val_size=500",
    "node_eval_size=100",
    "methods=[dec-lora]",
    "export_adapters=false",
]
SWEEP = [(0.0, 0.0), (0.1, 0.0), (0.3, 0.0), (0.5, 0.0), (0.0, 0.1), (0.0, 0.3), (0.3, 0.3)]
QUICK = [(0.0, 0.0), (0.3, 0.0), (0.0, 0.3), (0.5, 0.3)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    parser.add_argument("--quick", action="store_true", help="four settings instead of seven")
    args = parser.parse_args()

    from declora.config import load_config
    from declora.runtimes.sim import run

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for k, (link, node) in enumerate(QUICK if args.quick else SWEEP):
            extra = [
                f"faults.link_drop={link}",
                f"faults.node_drop={node}",
                f"out={Path(tmp, str(k))}",
            ]
            cfg = load_config(None, [*DEFAULTS, *args.overrides, *extra])
            _, summary = run(cfg, echo=lambda *_: None)
            m = summary["methods"]["dec-lora"]
            rows.append((link, node, m))
            print(
                f"link_drop {link:.1f} node_drop {node:.1f}: accuracy {m['accuracy']:.4f}",
                flush=True,
            )
    print(
        f"\n{cfg.nodes} nodes, {cfg.topology.kind}, {cfg.rounds} rounds x {cfg.local_steps} steps"
    )
    print(
        f"{'link_drop':>9} {'node_drop':>9} {'accuracy':>8} {'node min':>8} {'cons. BA':>9} {'MB/node':>8}"
    )
    for link, node, m in rows:
        print(
            f"{link:>9.1f} {node:>9.1f} {m['accuracy']:>8.4f} {m.get('node_min_accuracy', 0):>8.4f} "
            f"{m.get('consensus_ab') or float('nan'):>9.4f} {m['bytes_sent_per_node'] / 1e6:>8.2f}"
        )


if __name__ == "__main__":
    main()
