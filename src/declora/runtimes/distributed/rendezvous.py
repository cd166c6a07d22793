"""Joining a distributed run: where this process computes (its GPU or the CPU), torchrun's
rendezvous store, one backend for every process, the process group, and the start-up offers
moved in one all_gather (checked by :mod:`declora.protocol.handshake`)."""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist

from declora.config import Config, ConfigError
from declora.learning.devices import Placement, place

STARTUP_S = 900.0  # seconds every process may take to load model and data before the first round


def placement(cfg: Config) -> Placement:
    """This process's device and backend (:func:`declora.learning.devices.place`): torchrun's
    ``LOCAL_RANK`` among ``LOCAL_WORLD_SIZE`` processes on this machine."""
    local = int(os.environ.get("LOCAL_RANK", 0))
    return place(cfg.device, local, int(os.environ.get("LOCAL_WORLD_SIZE", 1)))


def rendezvous_store(rank: int, world: int, timeout: timedelta) -> dist.Store:
    """torchrun's store, under a prefix of its own for each restart.

    torchrun keeps one store across restarts (``--max-restarts``); without a fresh prefix a
    restarted process would read the dead processes' addresses back and fail to connect.
    """
    if "MASTER_ADDR" not in os.environ:
        raise ConfigError("declora worker runs under torchrun (on one machine: declora launch)")
    host, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    hosted_by_agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(
        host, port, world, is_master=rank == 0 and not hosted_by_agent, timeout=timeout
    )
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return dist.PrefixStore(f"declora/attempt_{attempt}/", store)


def connect(cfg: Config, rank: int, world: int, where: Placement) -> tuple[Placement, dist.Store]:
    """Join the process group; the placement it runs under (:func:`agree_backend`) and the
    run's store (where nodes that stop say why: :mod:`.stops`)."""
    # collectives get room for the slowest machine to load; exchanges wait peer_timeout only
    startup = timedelta(seconds=max(cfg.peer_timeout, STARTUP_S))
    store = rendezvous_store(rank, world, startup)
    where = agree_backend(store, rank, world, where)
    if where.device.type == "cuda":
        torch.cuda.set_device(where.device)
    dist.init_process_group(
        where.backend, store=store, rank=rank, world_size=world, timeout=startup
    )
    return where, store


def agree_backend(store: dist.Store, rank: int, world: int, where: Placement) -> Placement:
    """One backend for every process of the run: NCCL only if every machine allows it (each
    process has a GPU of its own there); a process on the CPU or sharing a GPU anywhere puts
    the whole run on gloo. Each process says what its machine allows through the rendezvous
    store, before the group exists."""
    votes = dist.PrefixStore("placement/", store)
    votes.set(str(rank), where.backend)
    if all(votes.get(str(r)) == b"nccl" for r in range(world)):
        return where
    return Placement(where.device, "gloo")


def exchange_offers(mine: bytes, world: int, device: torch.device) -> list[bytes]:
    """Every node's start-up offer, in node order: one all_gather (also the first collective,
    so every process is up before the first exchange)."""
    local = torch.frombuffer(bytearray(mine), dtype=torch.uint8).to(device)
    bucket = [torch.empty_like(local) for _ in range(world)]
    dist.all_gather(bucket, local)
    return [b.cpu().numpy().tobytes() for b in bucket]
