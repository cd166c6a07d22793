"""Where a run computes: ``device=auto|cpu|cuda|cuda:N`` and, under launch, which backend each
process exchanges over. The CUDA queries are stubbed (this machine has no GPU); what runs on
the CPU is checked for real: a node's tensors, what it sends, and what a checkpoint holds."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from declora.algorithms.methods import METHODS
from declora.cli import main
from declora.config import ConfigError, load_config
from declora.harness import session
from declora.learning import devices
from declora.learning.devices import CPU, Placement, choose, place
from declora.learning.train import train_steps
from declora.protocol import handshake
from declora.runtimes.distributed import rendezvous

CUDA = lambda i: torch.device("cuda", i)  # noqa: E731


@pytest.mark.parametrize(
    ("spec", "gpus", "want"),
    [
        ("auto", 0, CPU),
        ("auto", 2, CUDA(0)),
        ("cpu", 2, CPU),
        ("cuda", 1, CUDA(0)),
        ("cuda:1", 2, CUDA(1)),
    ],
)
def test_choose(spec, gpus, want):
    assert choose(spec, gpus) == want


@pytest.mark.parametrize(
    ("spec", "gpus", "message"),
    [
        ("cuda", 0, "device=cuda: no CUDA device is visible here; use device=cpu or auto"),
        ("cuda:0", 0, "device=cuda:0: no CUDA device is visible here; use device=cpu or auto"),
        ("cuda:2", 2, "device=cuda:2: only 2 CUDA device(s) are visible (cuda:0 to cuda:1)"),
        ("gpu", 1, "device=gpu: choose auto, cpu, cuda or cuda:N"),
    ],
)
def test_choose_refuses_a_gpu_that_is_not_there(spec, gpus, message):
    with pytest.raises(ConfigError) as err:
        choose(spec, gpus)
    assert str(err.value) == message


@pytest.mark.parametrize(
    ("spec", "local", "world", "gpus", "want"),
    [
        ("auto", 3, 4, 0, Placement(CPU, "gloo")),  # no GPU: every process on the CPU
        ("cpu", 1, 4, 4, Placement(CPU, "gloo")),
        ("auto", 3, 4, 4, Placement(CUDA(3), "nccl")),  # a GPU each
        ("cuda", 2, 4, 8, Placement(CUDA(2), "nccl")),
        ("auto", 3, 4, 2, Placement(CUDA(1), "gloo")),  # 4 processes share 2 GPUs
        ("auto", 1, 2, 1, Placement(CUDA(0), "gloo")),  # 2 processes share one GPU
        ("auto", 0, 1, 1, Placement(CUDA(0), "nccl")),
        ("cuda:1", 0, 2, 2, Placement(CUDA(1), "gloo")),  # all on one named GPU
        ("cuda:1", 0, 1, 2, Placement(CUDA(1), "nccl")),
    ],
)
def test_place(spec, local, world, gpus, want):
    assert place(spec, local, world, gpus) == want


def test_exchanged_buffers_live_where_the_backend_reads_them():
    assert Placement(CUDA(1), "nccl").wire == CUDA(1)
    assert Placement(CUDA(1), "gloo").wire == CPU  # gloo's point-to-point runs on the CPU
    assert Placement(CPU, "gloo").wire == CPU


def test_a_launched_process_reads_its_local_rank(monkeypatch):
    monkeypatch.setattr(devices, "cuda_count", lambda: 2)
    monkeypatch.setenv("LOCAL_RANK", "3")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert rendezvous.placement(load_config(None, [])) == Placement(CUDA(1), "gloo")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert rendezvous.placement(load_config(None, [])) == Placement(CUDA(1), "nccl")


def test_auto_finds_the_stubbed_gpu(monkeypatch):
    monkeypatch.setattr(devices, "cuda_count", lambda: 1)
    assert choose("auto") == CUDA(0)
    monkeypatch.setattr(devices, "cuda_count", lambda: 0)
    assert choose("auto") == CPU


def test_device_is_a_site_local_key():
    """Sites with and without a GPU may run one job: the device is not in the fingerprint."""
    a = load_config(None, ["device=cpu"])
    b = load_config(None, ["device=cuda:1"])
    assert handshake.fingerprint(a) == handshake.fingerprint(b)
    assert handshake.fingerprint(a) != handshake.fingerprint(load_config(None, ["precision=bf16"]))


@pytest.mark.parametrize("command", ["run", "launch"])
def test_a_missing_gpu_is_one_line(tiny_overrides, tmp_path, capsys, command):
    out = tmp_path / "never"
    args = [command, *tiny_overrides, f"out={out}", "device=cuda"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert (
        err
        == "declora: error: device=cuda: no CUDA device is visible here; use device=cpu or auto\n"
    )
    assert not out.exists()


def test_a_bad_device_name_is_refused_by_the_config():
    with pytest.raises(ConfigError, match="device"):
        load_config(None, ["device=gpu0"])


def test_nodes_train_on_the_device_and_send_cpu_tensors(tiny_overrides):
    s = session.prepare(load_config(None, [*tiny_overrides, "device=cpu"]))
    assert s.device == CPU and devices.device_of(s.model) == CPU
    assert all(v.device == CPU for v in s.init.values())
    node = session.party_for(s, METHODS["local"]).nodes[0]
    assert node.device == CPU and node.cuda_rng is None  # dropout draws from its CPU stream
    train_steps(s.model, node, 1, s.collate)
    sent = node.state()
    assert all(v.device == CPU and not v.requires_grad for v in sent.values())


def test_batches_move_to_the_device_and_other_entries_stay():
    batch = {"input_ids": torch.ones(2, 3, dtype=torch.long), "n_choices": 2}
    moved = devices.to_device(batch, torch.device("meta"))
    assert moved["input_ids"].device.type == "meta" and moved["n_choices"] == 2
    assert devices.to_device(batch, CPU)["input_ids"] is batch["input_ids"]  # no copy


def test_a_plain_run_needs_no_optional_package():
    """A GPU machine may lack cryptography, scipy, optuna and opacus: a run that encrypts
    nothing, runs one seed and no DP must not import them."""
    code = (
        "import sys, declora.cli, declora.runtimes.sim, declora.runtimes.distributed.worker\n"
        "print(sorted(m for m in ('cryptography', 'scipy', 'optuna', 'opacus') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize(("other", "want"), [("nccl", "nccl"), ("gloo", "gloo")])
def test_one_process_without_nccl_puts_the_whole_run_on_gloo(other, want):
    """Machines decide alone what they allow; the run needs one backend: process 1 (another
    machine, on the CPU or sharing a GPU) says gloo, so process 0 with a GPU of its own joins
    over gloo too, keeping its GPU for compute and its buffers on the CPU."""
    import torch.distributed as td

    store = td.HashStore()
    td.PrefixStore("placement/", store).set("1", other)
    got = rendezvous.agree_backend(store, 0, 2, Placement(CUDA(0), "nccl"))
    assert got == Placement(CUDA(0), want)
    assert got.wire == (CUDA(0) if want == "nccl" else CPU)
