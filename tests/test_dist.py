"""The torch.distributed runtime: one process per node on loopback (gloo).

Multi-process tests (marked ``multiprocess``) run ``declora launch`` or the README's torchrun
command in a subprocess with a hard timeout and compare against the simulator: same metrics
(1e-5 relative), same byte counts, also after a crash and restart. Fast tests drive one node's
exchange step with a stand-in link."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

from declora import wire
from declora.cli import main
from declora.config import load_config
from declora.consensus import mix_row
from declora.dist import Debug, check_out_dir, exchange_step
from declora.gossip import Exchange
from tests.helpers import tiny_args, tiny_llama_args

TIMEOUT_S = 150


def base_args(model_dir, csv_path, out) -> list[str]:
    return [
        *tiny_args(model_dir, csv_path, out),
        "rounds=5",
        "eval_every=2",
        "lr=0.05",
        "methods=[dec-lora]",
    ]


def env(**extra) -> dict:
    out = {k: v for k, v in os.environ.items() if k != "DECLORA_DEBUG"}
    out.update(MASTER_ADDR="127.0.0.1", GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1")
    out.update(extra)
    return out


def run_cmd(cmd: list[str], environ: dict) -> subprocess.CompletedProcess:
    """Run with a hard timeout; on timeout kill the whole process group (torchrun + workers)."""
    proc = subprocess.Popen(
        cmd,
        env=environ,
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
        pytest.fail(f"timed out after {TIMEOUT_S} s:\n{err[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def launch(args: list[str], *flags: str, **environ) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "declora.cli", "launch", *flags, *args]
    return run_cmd(cmd, env(**environ))


def records(out) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def assert_same_metrics(sim: list[dict], dist: list[dict]) -> None:
    assert [r["round"] for r in sim] == [r["round"] for r in dist]
    for a, b in zip(sim, dist):
        assert a.keys() == b.keys()
        for key in a:
            if key == "wall_s":
                continue
            if isinstance(a[key], float):
                assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-9), (a["round"], key)
            else:
                assert a[key] == b[key], (a["round"], key)


def run_sim(args: list[str]) -> None:
    """``declora run`` in this process on one thread, as each dist worker runs (same sums)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["run", *args]) == 0
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def sim_reference(tiny_model_dir, tiny_csv, tmp_path_factory):
    out = tmp_path_factory.mktemp("sim") / "run"
    args = base_args(tiny_model_dir, tiny_csv, out)
    run_sim(args)
    return records(out)


# ---------------------------------------------------------------- one node, stand-in link


class StandInLink:
    """Returns pre-made frames instead of talking to processes."""

    def __init__(self, frames: dict):
        self.frames = frames

    def swap(self, peers, frame, round_):
        assert sorted(self.frames) == peers
        return self.frames


def tiny_node(value: float):
    from declora.train import Node

    class Cfg:  # what Node.create reads
        seed, batch_size, lr, head_lr_scale, optimizer, weight_decay = 0, 2, 0.1, 1.0, "sgd", 0.0
        rounds, local_steps, warmup, schedule = 1, 1, 0.0, "constant"

    from declora.data import Dataset

    data = Dataset([[1, 2]], np.array([0]), ["a", "b"])
    init = {"lora_A": torch.full((2, 3), value), "head": torch.full((2,), value)}
    return Node.create(0, data, init, Cfg, stream=0), init


def frame_from(j: int, state, round_: int, key=None, nan=False) -> bytes:
    payload = Exchange(j, state).outgoing(state, round_)
    if nan:
        payload = payload[:-4] + np.float32("nan").tobytes()
    return wire.seal(payload, j, round_, torch.float32, key)


def test_exchange_step_mixes_accepted_messages_and_gives_refused_weight_to_self():
    node, init = tiny_node(1.0)
    ex = Exchange(0, init)
    s1 = {k: torch.full_like(v, 4.0) for k, v in init.items()}
    s2 = {k: torch.full_like(v, 10.0) for k, v in init.items()}
    W = np.array([[0.5, 0.25, 0.25], [0.25, 0.75, 0.0], [0.25, 0.0, 0.75]])
    lines = []
    link = StandInLink({1: frame_from(1, s1, 3), 2: frame_from(2, s2, 3, nan=True)})
    sent, refused = exchange_step(node, ex, W, 3, link, key=None, log=lines.append)
    assert refused == 1 and sent == 2 * len(ex.outgoing(init, 3))
    assert lines == [
        "declora: node 0 refused the message from node 2 at round 3: 1 non-finite values"
    ]
    expected = mix_row(init, 0.75, {1: (0.25, s1)})
    for k in init:
        assert torch.allclose(node.params[k], expected[k])
        assert torch.allclose(node.params[k], torch.full_like(init[k], 1.75))


def test_exchange_step_refuses_unauthenticated_and_oversized_messages():
    node, init = tiny_node(0.0)
    key = b"s" * 32
    s1 = {k: torch.full_like(v, 8.0) for k, v in init.items()}
    W = np.array([[0.5, 0.25, 0.25], [0.25, 0.75, 0.0], [0.25, 0.0, 0.75]])
    lines = []
    link = StandInLink({1: frame_from(1, s1, 2, key=key), 2: "announced a frame of 9e9 bytes"})
    _, refused = exchange_step(node, Exchange(0, init), W, 2, link, key=key, log=lines.append)
    assert refused == 1 and "node 2" in lines[0] and "announced" in lines[0]
    assert torch.allclose(node.params["head"], torch.full((2,), 2.0))  # 0.75 * 0 + 0.25 * 8
    lines.clear()
    node, init = tiny_node(0.0)
    link = StandInLink({1: frame_from(1, s1, 2, key=b"x" * 32), 2: frame_from(2, s1, 2, key=key)})
    _, refused = exchange_step(node, Exchange(0, init), W, 2, link, key=key, log=lines.append)
    assert refused == 1 and "node 1" in lines[0] and "HMAC" in lines[0]


def test_an_isolated_node_does_not_exchange():
    node, init = tiny_node(1.0)

    class NoLink:
        def swap(self, *a):
            raise AssertionError("an isolated node must not talk")

    W = np.eye(3)
    assert exchange_step(node, Exchange(0, init), W, 1, NoLink(), key=None) == (0, 0)


def test_debug_hooks_parse():
    os.environ["DECLORA_DEBUG"] = "crash=1@2, nan=3@4"
    try:
        debug = Debug.from_env()
    finally:
        del os.environ["DECLORA_DEBUG"]
    assert debug.on("crash", 1, 2) and debug.on("nan", 3, 4) and not debug.on("crash", 1, 3)


def test_out_dir_rules(tmp_path):
    cfg = load_config(None, [f"out={tmp_path / 'run'}"])
    assert check_out_dir(cfg) is False  # new
    (tmp_path / "run").mkdir()
    assert check_out_dir(cfg) is False  # empty
    from declora.config import ConfigError, dump_config

    (tmp_path / "run" / "config.yaml").write_text(dump_config(cfg))
    assert check_out_dir(cfg) is True  # an unfinished run of this config: resume
    other = load_config(None, [f"out={tmp_path / 'run'}", "lr=0.5"])
    with pytest.raises(ConfigError, match="another run"):
        check_out_dir(other)
    (tmp_path / "run" / "summary.json").write_text("{}")
    with pytest.raises(ConfigError, match="finished run"):
        check_out_dir(cfg)
    with pytest.raises(ConfigError, match="out= is required"):
        check_out_dir(load_config(None, []))


@pytest.mark.parametrize(
    "args, message",
    [
        (["--nproc", "3", "nodes=4"], "one process per node"),
        (["methods=[centralized]"], "launch runs dec-lora"),
        (["security.key_file=/nonexistent/key"], "security.key_file"),
    ],
)
def test_launch_refuses_bad_input_in_one_line(args, message, capsys, tmp_path):
    assert main(["launch", *args, f"out={tmp_path / 'x'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and err.count("\n") == 0
    assert not (tmp_path / "x").exists()


# ---------------------------------------------------------------- 4 processes on loopback


@pytest.mark.multiprocess
def test_dist_matches_simulator(tiny_model_dir, tiny_csv, tmp_path, sim_reference):
    out = tmp_path / "dist"
    proc = launch(base_args(tiny_model_dir, tiny_csv, out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_metrics(sim_reference, records(out))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["runtime"] == {"processes": 4, "backend": "gloo", "messages_refused": 0}
    for name in ("config.yaml", "labels.json", "curves.png"):
        assert (out / name).is_file()
    nodes = sorted(p.name for p in (out / "adapters" / "dec-lora").glob("node_*"))
    assert nodes == [f"node_{i}" for i in range(4)]


@pytest.mark.multiprocess
def test_dist_matches_simulator_with_faults_and_compression(tiny_model_dir, tiny_csv, tmp_path):
    extra = [
        "faults.link_drop=0.3",
        "faults.node_drop=0.2",
        "compression.kind=quantize",
        "compression.bits=4",
    ]
    sim_out, dist_out = tmp_path / "sim", tmp_path / "dist"
    run_sim([*base_args(tiny_model_dir, tiny_csv, sim_out), *extra])
    proc = launch([*base_args(tiny_model_dir, tiny_csv, dist_out), *extra])
    assert proc.returncode == 0, proc.stderr[-3000:]
    sim = records(sim_out)
    assert_same_metrics(sim, records(dist_out))
    assert sim[-1]["samples_seen"] < 5 * 4 * 4 * 8  # some node sat a round out


@pytest.mark.multiprocess
def test_crash_recovery_matches_an_uninterrupted_run(
    tiny_model_dir, tiny_csv, tmp_path, sim_reference
):
    out = tmp_path / "dist"
    args = [*base_args(tiny_model_dir, tiny_csv, out), "checkpoint_every=1"]
    proc = launch(args, "--max-restarts", "1", DECLORA_DEBUG="crash=1@2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "checkpoints" / ".crashed_node1_round2").exists()  # it did die once
    # the others may be stopped before or after their own round-2 checkpoint
    assert re.search(r"resuming after round [12] ", proc.stdout), proc.stdout
    assert_same_metrics(sim_reference, records(out))


@pytest.mark.multiprocess
def test_corrupted_and_forged_messages_are_refused_and_the_run_completes(
    tiny_model_dir, tiny_csv, tmp_path
):
    key = tmp_path / "key"
    key.write_bytes(os.urandom(32).hex().encode())
    out = tmp_path / "dist"
    args = [*base_args(tiny_model_dir, tiny_csv, out), f"security.key_file={key}"]
    proc = launch(args, DECLORA_DEBUG="nan=1@2,short=1@3,forge=3@4,flip=2@5")
    assert proc.returncode == 0, proc.stderr[-3000:]
    # each refusal is one write (dist.say), so lines from the 4 processes do not interleave
    refusals = [x for x in proc.stderr.splitlines() if "refused the message" in x]
    assert len(refusals) == 8, refusals  # each bad sender has two neighbours on the ring
    expect = {
        (1, 2): "non-finite",
        (1, 3): "bytes, expected",
        (3, 4): "HMAC",
        (2, 5): "HMAC",
    }
    for (sender, round_), reason in expect.items():
        hits = [x for x in refusals if f"from node {sender} at round {round_}:" in x]
        assert len(hits) == 2 and all(reason in x for x in hits), hits
    summary = json.loads((out / "summary.json").read_text())
    assert summary["runtime"]["messages_refused"] == 8
    assert np.isfinite(summary["methods"]["dec-lora"]["loss"])


@pytest.mark.multiprocess
def test_a_silent_peer_fails_the_round_naming_it(tiny_model_dir, tiny_csv, tmp_path):
    args = [*base_args(tiny_model_dir, tiny_csv, tmp_path / "dist"), "rounds=3", "peer_timeout=3"]
    proc = launch(args, DECLORA_DEBUG="hang=2@2")
    assert proc.returncode != 0
    # node 2's neighbours (1 and 3) say who did not answer, in one line each
    lines = [x for x in proc.stderr.splitlines() if "did not answer" in x]
    assert any(
        x.startswith("declora: node 1: round 2: node 2 did not answer within 3 s") for x in lines
    )
    assert any(
        x.startswith("declora: node 3: round 2: node 2 did not answer within 3 s") for x in lines
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.multiprocess
def test_two_torchrun_launchers_like_two_machines(
    tiny_model_dir, tiny_csv, tmp_path, sim_reference
):
    """The README's several-machine command: machine g hosts nodes 2g and 2g+1."""
    out = tmp_path / "dist"
    port = free_port()
    procs = []
    for g in (0, 1):
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes=2",
            f"--node-rank={g}",
            "--nproc-per-node=2",
            f"--rdzv-endpoint=127.0.0.1:{port}",
            "-m",
            "declora.cli",
            "worker",
            *base_args(tiny_model_dir, tiny_csv, out),
        ]
        procs.append(
            subprocess.Popen(
                cmd,
                env=env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                start_new_session=True,
            )
        )
    try:
        results = [p.communicate(timeout=TIMEOUT_S) for p in procs]
    except subprocess.TimeoutExpired:
        for p in procs:
            os.killpg(p.pid, signal.SIGKILL)
        pytest.fail("two-launcher run timed out")
    assert [p.returncode for p in procs] == [0, 0], results[0][1][-3000:]
    assert_same_metrics(sim_reference, records(out))


@pytest.mark.multiprocess
@pytest.mark.parametrize("extra", [[], ["model.quantize=4bit", "consensus=product"]])
def test_dist_matches_simulator_on_a_tiny_llama(tiny_llama_dir, tiny_csv, tmp_path, extra):
    """task causal_lm (classification as generation) in both runtimes: same metrics."""
    if extra:
        pytest.importorskip("bitsandbytes")
    args = [*tiny_llama_args(tiny_llama_dir, tiny_csv, tmp_path / "x"), "rounds=3", "eval_every=2"]
    args += ["methods=[dec-lora]", *extra]
    sim_out, dist_out = tmp_path / "sim", tmp_path / "dist"
    run_sim([*args, f"out={sim_out}"])
    proc = launch([*args, f"out={dist_out}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_metrics(records(sim_out), records(dist_out))
    assert (dist_out / "adapters" / "dec-lora" / "node_3" / "adapter_config.json").is_file()
