"""torch.distributed runtime: one OS process per node, talking only to its graph neighbours.

torchrun starts the processes (``declora launch`` on one machine; the README gives the command
for several); process rank r is node r. A process loads the dataset, computes the partition from
the seed like every other process, and keeps only its own rows. It then plays the same rounds
as the simulator (:func:`declora.harness.runner.play_rounds`) over a point-to-point transport
(:mod:`declora.runtimes.dist.p2p`): round t's plan is drawn from (seed, t), so every process agrees on what is
down without talking; on eval rounds the states go to rank 0 (evaluation and outputs only), and
every ``checkpoint_every`` rounds each node writes its checkpoint (:mod:`declora.harness.checkpoint`).

Processes start with one authenticated exchange (:func:`agree_on_start`): each offers a random
nonce, the fingerprint of the shared config and the checkpoint rounds it holds intact, with an
HMAC tag when a key is set. A wrong key or another config stops every process at once with a
line naming the node; the run id that every later message binds is the hash of all nonces (a
message recorded in an earlier run, or an earlier attempt, is refused); the run resumes from the
newest round that every node holds an intact checkpoint of, or says why it starts over.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from declora.harness import checkpoint

from declora.protocol import wire
from declora.learning.adapters import ModelError
from declora.config import Config, ConfigError, dump_config, load_config
from declora.learning.devices import CPU, Placement, choose, place
from declora.algorithms.methods import METHODS
from declora.harness.outputs import (
    create_dir,
    describe_run,
    export_site,
    finish_method,
    write_run_files,
    write_summary,
)
from declora.runtimes.dist.p2p import P2PTransport, PeerError
from declora.harness.report import RunLog, start_summary, write_json
from declora.protocol.rounds import Transport, say
from declora.harness.runner import Quiet, play_rounds, resume
from declora.algorithms.scores import from_counts
from declora.harness.session import Session, check_privacy, party_for, prepare
from declora.learning.capacity import check_sizes
from declora.learning.sources import DataError
from declora.algorithms.tensors import State

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


def check_out_dir(cfg: Config) -> bool:
    """Whether ``out`` holds an unfinished run of this very config (resume); False when the
    folder is new or empty. Anything else is refused, so no run overwrites another."""
    if cfg.out is None:
        raise ConfigError("out= is required: every process must write to the same folder")
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out={out} is a file, not a folder; choose a new folder")
    if not out.exists() or not any(out.iterdir()):
        return False
    if (out / "summary.json").exists():
        raise ConfigError(f"out={out} holds a finished run; choose an empty or new folder")
    saved = out / "config.yaml"
    if not saved.is_file() or saved.read_text() != dump_config(cfg):
        raise ConfigError(f"out={out} holds files of another run; choose an empty or new folder")
    return True


NONCE_BYTES = 16
OFFER_SLOTS = 64  # checkpoint rounds a node offers at start (the newest ones)
REASON_BYTES = 240  # why a node could not start (its own data or config), told to every node
STARTUP_ERRORS = (ConfigError, DataError, ModelError)  # a node's own input: told to all
SITE_LOCAL = ("out", "device")  # config keys each site may set for itself


def _shared(cfg: Config) -> Config:
    """The config every process must share: all of it but the site-local keys, the key
    file's path (whether there is a key counts; the secret itself never leaves) and, with
    per-site files, where each machine keeps its files."""
    key = "set" if cfg.security.key_file else None
    site_files = cfg.data.per_site  # then each machine may name its own files
    return cfg.model_copy(
        update={
            **dict.fromkeys(SITE_LOCAL),
            "security": cfg.security.model_copy(update={"key_file": key}),
            "data": cfg.data.model_copy(update={"path": "{node}"}) if site_files else cfg.data,
        }
    )


def fingerprint(cfg: Config) -> str:
    """SHA-256 of the shared config (:func:`_shared`)."""
    return hashlib.sha256(dump_config(_shared(cfg)).encode()).hexdigest()


def key_digests(cfg: Config) -> tuple[list[str], bytes]:
    """The shared config's keys (a section's fields one by one) and 4 bytes of SHA-256 of each
    value: enough to name the first key on which two processes differ."""
    names, digest = [], b""
    for top, value in _shared(cfg).model_dump(mode="json").items():
        section = isinstance(value, dict) and top in Config.model_fields and top != "per_method"
        for name, v in value.items() if section else [(None, value)]:
            names.append(top if name is None else f"{top}.{name}")
            digest += hashlib.sha256(json.dumps(v, sort_keys=True).encode()).digest()[:4]
    return names, digest


@dataclass(frozen=True)
class Start:
    """What the processes agreed on before the first round."""

    run: bytes  # run id bound into every message of this start
    round: int  # the newest round every node holds an intact checkpoint of (0: afresh)


def _offer(
    cfg: Config, nonce: bytes, have: list[int], rank: int, key: bytes | None, failure: str
) -> bytes:
    slots = (have[-OFFER_SLOTS:] + [-1] * OFFER_SLOTS)[:OFFER_SLOTS]
    print_ = bytes.fromhex(fingerprint(cfg)) + key_digests(cfg)[1]
    why = failure.encode()[:REASON_BYTES].ljust(REASON_BYTES, b"\0")
    body = nonce + print_ + struct.pack(f"<{OFFER_SLOTS}q", *slots) + why
    return body + (wire.sign(key, b"start", struct.pack("<I", rank), body) if key else wire.NO_TAG)


def _check_tags(offers: list[bytes], key: bytes, rank: int, size: int) -> None:
    """Every start-up offer's HMAC tag; a bad one names its node (or this node's key)."""
    bad = [
        j
        for j, o in enumerate(offers)
        if not wire.verify(key, o[size:], b"start", struct.pack("<I", j), o[:size])
    ]
    others = [j for j in range(len(offers)) if j != rank]
    if others and set(others) <= set(bad):
        raise PeerError(
            "the start-up message of every other node fails its HMAC tag: this node's "
            "security.key_file differs from theirs"
        )
    if bad:
        raise PeerError(
            f"node {bad[0]}'s start-up message fails its HMAC tag: it has another "
            "security.key_file (or an altered message); no round was played"
        )


def _check_configs(cfg: Config, offers: list[bytes], rank: int) -> int:
    """Every node's config fingerprint must equal this node's; a mismatch names the node and
    the first key on which they differ. Returns where the fingerprints end in an offer."""
    names, digests = key_digests(cfg)
    end = NONCE_BYTES + 32 + len(digests)
    prints = [o[NONCE_BYTES:end] for o in offers]
    differ = [j for j, fp in enumerate(prints) if fp != prints[rank]]
    if differ:
        theirs = prints[differ[0]][32:]
        first = next(
            (
                n
                for k, n in enumerate(names)
                if theirs[4 * k : 4 * k + 4] != digests[4 * k : 4 * k + 4]
            ),
            "?",
        )
        raise PeerError(
            f"node {differ[0]} runs another config (first difference: {first}; only out= and "
            "security.key_file may differ): start every node with the same config"
        )
    return end


def agree_on_start(
    cfg: Config,
    rank: int,
    world: int,
    device: torch.device,
    key: bytes | None,
    have: list[int],
    warn,
    failure: str = "",
) -> Start:
    """One all_gather of every node's offer (also the first collective, so every process is up
    before the first exchange); refuses a wrong key or another config, naming the node, and
    stops every process with the reason of a node that could not start (``failure``)."""
    mine = _offer(cfg, os.urandom(NONCE_BYTES), have, rank, key, failure)
    local = torch.frombuffer(bytearray(mine), dtype=torch.uint8).to(device)
    bucket = [torch.empty_like(local) for _ in range(world)]
    dist.all_gather(bucket, local)
    offers = [b.cpu().numpy().tobytes() for b in bucket]
    size = len(mine) - wire.TAG_SIZE
    for j, o in enumerate(offers):  # first: a node that could not start may lack the key too
        why = o[size - REASON_BYTES : size].rstrip(b"\0").decode(errors="replace")
        if why:
            raise PeerError(f"node {j} could not start: {why}")
    if key:
        _check_tags(offers, key, rank, size)
    end = _check_configs(cfg, offers, rank)
    run = hashlib.sha256(b"".join(o[:NONCE_BYTES] for o in offers)).digest()[: wire.RUN_BYTES]
    lists = [struct.unpack_from(f"<{OFFER_SLOTS}q", o, end) for o in offers]
    common = set.intersection(*(set(x) - {-1} for x in lists))
    if not common and any(x[0] != -1 for x in lists) and rank == 0:
        warn(
            "declora: no round is checkpointed intact on every node (a node's files are missing "
            "or refused, see above): starting over from round 0"
        )
    return Start(run, max(common, default=0))


class Lines:
    """Rank 0's progress: one line per evaluated round."""

    def __init__(self, rounds: int, echo):
        self.rounds, self.echo = rounds, echo

    def round_done(self, t: int) -> None:
        pass

    def evaluated(self, rec: dict) -> None:
        self.echo(
            f"round {rec['round']}/{self.rounds}: accuracy {rec['accuracy']:.4f}, "
            f"loss {rec['loss']:.4f}, {rec['bytes_sent'] / 1e6:.2f} MB sent per node"
        )


def check_world(cfg: Config) -> tuple[int, int]:
    """(rank, world) of this process; the config must run dec-lora on one process per node."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if world != cfg.nodes:
        raise ConfigError(f"nodes={cfg.nodes}, but torchrun started {world} processes")
    if cfg.seeds is not None:
        raise ConfigError(
            "seeds= runs the job once per seed under declora run; launch one seed at a time "
            "(seed=N)"
        )
    if "dec-lora" not in cfg.methods:
        raise ConfigError("launch runs dec-lora only; add it to methods")
    return rank, world


def connect(cfg: Config, rank: int, world: int, where: Placement) -> Placement:
    """Join the process group; the placement it runs under (:func:`agree_backend`)."""
    # collectives get room for the slowest machine to load; exchanges wait peer_timeout only
    startup = timedelta(seconds=max(cfg.peer_timeout, STARTUP_S))
    store = rendezvous_store(rank, world, startup)
    where = agree_backend(store, rank, world, where)
    if where.device.type == "cuda":
        torch.cuda.set_device(where.device)
    dist.init_process_group(
        where.backend, store=store, rank=rank, world_size=world, timeout=startup
    )
    return where


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


def run_worker(cfg: Config, echo=print, wrap=None) -> None:
    """The body of one torchrun process: node ``RANK`` of a Dec-LoRA run. ``wrap`` (tests)
    puts a transport around the point-to-point one."""
    rank, world = check_world(cfg)
    fresh = rank == 0 and not check_out_dir(cfg)
    out = Path(cfg.out)
    key, where = None, Placement(CPU, "gloo")
    try:
        key = wire.read_key(cfg.security.key_file) if cfg.security.key_file else None
        where = placement(cfg)
        s = prepare(cfg, rank, where.device)  # reads this node's rows (or its own file) only
    except STARTUP_ERRORS as err:  # every process is told, then all stop
        where = connect(cfg, rank, world, where)
        agree_on_start(cfg, rank, world, where.wire, key, [], say, failure=f"{err}")
        raise
    where = connect(cfg, rank, world, where)
    party = party_for(s, METHODS["dec-lora"], held=[rank])
    transport = P2PTransport(where.wire, cfg.peer_timeout, party.key, party.encrypt)
    root = out / "checkpoints"
    store = checkpoint.Store(root, fingerprint(cfg), checkpoint.keep_for(world))
    node = party.nodes[0]
    have = (
        checkpoint.good_rounds(root, rank, store.fingerprint, store.shapes(node), say)
        if cfg.checkpoint_every > 0
        else []
    )
    agreed = agree_on_start(cfg, rank, world, where.wire, party.key, have, say)
    party.run = transport.run = agreed.run
    start = agreed.round
    if fresh:  # every node has started: only now is anything written
        create_dir(out)
        write_run_files(s, out)
    if start:
        resume(party, root, start)
    wrapped: Transport = wrap(transport) if wrap else transport
    party.warn = site_log(out, rank, agreed)
    log = open_log(s, out, start, echo) if rank == 0 else None
    progress = Lines(party.total_rounds, echo) if rank == 0 else Quiet()
    states = play_rounds(s, party, wrapped, log, progress, start=start, checkpoints=store)
    if not cfg.gather:  # per-site evaluation: each site keeps its own adapter and figures
        write_site(s, out, rank, node.state(), party.own_test[rank])
    if rank == 0:
        runtime = {"processes": world, "backend": where.backend, "device": str(where.device)}
        finish(s, out, log, states, runtime, echo, party.final)
    dist.destroy_process_group()


def site_log(out: Path, node: int, agreed: Start):
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


def write_site(s: Session, out: Path, node: int, state: State, counts: np.ndarray) -> None:
    """out/node_<i>/ on this site's machine: its adapter (PEFT) and its own test figures from
    ``counts``, its scoring at the end (beside its log.txt)."""
    folder = out / f"node_{node}"
    if s.cfg.export_adapters:
        export_site(s, out, node, state)
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "site.json", {"node": node, "rows": int(counts[0]), **from_counts(counts)})


def finish(
    s: Session,
    out: Path,
    log: RunLog,
    states: list[State] | None,
    runtime: dict,
    echo,
    final: dict | None = None,
) -> None:
    """Rank 0: the summary (as the simulator writes it), adapters and curves."""
    summary = start_summary(s)
    finish_method(s, out, summary, "dec-lora", log.records[-1], states, final)
    summary["runtime"] = runtime
    write_summary(out, log, summary, echo)


def open_log(s: Session, out: Path, start: int, echo) -> RunLog:
    """Rank 0's metrics log; on a resume, the records after the resumed round are dropped."""
    for line in describe_run(s, out):
        echo(line)
    log = RunLog(out)
    if log.path.exists():
        kept = [json.loads(x) for x in log.path.read_text().splitlines() if x.strip()]
        log.records = [r for r in kept if r["round"] <= start]
        tmp = log.path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in log.records))
        os.replace(tmp, log.path)
    if start:
        echo(f"resuming after round {start} (the newest checkpoint every node holds)")
    return log


def launch(
    config: str | None, overrides: list[str], nproc: int | None = None, max_restarts: int = 0
) -> int:
    """``declora launch``: check the config here, then hand over to torchrun on this machine."""
    cfg = load_config(config, overrides)
    n = nproc or cfg.nodes
    if n != cfg.nodes:
        raise ConfigError(f"--nproc {n}, but nodes={cfg.nodes}: launch runs one process per node")
    if cfg.seeds is not None:
        raise ConfigError(
            "seeds= runs the job once per seed under declora run; launch one seed at a time "
            "(seed=N)"
        )
    if "dec-lora" not in cfg.methods:
        raise ConfigError(
            f"launch runs dec-lora; methods={cfg.methods} are simulator runs (declora run)"
        )
    extra = [] if cfg.methods == ["dec-lora"] else ["methods=[dec-lora]"]
    others = ", ".join(m for m in cfg.methods if m != "dec-lora")
    if cfg.out is None:
        extra.append(f"out=runs/{datetime.now():%Y%m%d-%H%M%S}")
    cfg = load_config(config, [*overrides, *extra])
    if cfg.security.key_file:
        wire.read_key(cfg.security.key_file)
    check_out_dir(cfg)
    check_sizes(cfg, held=1, processes=n)  # every process of this machine, before torchrun
    check_privacy(cfg)  # DP settings against each node's rows (one data file)
    choose(cfg.device)  # a GPU named that this machine does not have
    if others:
        print(f"declora: launch runs dec-lora only ({others}: see declora run)", file=sys.stderr)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={n}",
        f"--max-restarts={max_restarts}",
        "-m",
        "declora.cli",
        "worker",
        *([config] if config else []),
        *overrides,
        *extra,
    ]
    env = {"OMP_NUM_THREADS": "1", **os.environ}
    return subprocess.call(cmd, env=env)
