"""The torch.distributed runtime: one process per node on loopback (gloo).

Multi-process tests (marked ``multiprocess``) run ``declora launch``, the README's torchrun
command, or a worker whose transport misbehaves (:mod:`tests.faulty_worker`) in a subprocess
with a hard timeout and compare against the simulator: same metrics (1e-5 relative), same byte
counts, the same summary keys, also after a crash and restart. The round itself, with a
stand-in transport, is tested in test_rounds.py."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from declora.cli import main
from declora.config import load_config
from declora.runtimes.distributed.launcher import check_out_dir
from tests.helpers import (
    env,
    launch,
    records,
    run_cmd,
    run_sim,
    tiny_args,
    tiny_llama_args,
    torchrun_agents,
    write_key,
)

ROOT = Path(__file__).resolve().parents[1]


def base_args(model_dir, csv_path, out) -> list[str]:
    return [
        *tiny_args(model_dir, csv_path, out),
        "rounds=5",
        "eval_every=2",
        "lr=0.05",
        "methods=[dec-lora]",
    ]


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


def encrypted(tmp_path) -> list[str]:
    """Overrides for a DP delta the tiny sites allow, and encrypted links under a fresh key."""
    key = write_key(tmp_path / "key")
    # the same noise in both runtimes: the DP randomness from the seed (no privacy: tests only)
    return [
        "privacy.delta=1e-4",
        "privacy.reproducible=true",
        f"security.key_file={key}",
        "security.encrypt=true",
    ]


def same_in_both_runtimes(model_dir, csv_path, tmp_path, extra: list[str]):
    """Run the config with ``extra`` in the simulator and under launch; check that their
    metrics agree; the simulator's records and the launch's folder."""
    sim_out, dist_out = tmp_path / "sim", tmp_path / "dist"
    run_sim([*base_args(model_dir, csv_path, sim_out), *extra])
    proc = launch([*base_args(model_dir, csv_path, dist_out), *extra])
    assert proc.returncode == 0, proc.stderr[-3000:]
    sim = records(sim_out)
    assert_same_metrics(sim, records(dist_out))
    return sim, dist_out


@pytest.fixture(scope="module")
def sim_reference(tiny_model_dir, tiny_csv, tmp_path_factory):
    out = tmp_path_factory.mktemp("sim") / "run"
    run_sim(base_args(tiny_model_dir, tiny_csv, out))
    return {"records": records(out), "summary": json.loads((out / "summary.json").read_text())}


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


SITE_LOCAL = [  # (what the first start had, what the restart has): the same run
    (["security.key_file=/srv/a/key"], ["security.key_file=/srv/b/key"]),  # a new key file
    (["out={run}"], ["out={run}/./"]),
    (["device=auto"], ["device=cpu"]),
    (
        ["data.path=/a/site_{{node}}.csv", "data.labels=[x,y]", "data.encoding=cp1252"],
        ["data.path=b/site_{{node}}.csv", "data.labels=[x,y]"],
    ),
]


@pytest.mark.parametrize(("before", "after"), SITE_LOCAL)
def test_a_resumed_launch_may_change_what_is_site_local(tmp_path, before, after):
    """issue 25: compared as config.yaml text, these were "files of another run"."""
    from declora.config import dump_config

    run = tmp_path / "run"
    first = load_config(None, [f"out={run}", *(a.format(run=run) for a in before)])
    run.mkdir()
    (run / "config.yaml").write_text(dump_config(first))
    again = load_config(None, [f"out={run}", *(a.format(run=run) for a in after)])
    assert check_out_dir(again) is True


@pytest.mark.parametrize(
    "args, message",
    [
        (["--nproc", "3", "nodes=4"], "one process per node"),
        (["methods=[centralized]"], "launch runs dec-lora"),
        (["security.key_file=/nonexistent/key"], "security.key_file"),
        (["--nproc", "0", "nodes=4"], "--nproc asks for 0 processes"),  # issue 25: it ran 4
        (["--nproc", "-2", "nodes=4"], "--nproc asks for -2 processes"),
    ],
)
def test_launch_refuses_bad_input_in_one_line(args, message, capsys, tmp_path):
    assert main(["launch", *args, f"out={tmp_path / 'x'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and err.count("\n") == 0
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    ("codes", "expected"), [([2, 2, -15, 2], 2), ([1, 1, -15], 1), ([-9, 1], 1)]
)
def test_launch_exits_2_for_a_configuration_error_and_1_for_a_failed_run(
    monkeypatch, codes, expected
):
    """issue 25: every failure was exit 1 after torchrun's ChildFailedError traceback."""
    import torch.distributed.run as torchrun
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

    from declora.runtimes.distributed import launcher

    def fail(args):
        failures = {i: ProcessFailure(i, 100 + i, code, "") for i, code in enumerate(codes)}
        raise ChildFailedError("declora.cli", failures)

    monkeypatch.setattr(torchrun, "run", fail)
    assert launcher.torchrun(["--standalone", "-m", "declora.cli", "worker"]) == expected


# ---------------------------------------------------------------- 4 processes on loopback


def faulty_launch(args: list[str], spec: str, max_restarts: int = 0):
    """4 workers whose transport misbehaves as ``spec`` says (tests/faulty.py)."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=4",
        f"--max-restarts={max_restarts}",
        "-m",
        "tests.faulty_worker",
        spec,
        *args,
    ]
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return run_cmd(cmd, env(PYTHONPATH=path), cwd=ROOT)


@pytest.mark.multiprocess
def test_dist_matches_simulator(tiny_model_dir, tiny_csv, tmp_path, sim_reference):
    out = tmp_path / "dist"
    proc = launch(base_args(tiny_model_dir, tiny_csv, out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_metrics(sim_reference["records"], records(out))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["runtime"] == {"processes": 4, "backend": "gloo", "device": "cpu"}
    # both runtimes write the same summary: the same keys for the method and at the top
    sim_summary = sim_reference["summary"]
    assert summary.keys() == sim_summary.keys()
    assert summary["methods"]["dec-lora"].keys() == sim_summary["methods"]["dec-lora"].keys()
    assert summary["untrained"] == pytest.approx(sim_summary["untrained"], rel=1e-5)
    assert summary["methods"]["dec-lora"]["messages_refused"] == 0
    dist_dec, sim_dec = summary["methods"]["dec-lora"], sim_summary["methods"]["dec-lora"]
    for got, want in zip(dist_dec["nodes"], sim_dec["nodes"]):  # each node on the test rows
        assert got == pytest.approx(want, rel=1e-5)
    assert dist_dec["average_adapter"] == pytest.approx(sim_dec["average_adapter"], rel=1e-5)
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
        "finish_rounds=2",  # gossip-only rounds after training, faults and all
        "gossip_steps=2",  # two mixing steps a round, each with its own rounding noise
    ]
    sim, dist_out = same_in_both_runtimes(tiny_model_dir, tiny_csv, tmp_path, extra)
    assert sim[-1]["samples_seen"] < 5 * 4 * 4 * 8  # some node sat a round out
    assert sim[-1]["round"] == 7


REMEDIES = {
    # a one-way graph (one peer a round) with the correction that tracks the mean update
    "one_peer_tracking": ["topology.kind=one_peer_exponential", "correction=tracking"],
    # Base-(k+1) pairs, two of its matrices a round, nodes weighted by their rows, AdamW's
    # second moments mixed too, a link down now and then
    "base_rows_moments_faults": [
        "topology.kind=base",
        "gossip_steps=2",
        "weighting=rows",
        "second_moment=mixed",
        "partition.kind=dirichlet",
        "faults.link_drop=0.3",
    ],
    # relay along the ring's spanning tree, row counts relayed, 2 gossip-only rounds after
    "relay_rows": [
        "exchange=relay",
        "weighting=rows",
        "partition.kind=dirichlet",
        "finish_rounds=2",
    ],
}


@pytest.mark.multiprocess
@pytest.mark.parametrize("name", sorted(REMEDIES))
def test_dist_matches_simulator_with_the_remedies_against_skew(
    name, tiny_model_dir, tiny_csv, tmp_path
):
    sim, _ = same_in_both_runtimes(tiny_model_dir, tiny_csv, tmp_path, REMEDIES[name])
    assert sim[-1]["bytes_sent"] > 0


@pytest.mark.multiprocess
def test_dist_matches_simulator_with_privacy_encryption_and_mixed_gradients(
    tiny_model_dir, tiny_csv, tmp_path
):
    """DP-SGD draws its Poisson batches and noise from each node's own seeded streams, and
    encrypted frames decrypt to the same bytes: the two runtimes agree to 1e-5. The nodes mix
    each step's noisy gradient (exchange=gradients on Base-2, its period's matchings every
    round, size-weighted), so they are one model after every round. (Plain gossip under DP
    and encryption: the crash-recovery test below.)"""
    extra = [
        "privacy.epsilon=4",
        *encrypted(tmp_path),
        "exchange=gradients",
        "topology.kind=base",
        "gossip_steps=period",
        "local_steps=1",
        "weighting=rows",
        "partition.kind=dirichlet",
    ]
    sim, dist_out = same_in_both_runtimes(tiny_model_dir, tiny_csv, tmp_path, extra)
    assert 3.5 < sim[-1]["epsilon"] <= 4.0 and len(sim[-1]["epsilon_nodes"]) == 4
    summary = json.loads((dist_out / "summary.json").read_text())["methods"]["dec-lora"]
    assert summary["messages_refused"] == 0 and summary["delta"] == 1e-4
    for r in sim:
        assert max(r["consensus_a"], r["consensus_b"], r["consensus_ab"]) < 1e-6, r


@pytest.mark.multiprocess
def test_crash_recovery_under_dp_and_encryption_matches_the_simulator(
    tiny_model_dir, tiny_csv, tmp_path
):
    """A restarted node resumes its Poisson sampler, its noise stream and its epsilon from
    the checkpoint, under a new run id (so a new encryption key): the same run as the
    simulator's, epsilon included. (It holds the plain crash's checks too: the node died in
    round 3, every node resumed after round 2, the metrics are the uninterrupted run's.)"""
    extra = ["privacy.noise_multiplier=1.0", *encrypted(tmp_path), "checkpoint_every=1"]
    sim_out, out = tmp_path / "sim", tmp_path / "dist"
    run_sim([*base_args(tiny_model_dir, tiny_csv, sim_out), *extra])
    proc = faulty_launch([*base_args(tiny_model_dir, tiny_csv, out), *extra], "crash=1@3", 1)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / ".crashed_node1_round3").exists()
    assert re.search(r"resuming after round 2 ", proc.stdout), proc.stdout
    sim = records(sim_out)
    assert_same_metrics(sim, records(out))
    assert sim[-1]["epsilon"] > sim[0]["epsilon"] > 0


@pytest.mark.multiprocess
def test_corrupted_and_forged_messages_are_refused_and_the_run_completes(
    tiny_model_dir, tiny_csv, tmp_path
):
    key = write_key(tmp_path / "key")
    out = tmp_path / "dist"
    args = [*base_args(tiny_model_dir, tiny_csv, out), f"security.key_file={key}"]
    proc = faulty_launch(args, "nan=1@2,short=1@3,forge=3@4,flip=2@5,drop=0@1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    # each refusal is one write (rounds.say), so lines from the 4 processes do not interleave
    refusals = [x for x in proc.stderr.splitlines() if "refused the message" in x]
    assert len(refusals) == 10, refusals  # each bad sender has two neighbours on the ring
    expect = {
        (0, 1): "not a declora v2 frame",
        (1, 2): "non-finite",
        (1, 3): "bytes, expected",
        (3, 4): "HMAC",
        (2, 5): "HMAC",
    }
    for (sender, round_), reason in expect.items():
        hits = [x for x in refusals if f"from node {sender} at round {round_}:" in x]
        assert len(hits) == 2 and all(reason in x for x in hits), hits
    summary = json.loads((out / "summary.json").read_text())
    assert summary["methods"]["dec-lora"]["messages_refused"] == 10
    assert np.isfinite(summary["methods"]["dec-lora"]["loss"])


@pytest.mark.multiprocess
def test_two_torchrun_launchers_like_two_machines(
    tiny_model_dir, tiny_csv, tmp_path, sim_reference
):
    """The README's several-machine command: machine g hosts nodes 2g and 2g+1."""
    out = tmp_path / "dist"
    procs = torchrun_agents(base_args(tiny_model_dir, tiny_csv, out), [ROOT, ROOT])
    assert [p.returncode for p in procs] == [0, 0], procs[0].stderr[-3000:]
    assert_same_metrics(sim_reference["records"], records(out))


@pytest.mark.multiprocess
def test_dist_matches_simulator_on_a_tiny_llama(tiny_llama_dir, tiny_csv, tmp_path):
    """task causal_lm (classification as generation) in both runtimes: same metrics. On a
    4-bit base under the product rule where bitsandbytes is installed (the test extras: one
    launch covers the quantized path and the plain one's; each costs about 40 s)."""
    quantized = importlib.util.find_spec("bitsandbytes") is not None
    extra = ["model.quantize=4bit", "consensus=product"] if quantized else []
    args = [*tiny_llama_args(tiny_llama_dir, tiny_csv, tmp_path / "x"), "rounds=3", "eval_every=2"]
    args += ["methods=[dec-lora]", *extra]
    sim_out, dist_out = tmp_path / "sim", tmp_path / "dist"
    run_sim([*args, f"out={sim_out}"])
    proc = launch([*args, f"out={dist_out}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_metrics(records(sim_out), records(dist_out))
    assert (dist_out / "adapters" / "dec-lora" / "node_3" / "adapter_config.json").is_file()


def test_the_fingerprint_covers_the_shared_config_only(tmp_path):
    from declora.protocol.handshake import fingerprint

    key, other = tmp_path / "a.key", tmp_path / "b.key"
    base = fingerprint(load_config(None, ["out=runs/a"]))
    assert fingerprint(load_config(None, ["out=/elsewhere"])) == base  # site-local
    assert fingerprint(load_config(None, ["lr=0.5"])) != base
    assert fingerprint(load_config(None, ["lora.rank=4"])) != base
    with_key = fingerprint(load_config(None, [f"security.key_file={key}"]))
    assert with_key != base  # whether there is a key is shared; where it lies is not
    assert fingerprint(load_config(None, [f"security.key_file={other}"])) == with_key
    sites = ["data.labels=[a,b]"]  # per-site files: each machine names where its files are
    here = fingerprint(load_config(None, [*sites, "data.path=/mnt/a/site_{node}.csv"]))
    assert fingerprint(load_config(None, [*sites, "data.path=s/{node}.json"])) == here


def test_the_first_differing_key_is_named():
    from declora.protocol.handshake import key_digests

    names, mine = key_digests(load_config(None, []))
    _, theirs = key_digests(load_config(None, ["lora.alpha=4", "rounds=3"]))
    differ = [
        n for k, n in enumerate(names) if mine[4 * k : 4 * k + 4] != theirs[4 * k : 4 * k + 4]
    ]
    assert differ == ["rounds", "lora.alpha"] and len(mine) == 4 * len(names)
