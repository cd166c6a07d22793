"""The GPU check in one command: declora on CUDA, measured, written to ``results/gpu.md``.

    python benchmarks/gpu_check.py            # on a GPU machine, from the repository root
    python benchmarks/gpu_check.py --quick    # a small dry run (on the CPU where there is no GPU)
    python benchmarks/gpu_check.py --only tiny,smol --out results/gpu-again.md   # some parts

Made for a lent GPU machine (torch with CUDA, transformers, peft, accelerate, matplotlib; no
pydantic, no bundled model or data packages, no network), sized to finish in under 8 minutes on
one H100. What it needs travels in ``build/gpu/`` (``benchmarks/gpu_pack.py`` builds it, under
64 MiB): wheels that are installed into ``build/gpu/pkgs`` for what this Python lacks, and
stand-ins of the bundled MiniLM (float16 weights) and Rotten Tomatoes packages. The script
installs them, then runs itself again with them on ``PYTHONPATH``.

It measures, each part on its own (a part that fails is reported and the others still run):

1. the tiny config (a random 2-layer BERT without dropout) on the CPU and on CUDA in fp32: the
   metrics must agree within ``TINY_TOLERANCE``;
2. seconds per training sample of centralized, the per-node loop and the vectorized simulator,
   10 nodes of MiniLM at fp32 and bf16 (``benchmarks/sim_cost.py``'s runs);
3. the default job's wall time (``declora run``) and its results table;
4. a 2-process ``declora launch`` sharing the GPU (gloo), against the simulator on the GPU;
5. SmolLM2-135M-size causal-LM steps (random weights of its shapes) with a float32, a 4-bit
   and an 8-bit base: seconds per step and peak GPU memory.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CARRY = ROOT / "build" / "gpu"
READY = "DECLORA_GPU_CHECK_READY"
TIMES = ("wall_s", "seconds")  # record fields that are clock readings
TINY_TOLERANCE = 1e-3  # |CPU - CUDA| of every figure of the tiny run (fp32, no dropout)
SMOL = dict(  # SmolLM2-135M's shapes (a LLaMA)
    vocab_size=49152,
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    max_position_embeddings=2048,
    tie_word_embeddings=True,
)


def _needed(wheel: Path) -> bool:
    """Whether this Python can install the wheel and lacks its distribution at that version
    or newer (pydantic needs a newer typing_extensions than some images hold)."""
    from packaging.tags import sys_tags
    from packaging.utils import parse_wheel_filename
    from packaging.version import Version

    name, version, _, tags = parse_wheel_filename(wheel.name)
    if not tags & set(sys_tags()):
        return False
    try:
        return Version(importlib.metadata.version(name)) < version
    except importlib.metadata.PackageNotFoundError:
        return True


def install(wheels: list[Path], pkgs: Path) -> None:
    """pip install --target, or, in a venv without pip (uv makes them), unpack: the carried
    wheels hold no ``.data`` folder, so unpacking is all an install does."""
    if importlib.util.find_spec("pip") is not None:
        pip = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps"]
        subprocess.run([*pip, "--target", str(pkgs), *map(str, wheels)], check=True)
        return
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as z:
            z.extractall(pkgs)


def prepare_environment(argv: list[str]) -> None:
    """Install the carried wheels this Python lacks (once) and run again with ``src``, the
    stand-ins and those wheels on PYTHONPATH (also seen by every process it starts)."""
    if os.environ.get(READY):
        return
    pkgs = CARRY / "pkgs"
    wheels = [w for w in sorted((CARRY / "wheels").glob("*.whl")) if _needed(w)]
    if wheels:
        print(f"installing {len(wheels)} carried wheels into {pkgs}", flush=True)
        install(wheels, pkgs)
    paths = [ROOT, ROOT / "src", CARRY / "site", pkgs]  # ROOT: the tests' model builders
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", **{READY: "1"})
    env["PYTHONPATH"] = os.pathsep.join(
        [*(str(p) for p in paths if p.is_dir()), env.get("PYTHONPATH", "")]
    ).rstrip(os.pathsep)
    os.execve(sys.executable, [sys.executable, __file__, *argv], env)


def cli(args: list[str], timeout: float = 900) -> tuple[float, str]:
    """``declora ARGS`` in a fresh process: (wall seconds, its output); fails loudly."""
    t0 = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "declora.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        tail = (done.stdout + done.stderr).strip().splitlines()[-15:]
        raise RuntimeError(f"declora {args[0]} exited {done.returncode}:\n" + "\n".join(tail))
    return wall, done.stdout


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def max_difference(a: list[dict], b: list[dict]) -> float:
    """The largest |a - b| over the numeric fields two runs' metrics share (inf if the
    records do not line up)."""
    if len(a) != len(b):
        return float("inf")
    worst = 0.0
    for x, y in zip(a, b):
        for k, v in x.items():
            w = y.get(k)
            numbers = isinstance(v, (int, float)) and isinstance(w, (int, float))
            if numbers and k not in TIMES and v == v and w == w:  # NaN: not measured
                worst = max(worst, abs(v - w))
    return worst


def tiny_model(work: Path) -> tuple[Path, Path]:
    """The tests' tiny random BERT (2 layers, 32 wide, the bundled MiniLM's tokenizer) without
    dropout, and their CSV of 400 reviews whose one cue word gives the label away."""
    from declora.testing import save_tiny_bert, synthetic_rows, write_csv

    off = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    model = save_tiny_bert(work / "tiny-bert", **off)
    return model, write_csv(work / "tiny.csv", synthetic_rows(400))


def tiny_args(model: Path, data: Path, out: Path) -> list[str]:
    """The tests' tiny run, with LoRA's dropout off too, dec-lora and centralized."""
    from declora.testing import tiny_args as tests_tiny_args

    extra = ["lora.dropout=0", "methods=[dec-lora,centralized]"]
    return [*tests_tiny_args(model, data, out), *extra]


def part_tiny(work: Path, device: str) -> dict:
    """Part 1: the tiny run on the CPU and on ``device``, fp32, figure by figure."""
    model, data = tiny_model(work)
    runs = []
    for k, where in enumerate(("cpu", device)):
        out = work / f"tiny-{k}"
        wall, _ = cli(["run", *tiny_args(model, data, out), f"device={where}"])
        runs.append((wall, records(out)))
    worst = max_difference(runs[0][1], runs[1][1])
    return {
        "cpu_s": runs[0][0],
        "device_s": runs[1][0],
        "max_difference": worst,
        "tolerance": TINY_TOLERANCE,
        "agree": worst <= TINY_TOLERANCE,
    }


def part_sim_cost(device: str, quick: bool) -> dict:
    """Part 2: seconds per sample, 10 nodes of MiniLM, loop vs vectorized vs centralized."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from sim_cost import measure

    size = ["nodes=3", "rounds=1", "local_steps=1"] if quick else ["nodes=10", "rounds=3"]
    size += [] if quick else ["local_steps=5"]
    base = [*size, "data.test_size=100", "data.val_size=100", f"device={device}"]
    rows = {}
    for precision in ("fp32", "bf16"):
        args = [*base, f"precision={precision}"]
        for name, method, extra in (
            ("centralized", "centralized", []),
            ("per-node loop", "dec-lora", ["vectorize=false"]),
            ("vectorized", "dec-lora", ["vectorize=true"]),
        ):
            r = measure(method, [*args, *extra])
            r["s_per_sample"] = r["train_s"] / r["samples"]
            rows[f"{precision} {name}"] = r
            print(f"  {precision} {name}: {r['s_per_sample'] * 1e3:.3f} ms/sample", flush=True)
    for precision in ("fp32", "bf16"):
        loop, vec = rows[f"{precision} per-node loop"], rows[f"{precision} vectorized"]
        cen = rows[f"{precision} centralized"]
        rows[f"{precision} vectorized vs loop"] = loop["s_per_sample"] / vec["s_per_sample"]
        rows[f"{precision} vectorized vs centralized"] = vec["s_per_sample"] / cen["s_per_sample"]
    return {"config": base, "runs": rows}


def part_default(work: Path, device: str, quick: bool) -> dict:
    """Part 3: the built-in default job (``declora run``), its wall time and table."""
    args = ["run", f"out={work / 'default'}", f"device={device}"]
    if quick:
        args += ["rounds=2", "eval_every=1", "data.train_size=200", "data.test_size=100"]
        args += ["data.val_size=100", "per_method.dec-lora.finish_rounds=0"]
    wall, text = cli(args)
    summary = json.loads((work / "default" / "summary.json").read_text())
    table = [line for line in text.splitlines() if line.strip()][-12:]
    return {
        "wall_s": wall,
        "accuracy": {m: v.get("accuracy") for m, v in summary["methods"].items()},
        "table": table,
    }


def part_launch(work: Path, device: str, quick: bool) -> dict:
    """Part 4: 2 processes of ``declora launch`` on one GPU (they share it over gloo), and
    the simulator on the same GPU with the same config."""
    args = ["nodes=2", "rounds=2" if quick else "rounds=6", "eval_every=2", "methods=[dec-lora]"]
    args += ["data.train_size=400", "data.test_size=100", "data.val_size=100"]
    args += [f"device={device}", "per_method.dec-lora.finish_rounds=0"]
    wall, _ = cli(["launch", *args, f"out={work / 'launch'}"])
    sim_wall, _ = cli(["run", *args, f"out={work / 'launch-sim'}"])
    summary = json.loads((work / "launch" / "summary.json").read_text())
    worst = max_difference(records(work / "launch"), records(work / "launch-sim"))
    return {
        "wall_s": wall,
        "sim_wall_s": sim_wall,
        "runtime": summary.get("runtime"),
        "max_difference_vs_sim": worst,
    }


def smol_model(work: Path, quick: bool) -> Path:
    """Random weights of SmolLM2-135M's shapes (2 layers in a quick run), saved once."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    path = work / ("smol-quick" if quick else "smol")
    if not path.is_dir():
        torch.manual_seed(0)
        shape = {**SMOL, "num_hidden_layers": 2} if quick else SMOL
        LlamaForCausalLM(LlamaConfig(**shape)).save_pretrained(path)
    return path


def smol_steps(path: Path, device: str, quantize: str, precision: str, steps: int) -> dict:
    """Seconds per training step (16 rows of 96 prompt + 32 target tokens) and peak GPU
    memory of one node with LoRA on q_proj and v_proj over the ``quantize`` base."""
    import numpy as np
    import torch

    from declora.config import load_config
    from declora.learning.adapters import build_model, trainable_state
    from declora.learning.causal_lm import collate
    from declora.learning.dataset import Dataset
    from declora.learning.train import Node, train_steps

    cfg = load_config(
        None,
        [
            "task=causal_lm",
            "data.label_words=[negative,positive]",  # the config asks for a kind of LM task
            f"model.name={path}",
            f"model.quantize={quantize}",
            "lora.targets=[q_proj,v_proj]",
            f"precision={precision}",
            "batch_size=16",
            f"device={device}",
        ],
    )
    dev = torch.device(device)
    gpu = dev.type == "cuda"
    if gpu:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    model = build_model(cfg, 1, dev)
    init = trainable_state(model)
    for p in model.parameters():  # the node owns the trainable tensors, as in a run
        p.requires_grad_(False)
    rng = np.random.default_rng(0)
    rows = 64
    prompts = rng.integers(0, SMOL["vocab_size"], (rows, 96)).tolist()
    targets = rng.integers(0, SMOL["vocab_size"], (rows, 32)).tolist()
    data = Dataset(prompts, np.zeros(rows, dtype=np.int64), ["x"], targets)
    node = Node.create(0, data, init, cfg, 0, device=dev)
    pad = lambda ds, idx: collate(ds, idx, 0)  # noqa: E731
    train_steps(model, node, 2, pad)  # warm-up, not timed
    if gpu:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    loss = train_steps(model, node, steps, pad)
    if gpu:
        torch.cuda.synchronize()
    return {
        "s_per_step": (time.perf_counter() - t0) / steps,
        "peak_gpu_gb": torch.cuda.max_memory_allocated() / 1e9 if gpu else None,
        "loss": loss,
    }


def part_smol(work: Path, device: str, quick: bool) -> dict:
    """Part 5: SmolLM2-size causal-LM steps over a float32, a 4-bit and an 8-bit base."""
    import importlib.util

    path = smol_model(work, quick)
    out = {}
    settings = [("none", "fp32"), ("none", "bf16"), ("4bit", "bf16"), ("4bit", "fp32")]
    if not quick:
        settings.append(("int8", "fp32"))
    for quantize, precision in settings:
        if quantize != "none" and importlib.util.find_spec("bitsandbytes") is None:
            out[f"{quantize} {precision}"] = {"error": "bitsandbytes is not installed"}
            continue
        r = smol_steps(path, device, quantize, precision, 2 if quick else 10)
        out[f"{quantize} {precision}"] = r
        print(f"  base {quantize}, {precision}: {r['s_per_step']:.3f} s/step", flush=True)
    return out


def environment(device: str) -> dict:
    import torch

    env = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": device,
        "gpu": torch.cuda.get_device_name(0) if device.startswith("cuda") else None,
    }
    for name in ("transformers", "peft", "bitsandbytes"):
        try:
            env[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            env[name] = None
    return env


def _ms(r: dict) -> str:
    return f"{r['s_per_sample'] * 1e3:.3f}"


def _cost_lines(cost: dict) -> list[str]:
    runs = cost["runs"]
    lines = [
        f"config: `{' '.join(cost['config'])}`",
        "",
        "| precision | centralized ms/sample | per-node loop | vectorized | vectorized vs loop "
        "| vectorized / centralized | peak GPU GB (loop, vectorized, centralized) |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for p in ("fp32", "bf16"):
        c, loop, vec = (runs[f"{p} {k}"] for k in ("centralized", "per-node loop", "vectorized"))
        peaks = ", ".join(
            f"{r['peak_gpu'] / 1e9:.2f}" if r.get("peak_gpu") else "-" for r in (loop, vec, c)
        )
        lines.append(
            f"| {p} | {_ms(c)} | {_ms(loop)} | {_ms(vec)} | {runs[f'{p} vectorized vs loop']:.2f}x "
            f"| {runs[f'{p} vectorized vs centralized']:.2f}x | {peaks} |"
        )
    fast = all(runs[f"{p} vectorized vs loop"] >= 5 for p in ("fp32", "bf16"))
    close = all(runs[f"{p} vectorized vs centralized"] <= 1.5 for p in ("fp32", "bf16"))
    lines += [
        "",
        f"Goals: vectorized at least 5x the loop's samples per second: {'met' if fast else 'not met'}; "
        f"within 1.5x of centralized: {'met' if close else 'not met'}.",
    ]
    return lines


def _part_lines(name: str, r: dict) -> list[str]:
    if "error" in r:
        return ["failed:", "```", r["error"], "```"]
    if name == "tiny":
        verdict = "agree" if r["agree"] else "DISAGREE"
        return [
            f"CPU {r['cpu_s']:.1f} s, GPU {r['device_s']:.1f} s (whole `declora run`, with start-up); "
            f"largest difference of any figure in metrics.jsonl: {r['max_difference']:.2e} "
            f"(tolerance {r['tolerance']:g}): {verdict}."
        ]
    if name == "cost":
        return _cost_lines(r)
    if name == "default":
        acc = ", ".join(f"{m} {a:.3f}" for m, a in r["accuracy"].items() if a is not None)
        return [
            f"wall time {r['wall_s']:.1f} s; test accuracy: {acc}",
            "",
            "```",
            *r["table"],
            "```",
        ]
    if name == "launch":
        return [
            f"2 processes: {r['wall_s']:.1f} s (runtime {r['runtime']}); the simulator on the same "
            f"device {r['sim_wall_s']:.1f} s; largest difference of any figure from the "
            f"simulator's: {r['max_difference_vs_sim']:.2e}."
        ]
    lines = ["| base | precision | s / step | peak GPU GB | loss |", "|---|---|---:|---:|---:|"]
    for key, v in r.items():
        base, precision = key.split()
        if "error" in v:
            lines.append(f"| {base} | {precision} | {v['error']} | | |")
            continue
        peak = f"{v['peak_gpu_gb']:.2f}" if v["peak_gpu_gb"] is not None else "-"
        lines.append(f"| {base} | {precision} | {v['s_per_step']:.3f} | {peak} | {v['loss']:.3f} |")
    return lines


TITLES = {
    "tiny": "1. The tiny config on the CPU and on the GPU (fp32, no dropout)",
    "cost": "2. Seconds per training sample, 10 nodes of MiniLM",
    "default": "3. The default job (`declora run`)",
    "launch": "4. `declora launch`, 2 processes sharing the GPU",
    "smol": "5. SmolLM2-135M-size causal LM (random weights), one node, 16 rows of 128 tokens",
}


def write_report(results: dict, path: Path) -> None:
    env = results["environment"]
    lines = [
        "# GPU check",
        "",
        f"`python benchmarks/gpu_check.py{' --quick' if results['quick'] else ''}` on "
        f"{results['date']}, {results['wall_s']:.0f} s in all. "
        + ", ".join(f"{k} {v}" for k, v in env.items() if v),
    ]
    if env["device"] == "cpu":
        lines += ["", "**A dry run on the CPU (no CUDA here): these are not GPU figures.**"]
    for name, title in TITLES.items():
        if name in results:
            lines += ["", f"## {title}", "", *_part_lines(name, results[name])]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    path.with_suffix(".json").write_text(json.dumps(results, indent=1, default=str) + "\n")


def run_part(name: str, fn, *args) -> dict:
    """One part, timed; an exception is kept as its result so the other parts still run."""
    print(f"[{name}] {TITLES[name]}", flush=True)
    t0 = time.perf_counter()
    try:
        out = fn(*args)
    except Exception as err:  # noqa: BLE001 (any failure is a finding to report)
        detail = getattr(err, "stderr", None) or ""
        out = {"error": f"{type(err).__name__}: {err}\n{detail[-3000:]}".strip()}
    print(f"[{name}] {time.perf_counter() - t0:.0f} s: {json.dumps(out, default=str)[:400]}")
    return out


def main(argv: list[str]) -> int:
    prepare_environment(argv)
    import tempfile

    import torch

    quick = "--quick" in argv
    device = "cuda" if torch.cuda.is_available() else "cpu"
    default_out = ROOT / "results" / "gpu.md" if device == "cuda" else CARRY / "dryrun" / "gpu.md"
    out = Path(argv[argv.index("--out") + 1]) if "--out" in argv else default_out
    if device == "cpu":
        print("no CUDA device: a dry run on the CPU (the figures are not GPU figures)")
    t0 = time.perf_counter()
    results = {
        "quick": quick,
        "date": time.strftime("%Y-%m-%d"),
        "environment": environment(device),
    }
    only = argv[argv.index("--only") + 1].split(",") if "--only" in argv else list(TITLES)
    parts = {
        "tiny": lambda work: part_tiny(work, device),
        "cost": lambda work: part_sim_cost(device, quick),
        "default": lambda work: part_default(work, device, quick),
        "launch": lambda work: part_launch(work, device, quick),
        "smol": lambda work: part_smol(work, device, quick),
    }
    with tempfile.TemporaryDirectory(prefix="declora-gpu-") as tmp:
        for name in only:  # the report is rewritten after each part: a killed run keeps them
            results[name] = run_part(name, parts[name], Path(tmp))
            results["wall_s"] = time.perf_counter() - t0
            write_report(results, out)
    print(out.read_text())
    print(f"written: {out} and {out.with_suffix('.json')}")
    return 1 if any("error" in results[k] for k in only) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
