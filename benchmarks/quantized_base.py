"""Peak memory and step time of LoRA training on a float32, an int8 and a 4-bit frozen base.

Each setting runs in its own process (peak RSS is per process): build the model as a node
does (``declora.harness.session.prepare``), take ``--warmup`` steps, then time ``--steps`` optimizer steps on
the node's own batches; held-out accuracy (``--eval-rows`` rows) before and after. Prints a markdown
table and writes it to ``--table``.

    .venv/bin/python benchmarks/quantized_base.py                      # SmolLM2-135M, batch 8
    .venv/bin/python benchmarks/quantized_base.py --steps 3 model.name=/path/to/llama

Trailing ``key=value`` items are config overrides (after the built-in smollm2_sentiment config).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import psutil
import torch

SETTINGS = ("none", "int8", "4bit")


def measure(quantize: str, steps: int, warmup: int, eval_rows: int, overrides: list[str]) -> dict:
    """One setting, in this process."""
    from declora.algorithms.methods import METHODS
    from declora.config import load_config
    from declora.harness import session
    from declora.learning.train import train_steps

    cfg = load_config(
        "smollm2_sentiment",
        [*overrides, f"model.quantize={quantize}", f"node_eval_size={eval_rows}"],
    )
    t0 = time.perf_counter()
    s = session.prepare(cfg)
    load_s = time.perf_counter() - t0
    loaded_rss = psutil.Process().memory_info().rss
    (node,) = session.party_for(s, METHODS["centralized"]).nodes
    t0 = time.perf_counter()
    before = s.task.evaluate(s.model, node.state(), s.eval_nodes)
    eval_s = time.perf_counter() - t0
    train_steps(s.model, node, warmup, s.collate)
    t0 = time.perf_counter()
    train_steps(s.model, node, steps, s.collate)
    step_s = (time.perf_counter() - t0) / steps
    after = s.task.evaluate(s.model, node.state(), s.eval_nodes)
    return {
        "quantize": quantize,
        "weights_mb": s.model.get_memory_footprint() / 1e6,
        "loaded_rss_mb": loaded_rss / 1e6,
        "trained_rss_mb": psutil.Process().memory_info().rss / 1e6,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6,
        "load_s": load_s,
        "step_s": step_s,
        "samples_per_s": cfg.batch_size / step_s,
        "eval_rows_per_s": eval_rows / eval_s,
        "accuracy_before": before["accuracy"],
        "accuracy_after": after["accuracy"],
        "batch_size": cfg.batch_size,
    }


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=6, help="timed optimizer steps")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    p.add_argument("--eval-rows", type=int, default=48, help="held-out rows evaluated")
    p.add_argument("--settings", default=",".join(SETTINGS), help="model.quantize values")
    p.add_argument("--table", default="results/quantized_base.md", help="markdown output")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # child: one setting
    p.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = p.parse_args(argv)
    if args.one:
        res = measure(args.one, args.steps, args.warmup, args.eval_rows, args.overrides)
        print("RESULT " + json.dumps(res), flush=True)
        return 0
    rows = []
    for quantize in args.settings.split(","):
        child = [sys.executable, __file__, "--one", quantize, "--steps", str(args.steps)]
        child += ["--warmup", str(args.warmup), "--eval-rows", str(args.eval_rows)]
        proc = subprocess.run([*child, *args.overrides], capture_output=True, text=True)
        lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            print(f"quantized_base: {quantize} failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
            return 1
        rows.append(json.loads(lines[-1][len("RESULT ") :]))
        print(f"{quantize}: {rows[-1]}", file=sys.stderr, flush=True)
    base = rows[0]
    lines = [
        "| model.quantize | weights MB | RSS loaded MB | RSS trained MB | peak RSS MB | load s "
        "| step s | samples/s | step vs first | eval rows/s | accuracy untrained | after |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['quantize']} | {r['weights_mb']:.0f} | {r['loaded_rss_mb']:.0f} "
            f"| {r['trained_rss_mb']:.0f} | {r['peak_rss_mb']:.0f} | {r['load_s']:.1f} "
            f"| {r['step_s']:.2f} | {r['samples_per_s']:.2f} | {r['step_s'] / base['step_s']:.2f}x "
            f"| {r['eval_rows_per_s']:.1f} | {r['accuracy_before']:.3f} | {r['accuracy_after']:.3f} |"
        )
    command = " ".join(["python benchmarks/quantized_base.py", *argv])
    text = "\n".join(
        [
            "# LoRA on a quantized frozen base",
            "",
            f"Command: `{command}`",
            "",
            f"Batch {rows[0]['batch_size']}, {args.steps} timed steps after {args.warmup} warm-up; "
            f"{platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads. "
            "Weights: `get_memory_footprint()` of the model with LoRA; RSS: the whole process "
            "(tokenized data included) after loading, after the timed steps, and its peak "
            "(reached while loading, when transformers reads the float32 weights before "
            f"quantizing them); accuracy on {args.eval_rows} held-out rows before training and "
            f"after the {args.warmup + args.steps} steps.",
            "",
            *lines,
            "",
        ]
    )
    Path(args.table).parent.mkdir(parents=True, exist_ok=True)
    Path(args.table).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
