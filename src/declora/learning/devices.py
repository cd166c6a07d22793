"""Where a run computes (``device=auto|cpu|cuda|cuda:N``) and, for a distributed process, which
backend its exchanges use.

The round itself (mixing, compression, messages, checkpoints) always works on CPU tensors: a
node's adapter leaves the device when it is sent and comes back when the mixed one is set. Only
the model's forward and backward, the node's optimizer and evaluation run on the device.

Every CUDA query goes through :func:`cuda_count`, so the choice is tested without a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from declora.config import DEVICE, ConfigError

CPU = torch.device("cpu")


def cuda_count() -> int:
    """CUDA devices this process can see (0 without CUDA)."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def choose(spec: str, count: int | None = None) -> torch.device:
    """The device ``spec`` names: ``auto`` is the first GPU when there is one, else the CPU;
    ``cuda`` or ``cuda:N`` without that GPU is a ConfigError (one line)."""
    if not DEVICE.fullmatch(spec):
        raise ConfigError(f"device={spec}: choose auto, cpu, cuda or cuda:N")
    count = cuda_count() if count is None else count
    if spec == "cpu" or (spec == "auto" and count == 0):
        return CPU
    if count == 0:
        raise ConfigError(f"device={spec}: no CUDA device is visible here; use device=cpu or auto")
    index = int(spec.split(":")[1]) if ":" in spec else 0
    if index >= count:
        raise ConfigError(
            f"device={spec}: only {count} CUDA device(s) are visible (cuda:0 to cuda:{count - 1})"
        )
    return torch.device("cuda", index)


@dataclass(frozen=True)
class Placement:
    """One distributed process: where it computes, which backend it joins, and where the
    buffers it exchanges live (the GPU under NCCL, the CPU under gloo)."""

    device: torch.device
    backend: str

    @property
    def wire(self) -> torch.device:
        return self.device if self.backend == "nccl" else CPU


def place(spec: str, local_rank: int, local_world: int, count: int | None = None) -> Placement:
    """Process ``local_rank`` of ``local_world`` on this machine: ``auto``/``cuda`` give each
    process GPU ``local_rank mod GPUs``; ``cuda:N`` puts them all on GPU N. NCCL when every
    process has a GPU of its own (NCCL refuses two ranks on one GPU), gloo otherwise: processes
    that share a GPU, or the CPU, exchange over gloo. This is what the machine allows; the run
    takes NCCL only if every machine allows it (:func:`declora.runtimes.distributed.worker.agree_backend`)."""
    count = cuda_count() if count is None else count
    device = choose(spec, count)
    if device.type == "cpu":
        return Placement(CPU, "gloo")
    if ":" not in spec:
        device = torch.device("cuda", local_rank % count)
    own = ":" not in spec and count >= local_world or local_world == 1
    return Placement(device, "nccl" if own else "gloo")


def to_device(batch: dict, device: torch.device) -> dict:
    """A batch's tensors on ``device`` (other entries as they are); nothing is copied on the
    device they already live on."""
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def device_of(model: torch.nn.Module) -> torch.device:
    """Where ``model`` computes (its first parameter's device)."""
    return next(model.parameters()).device


def describe(device: torch.device) -> str:
    """``cpu``, or ``cuda:N (the GPU's name)``."""
    if device.type != "cuda":
        return str(device)
    return f"{device} ({torch.cuda.get_device_name(device)})"
