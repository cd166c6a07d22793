"""Helpers the tests import: synthetic data, the tiny configs' overrides, and running
``declora run`` / ``declora launch`` with a hard timeout. Fixtures live in conftest.py; the
tiny builders that benchmarks/gpu_check.py shares are in :mod:`declora.testing`."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from declora.testing import (  # noqa: F401 (re-exported for the tests)
    FILLER,
    NEGATIVE,
    POSITIVE,
    save_tiny_bert,
    synthetic_rows,
    tiny_args,
    write_csv,
)

TIMEOUT_S = 150

CHAT_TEMPLATE = (
    "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}[assistant] {% endif %}"
)
LLAMA_LABEL_WORDS = [
    "data.label_words=[negative,positive]",
    "data.prompt_template=review: {text} sentiment:",
]


def cue_pairs(n: int, seed: int = 0) -> list[dict]:
    """Instruction pairs: a synthetic review as the prompt, its cue word as the response."""
    cues = set(POSITIVE + NEGATIVE)
    return [
        {"prompt": r["text"], "response": next(w for w in r["text"].split() if w in cues)}
        for r in synthetic_rows(n, seed)
    ]


def pair_rows(n: int, seed: int = 0) -> list[dict]:
    """Sentence pairs: two synthetic reviews, labelled by whether their cue words agree
    (``same`` / ``different``); the second review is up to 3x as long as the first."""
    firsts, seconds = synthetic_rows(n, seed), synthetic_rows(n, seed + 1)
    rows = []
    for k, (a, b) in enumerate(zip(firsts, seconds)):
        pair = " ".join([b["text"]] * (1 + k % 3))
        label = "same" if a["label"] == b["label"] else "different"
        rows.append({"text": a["text"], "text_pair": pair, "label": label})
    return rows


def tiny_llama_args(model_dir, csv_path, out) -> list[str]:
    """tiny_args for the tiny LLaMA: classification as generation of the label words."""
    args = [a for a in tiny_args(model_dir, csv_path, out) if not a.startswith("lora.rank")]
    return [*args, "task=causal_lm", *LLAMA_LABEL_WORDS, "lr=0.05"]


def refuses_data(path, tmp_path, capsys, extra: list[str], message: str) -> None:
    """``declora run`` on the data file ``path``: exit 2, one line holding ``message``, and no
    output folder."""
    from declora.cli import main

    out = tmp_path / "out"
    args = [f"data.path={path}", "data.test_size=5", "data.val_size=5", f"out={out}", *extra]
    assert main(["run", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and err.count("\n") == 0, err
    assert not out.exists()


def write_key(path):
    """A good security.key_file at ``path``: 32 random bytes as hex, readable by its owner."""
    path.write_bytes(os.urandom(32).hex().encode())
    path.chmod(0o600)
    return path


def records(out) -> list[dict]:
    """The run's metrics.jsonl, one dict per line."""
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def run_sim(args: list[str]) -> None:
    """``declora run`` in this process on one thread, as each dist worker runs (same sums)."""
    import torch

    from declora.cli import main

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["run", *args]) == 0
    finally:
        torch.set_num_threads(threads)


def env(**extra) -> dict:
    """This environment for a torchrun child: loopback, one thread."""
    out = dict(os.environ)
    out.update(MASTER_ADDR="127.0.0.1", GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1")
    out.update(extra)
    return out


def run_cmd(cmd: list[str], environ: dict, cwd=None) -> subprocess.CompletedProcess:
    """Run with a hard timeout; on timeout kill the whole process group (torchrun + workers)."""
    proc = subprocess.Popen(
        cmd,
        env=environ,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        import pytest  # imported here: benchmarks/gpu_check.py reuses the builders without it

        pytest.fail(f"timed out after {TIMEOUT_S} s:\n{err[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def launch(args: list[str], *flags: str, **environ) -> subprocess.CompletedProcess:
    """``declora launch`` in a subprocess (torchrun, 4 gloo processes on loopback)."""
    cmd = [sys.executable, "-m", "declora.cli", "launch", *flags, *args]
    return run_cmd(cmd, env(**environ))


def torchrun_agents(
    args: list[str], cwds: list, nproc: int = 2, entry: tuple[str, ...] = ("declora.cli", "worker")
) -> list[subprocess.CompletedProcess]:
    """One torchrun agent per folder in ``cwds``, as separate machines would run them
    (``--nnodes``, one rendezvous on 127.0.0.1; agent g hosts nodes g*nproc ...), each running
    ``declora.cli worker ARGS`` (or ``-m ENTRY ARGS``); every agent's whole process group is
    killed on timeout."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmds, procs = [], []
    for g, cwd in enumerate(cwds):
        cmds.append(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                f"--nnodes={len(cwds)}",
                f"--node-rank={g}",
                f"--nproc-per-node={nproc}",
                f"--rdzv-endpoint=127.0.0.1:{port}",
                "-m",
                *entry,
                *args,
            ]
        )
        procs.append(
            subprocess.Popen(
                cmds[-1],
                cwd=cwd,
                env=env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                start_new_session=True,
            )
        )
    try:
        done = [p.communicate(timeout=TIMEOUT_S) for p in procs]
    except subprocess.TimeoutExpired:
        for p in procs:
            os.killpg(p.pid, signal.SIGKILL)
        import pytest

        pytest.fail(f"{len(cwds)} torchrun agents timed out")
    return [subprocess.CompletedProcess(c, p.returncode, *o) for c, p, o in zip(cmds, procs, done)]


def load_benchmark(name: str):
    """``benchmarks/<name>.py`` as a module (the benchmarks are scripts, not a package)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"{name}_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
