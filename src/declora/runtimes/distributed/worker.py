"""One torchrun process: node ``RANK`` of a Dec-LoRA run, talking only to its graph neighbours.

Process rank r is node r. It loads only its own rows (the partition is computed from the seed
like every other process, or its own file is read), joins the process group
(:mod:`~declora.runtimes.distributed.rendezvous`), agrees on the start with every other
process (:mod:`declora.protocol.handshake`), then plays the same rounds as the simulator
(:func:`declora.harness.runner.play_rounds`) over point-to-point torch.distributed
(:mod:`~declora.runtimes.distributed.p2p`): round t's plan is drawn from (seed, t), so every
process agrees on what is down without talking; on evaluation rounds the states (or, with
per-site files, the counts) go to rank 0, which writes the run's outputs; every
``checkpoint_every`` rounds each node writes its checkpoint
(:mod:`declora.harness.checkpoint`)."""

from __future__ import annotations

import contextlib
import os
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import torch.distributed as dist

from declora.algorithms.methods import METHODS
from declora.config import Config, ConfigError
from declora.harness import checkpoint
from declora.harness.loggers import open_loggers
from declora.harness.outputs import (
    create_dir,
    describe_run,
    finish_dist,
    write_run_files,
    write_site,
)
from declora.harness.progress import Lines, Quiet
from declora.harness.releases import Releases
from declora.harness.report import RunLog
from declora.harness.runner import play_rounds, resume
from declora.harness.session import Session, party_for, prepare, read_key
from declora.learning.adapters import ModelError
from declora.learning.devices import CPU, Placement
from declora.learning.sources import DataError
from declora.protocol import handshake
from declora.protocol.rounds import Transport, say
from declora.runtimes.distributed.launcher import check_launchable, check_out_dir
from declora.runtimes.distributed.p2p import P2PTransport
from declora.runtimes.distributed.rendezvous import connect, exchange_offers, placement
from declora.runtimes.distributed.stops import Stops

STARTUP_ERRORS = (ConfigError, DataError, ModelError)  # a node's own input: told to all


def run_worker(cfg: Config, echo=print, wrap=None) -> None:
    """The body of one torchrun process: node ``RANK`` of a Dec-LoRA run. ``wrap`` (tests)
    puts a transport around the point-to-point one."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    check_launchable(cfg, world)
    fresh = rank == 0 and not check_out_dir(cfg)
    out = Path(cfg.out)
    key, where = None, Placement(CPU, "gloo")
    root = out / "checkpoints"
    try:
        key = read_key(cfg)
        where = placement(cfg)
        s = prepare(cfg, rank, where.device, key=key)  # this node's rows (or own file) only
        mac = key.checkpoint if key else None
        store = checkpoint.Store(root, handshake.fingerprint(cfg), checkpoint.keep_for(world), mac)
        have = held_rounds(store, rank, s) if cfg.checkpoint_every > 0 else []
    except STARTUP_ERRORS as err:  # every process is told, then all stop
        tell_failure(cfg, rank, world, where, key, err)
        raise
    where, store_ = connect(cfg, rank, world, where)
    stops = Stops(store_, rank, world)  # why the run stops, as each node tells it
    agreed = agree_on_start(cfg, rank, world, where, key, have, rows=s.node_rows[rank])
    stops.on_sigterm(machine_nodes(rank))
    start = agreed.round
    if fresh:  # every node has started: only now is anything written
        create_dir(out)
        write_run_files(s, out)
    warn = site_log(out, rank, agreed)
    rows = list(agreed.rows) if cfg.data.per_site else None  # each site knows only its own
    party = party_for(s, METHODS["dec-lora"], [rank], agreed.run, warn, node_rows=rows)
    if cfg.privacy.enabled:  # the site's record of what it released, ahead of checkpoints
        party = replace(party, release=Releases(checkpoint.node_dir(root, rank), party.nodes[0]))
    counters = resume(party, store, start) if start else None
    transport = P2PTransport(
        where.wire, cfg.peer_timeout, key, cfg.security.encrypt, agreed.run, stops
    )
    wrapped: Transport = wrap(transport) if wrap else transport
    log = open_log(s, out, start, echo) if rank == 0 else None
    progress = Lines(party.total_rounds, echo) if rank == 0 else Quiet()
    played = play_rounds(s, party, wrapped, log, progress, start, store, counters)
    if not cfg.gather:  # per-site evaluation: each site keeps its own adapter and figures
        write_site(s, out, rank, party.nodes[0].state(), played.own_test[rank])
    if rank == 0:
        runtime = {"processes": world, "backend": where.backend, "device": str(where.device)}
        finish_dist(s, out, log, played, runtime, echo)
        log.close()
    dist.destroy_process_group()


def tell_failure(cfg: Config, rank: int, world: int, where, key, err: Exception) -> None:
    """Tell every node why this one cannot start: what is wrong, never a row's text or a
    label's value (DataError.public); the details stay in this site's own output, which
    says its own error (exit 2)."""
    where, _ = connect(cfg, rank, world, where)
    with contextlib.suppress(handshake.StartRefused):
        failure = getattr(err, "public", f"{err}")
        agree_on_start(cfg, rank, world, where, key, [], failure=failure)
    leave()


def machine_nodes(rank: int) -> list[int]:
    """The nodes this machine's torchrun agent runs (its processes hold consecutive ranks)."""
    local, size = int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    return list(range(rank - local, rank - local + size))


def held_rounds(store: checkpoint.Store, rank: int, s: Session) -> list[int]:
    """The rounds this node holds an intact checkpoint of, every value within the range a
    node of this run takes (each refused one named); checkpoint paths a save would fail on
    are one ConfigError line."""
    checkpoint.check_paths(store.root, rank)
    probe = party_for(s, METHODS["dec-lora"], [rank]).nodes[0]  # a fresh node, never trained
    shapes = store.shapes_of(s.init)
    return checkpoint.good_rounds(
        store.root, rank, store.fingerprint, shapes, say, store.key, probe
    )


def agree_on_start(
    cfg: Config,
    rank: int,
    world: int,
    where: Placement,
    key: bytes | None,
    have: list[int],
    failure: str = "",
    rows: int = 0,
) -> handshake.Start:
    """Every node's start-up offer, moved and checked (:mod:`declora.protocol.handshake`)."""
    nonce = os.urandom(handshake.NONCE_BYTES)
    mine = handshake.offer(cfg, nonce, have, rank, key, failure, rows)
    offers = exchange_offers(mine, world, where.wire)
    try:
        return handshake.agree(cfg, offers, rank, key, say)
    except handshake.StartRefused:
        leave()  # every node refuses the same offers: no collective follows
        raise


def leave() -> None:
    """Destroy the process group where no collective can follow (a refused start). A process
    that exits with gloo's threads alive can abort at exit ("terminate called without an active
    exception", pytorch/pytorch#190489), which torchrun reports as a failed run (exit 1) in
    place of the refusal's exit 2."""
    if dist.is_initialized():
        dist.destroy_process_group()


def open_log(s, out: Path, start: int, echo) -> RunLog:
    """Rank 0's metrics log and loggers, after the run's opening lines; on a resume, the
    records after the resumed round are dropped (and replaced in TensorBoard)."""
    for line in describe_run(s, out):
        echo(line)
    log = RunLog(out, open_loggers(s.cfg, out, resumed=start))
    if log.path.exists():
        log.keep_until(start)
    if start:
        echo(f"resuming after round {start} (the newest checkpoint every node holds)")
    log.start("dec-lora")
    return log


def site_log(out: Path, node: int, agreed: handshake.Start):
    """What the node says (refusals) goes to stderr and to its own out/node_<i>/log.txt,
    which opens with the run it joined."""
    path = out / f"node_{node}" / "log.txt"
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(line: str) -> None:
        with path.open("a", encoding="utf-8") as f:
            f.write(f"{datetime.now():%Y-%m-%d %H:%M:%S} {line}\n")

    write(f"node {node} joined run {agreed.run.hex()} after round {agreed.round}")

    def warn(line: str) -> None:
        say(line)
        write(line)

    return warn
