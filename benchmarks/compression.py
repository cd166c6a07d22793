"""Accuracy against bytes: Dec-LoRA with compressed messages on the built-in task (bundled MiniLM,
Rotten Tomatoes), one row per compression setting, as a markdown table.

The model and data are loaded once; every variant then trains dec-lora from the same start with
the same seed, partition and batches, so rows differ only by what the messages carry.

    .venv/bin/python benchmarks/compression.py                     # default config, all variants
    .venv/bin/python benchmarks/compression.py nodes=4 rounds=10 local_steps=3 data.test_size=500 data.val_size=500
    .venv/bin/python benchmarks/compression.py variants=[fp32,q4-choco] table=/tmp/t.md

Keys of this script: ``variants`` (names below), ``table`` (markdown output, default
results/compression.md), ``runs`` (folder for each variant's metrics.jsonl). Every other
key=value is a config override, as for ``declora run``.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import sys
import time
from pathlib import Path

import torch

from declora.algorithms.compress import payload_size
from declora.config import load_config, parse_overrides
from declora.harness import session
from declora.harness.report import RunLog
from declora.runtimes import sim

# name -> (what the table calls it, compression overrides)
VARIANTS = {
    "fp32": ("32-bit float", {}),
    "q8-direct": ("8-bit", {"kind": "quantize", "bits": 8}),
    "q8-choco": ("8-bit", {"kind": "quantize", "bits": 8, "scheme": "choco"}),
    "q4-direct": ("4-bit", {"kind": "quantize", "bits": 4}),
    "q4-choco": ("4-bit", {"kind": "quantize", "bits": 4, "scheme": "choco"}),
    "q2-direct": ("2-bit", {"kind": "quantize", "bits": 2}),
    "q2-choco": ("2-bit", {"kind": "quantize", "bits": 2, "scheme": "choco"}),
    "top10-direct": ("top 10%", {"kind": "topk", "ratio": 0.1}),
    "top10-choco": ("top 10%", {"kind": "topk", "ratio": 0.1, "scheme": "choco", "gamma": 0.3}),
}
OWN_KEYS = ("variants", "table", "runs")


def split_args(argv: list[str]) -> tuple[dict, list[str]]:
    own, config = {}, []
    for item in argv:
        key = item.partition("=")[0]
        if key in OWN_KEYS:
            own.update(parse_overrides([item]))
        else:
            config.append(item)
    return own, config


def run_variant(s: session.Session, name: str, folder: Path) -> dict:
    label, comp = VARIANTS[name]
    cfg = s.cfg.model_copy(update={"compression": s.cfg.compression.model_copy(update=comp)})
    cfg = type(cfg).model_validate(cfg.model_dump())  # re-check the combined settings
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.jsonl").unlink(missing_ok=True)
    start = time.perf_counter()
    last, _, _ = sim.run_method(dataclasses.replace(s, cfg=cfg), "dec-lora", RunLog(folder))
    c = cfg.compression
    return {
        "name": name,
        "label": label,
        "scheme": c.scheme + (f" (gamma {c.gamma:g})" if c.scheme == "choco" else ""),
        "bytes_per_message": last["bytes_per_edge_round"],
        "formula": payload_size([v.numel() for v in s.init.values()], c),
        "bytes_sent_per_node": last["bytes_sent"],
        "accuracy": last["accuracy"],
        "loss": last["loss"],
        "node_min": last.get("node_accuracy_min"),
        "consensus_ab": last.get("consensus_ab"),
        "wall_s": time.perf_counter() - start,
    }


def markdown(rows: list[dict], command: str, cfg, seconds: float) -> str:
    base = next((r for r in rows if r["name"] == "fp32"), None)
    out = [
        "# Dec-LoRA with compressed messages",
        "",
        f"Command: `{command}`",
        "",
        f"{cfg.nodes} nodes on a {cfg.topology.kind} ({cfg.mixing} weights), "
        f"{cfg.partition.kind} partition"
        + (f" (alpha {cfg.partition.alpha:g})" if cfg.partition.kind == "dirichlet" else "")
        + f", {cfg.rounds} rounds x {cfg.local_steps} local steps x batch {cfg.batch_size}, "
        f"LoRA rank {cfg.lora.rank} on {','.join(cfg.lora.targets)}, model {cfg.model.name}, "
        f"data {cfg.data.path} (train_size {cfg.data.train_size}, test_size "
        f"{cfg.data.test_size}), seed {cfg.seed}. Quantization block: {cfg.compression.block} "
        f"values per float32 scale. Accuracy: the network-average adapter on the held-out rows; "
        f"node min: the worst node's own adapter on the first {cfg.node_eval_size} of them.",
        "",
        "| message | scheme | bytes / message | MB sent / node | fewer bytes | accuracy "
        "| vs 32-bit (points) | eval loss | node min | consensus AB |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ratio = f"{base['bytes_per_message'] / r['bytes_per_message']:.2f}x" if base else ""
        delta = f"{100 * (r['accuracy'] - base['accuracy']):+.1f}" if base else ""
        node_min = "" if r["node_min"] is None else f"{r['node_min']:.4f}"
        cons = "" if r["consensus_ab"] is None else f"{r['consensus_ab']:.3g}"
        out.append(
            f"| {r['label']} | {r['scheme']} | {r['bytes_per_message']:,} "
            f"| {r['bytes_sent_per_node'] / 1e6:.2f} | {ratio} | {r['accuracy']:.4f} | {delta} "
            f"| {r['loss']:.4f} | {node_min} | {cons} |"
        )
    out += [
        "",
        f"Bytes are measured (payload lengths, headers and scales included) and equal "
        f"`payload_size`. {len(rows)} runs in {seconds / 60:.1f} min on "
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads.",
    ]
    return "\n".join(out) + "\n"


def main(argv: list[str]) -> None:
    own, overrides = split_args(argv)
    names = own.get("variants") or list(VARIANTS)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        sys.exit(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    table = Path(own.get("table") or "results/compression.md")
    runs = Path(own.get("runs") or "runs/compression")
    cfg = load_config(None, [*overrides, "methods=[dec-lora]", "export_adapters=false"])
    t0 = time.perf_counter()
    s = session.prepare(cfg)
    rows = []
    for name in names:
        row = run_variant(s, name, runs / name)
        assert row["bytes_per_message"] == row["formula"], row
        rows.append(row)
        print(json.dumps(row), flush=True)
    command = " ".join(["python benchmarks/compression.py", *argv])
    text = markdown(rows, command, cfg, time.perf_counter() - t0)
    table.parent.mkdir(parents=True, exist_ok=True)
    table.write_text(text)
    print(text)


if __name__ == "__main__":
    main(sys.argv[1:])
