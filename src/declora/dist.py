"""torch.distributed runtime: one OS process per node, talking only to its graph neighbours.

torchrun starts the processes (``declora launch`` on one machine; the README gives the command
for several); process rank r is node r. A process loads the dataset, computes the partition from
the seed like every other process, and keeps only its own rows. Round t on node i:

1. the round's plan (:mod:`declora.faults`): W on the surviving graph and who sits out, drawn
   from (seed, t) so every process agrees without talking;
2. ``local_steps`` steps on its own rows (none if it sits out);
3. with each live neighbour, point-to-point ``batch_isend_irecv``: first the frame lengths, then
   the frames (:mod:`declora.wire`: the Exchange's payload, sealed with a checksum and an
   optional HMAC). Each received frame is checked; a refused one is logged and its weight goes
   to the node itself. Then the node mixes with :meth:`Exchange.incoming`, as the simulator does;
4. on eval rounds the states are gathered to rank 0 (evaluation and outputs only: the training
   itself never goes through a collective) and rank 0 writes the simulator's metrics record;
5. every ``checkpoint_every`` rounds each node writes its checkpoint (:mod:`declora.checkpoint`).

A start (or a torchrun restart) resumes from the newest round that every node has a checkpoint
for. A neighbour that does not answer within ``peer_timeout`` seconds fails the round with a
:class:`PeerError` naming it.

Test hooks (not for users): ``DECLORA_DEBUG`` = comma-separated ``ACTION=RANK@ROUND``, where
ACTION is ``crash`` (exit after that round's checkpoint, once: a marker file in the checkpoint
folder stops the restarted process from crashing again), ``hang`` (sleep past peer_timeout
before the exchange), ``nan`` / ``short`` (send a payload holding a NaN / 4 bytes short, sealed
so that only the content checks catch it), ``flip`` (flip a payload byte after sealing) or
``forge`` (seal with a wrong key).
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from declora import checkpoint, faults, wire
from declora import topology as topo
from declora.adapters import State, flatten, numel, unflatten
from declora.config import Config, ConfigError, dump_config, load_config
from declora.gossip import Exchange, row_weights
from declora.metrics import RunLog
from declora.sim import (
    describe_run,
    finish_method,
    is_eval_round,
    prepare,
    round_record,
    write_run_files,
    write_summary,
)
from declora.train import Node, local_steps

STARTUP_S = 900.0  # seconds every process may take to load model and data before the first round


class PeerError(RuntimeError):
    """A neighbour did not answer in time (or its connection broke); names the neighbour."""


def backend_and_device() -> tuple[str, torch.device]:
    """The one place that picks the transport: NCCL when every process on this machine gets a
    GPU of its own (NCCL refuses two ranks on one GPU), gloo on the CPU otherwise.

    Training stays where the engine runs it (CPU today); only the exchanged buffers move.
    """
    local = int(os.environ.get("LOCAL_RANK", 0))
    per_machine = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    if torch.cuda.is_available() and torch.cuda.device_count() >= per_machine:
        torch.cuda.set_device(local)
        return "nccl", torch.device("cuda", local)
    return "gloo", torch.device("cpu")


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


def _reason(err: BaseException) -> str:
    """First line of a backend error, without gloo's [file:line] prefix."""
    line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return re.sub(r"^\[[^\]]*\]\s*", "", line)


@dataclass
class Link:
    """Moves frames to and from graph neighbours with point-to-point operations."""

    device: torch.device
    timeout: float  # seconds
    max_frame: int  # bytes; a neighbour announcing more is refused before allocation

    def wait(self, works: list, peers: list[int], round_: int) -> None:
        deadline = time.monotonic() + self.timeout
        # gloo returns one request per operation; NCCL may coalesce them into one
        named = zip(works, peers) if len(works) == len(peers) else [(w, None) for w in works]
        for work, peer in named:
            left = timedelta(seconds=max(deadline - time.monotonic(), 1e-3))
            try:
                work.wait(timeout=left)
            except RuntimeError as err:
                who = f"node {peer}" if peer is not None else f"one of nodes {sorted(set(peers))}"
                raise PeerError(
                    f"round {round_}: {who} did not answer within {self.timeout:g} s "
                    f"(peer_timeout): {_reason(err)}"
                ) from None

    def swap(self, peers: list[int], frame: bytes, round_: int) -> dict[int, bytes | str]:
        """Send ``frame`` to every peer and receive one frame from each.

        Lengths go first (one int64 each way), then the bytes, as frames may differ in size.
        Returns peer -> frame, or peer -> reason when its announced length is refused.
        """
        dev = self.device
        n_out = torch.tensor([len(frame)], dtype=torch.int64, device=dev)
        n_in = {j: torch.zeros(1, dtype=torch.int64, device=dev) for j in peers}
        ops = [dist.P2POp(dist.isend, n_out, j) for j in peers]
        ops += [dist.P2POp(dist.irecv, n_in[j], j) for j in peers]
        self.wait(dist.batch_isend_irecv(ops), peers + peers, round_)
        out = torch.frombuffer(bytearray(frame), dtype=torch.uint8).to(dev)
        bufs, refused = {}, {}
        for j in peers:
            n = int(n_in[j].item())
            if wire.HEADER.size <= n <= self.max_frame:
                bufs[j] = torch.empty(n, dtype=torch.uint8, device=dev)
            else:
                refused[j] = f"announced a frame of {n} bytes (at most {self.max_frame})"
        ops = [dist.P2POp(dist.isend, out, j) for j in peers]
        ops += [dist.P2POp(dist.irecv, b, j) for j, b in bufs.items()]
        self.wait(dist.batch_isend_irecv(ops), peers + list(bufs), round_)
        got: dict[int, bytes | str] = {j: b.cpu().numpy().tobytes() for j, b in bufs.items()}
        return {**got, **refused}


@dataclass
class Debug:
    """Fault injection for the tests (``DECLORA_DEBUG``; see the module docstring)."""

    actions: dict[str, tuple[int, int]] = field(default_factory=dict)

    @classmethod
    def from_env(cls) -> Debug:
        actions = {}
        for item in filter(None, os.environ.get("DECLORA_DEBUG", "").split(",")):
            name, _, at = item.partition("=")
            rank, _, round_ = at.partition("@")
            actions[name.strip()] = (int(rank), int(round_))
        return cls(actions)

    def on(self, action: str, rank: int, round_: int) -> bool:
        return self.actions.get(action) == (rank, round_)


def say(line: str) -> None:
    """One line to stderr in a single write, so that lines from several processes never interleave."""
    os.write(2, (line + "\n").encode())


def exchange_step(
    node: Node,
    ex: Exchange,
    W: np.ndarray,
    round_: int,
    link: Link,
    key: bytes | None,
    debug: Debug | None = None,
    log=None,
) -> tuple[int, int]:
    """Node's exchange of round ``round_`` with its live neighbours in ``W``.

    Returns (payload bytes sent, messages refused). Bytes count the payload once per neighbour,
    as the simulator does; the frame adds ``wire.HEADER.size`` (+ ``wire.TAG_SIZE``) to each.
    """
    i, debug = node.node_id, debug or Debug()
    log = log or say
    weights = row_weights(W, i)
    peers = sorted(j for j in weights if j != i)
    if not peers:  # sits the round out, or every link is down: nothing sent, nothing mixed
        return 0, 0
    dtype = next(iter(ex.template.values())).dtype
    sizes = [v.numel() for v in ex.template.values()]
    payload = ex.outgoing(node.state(), round_)
    sent = len(payload) * len(peers)
    if debug.on("nan", i, round_):
        payload = payload[:-4] + np.float32("nan").tobytes()
    if debug.on("short", i, round_):
        payload = payload[:-4]
    forged = b"wrong key, wrong key, wrong key!" if debug.on("forge", i, round_) else key
    frame = wire.seal(payload, i, round_, dtype, forged)
    if debug.on("flip", i, round_):
        flipped = bytearray(frame)
        flipped[wire.HEADER.size + len(payload) // 2] ^= 0xFF
        frame = bytes(flipped)
    received, refused = {}, 0
    for j, got in sorted(link.swap(peers, frame, round_).items()):
        try:
            if isinstance(got, str):
                raise wire.Refused(got)
            body = wire.open_frame(got, j, round_, dtype, key)
            wire.check_payload(body, sizes)
            received[j] = body
        except wire.Refused as why:
            log(f"declora: node {i} refused the message from node {j} at round {round_}: {why}")
            weights[i] += weights.pop(j)  # the refused neighbour's weight goes to the node itself
            refused += 1
    node.set_state(ex.incoming(node.state(), received, weights))
    return sent, refused


def check_out_dir(cfg: Config) -> bool:
    """Whether ``out`` holds an unfinished run of this very config (resume); False when the
    folder is new or empty. Anything else is refused, so no run overwrites another."""
    if cfg.out is None:
        raise ConfigError("out= is required: every process must write to the same folder")
    out = Path(cfg.out)
    if not out.exists() or not any(out.iterdir()):
        return False
    if (out / "summary.json").exists():
        raise ConfigError(f"out={out} holds a finished run; choose an empty or new folder")
    saved = out / "config.yaml"
    if not saved.is_file() or saved.read_text() != dump_config(cfg):
        raise ConfigError(f"out={out} holds files of another run; choose an empty or new folder")
    return True


def agree_on_start(root: Path, rank: int, world: int, device: torch.device, enabled: bool) -> int:
    """The newest round that every node has a checkpoint for (0 = start afresh).

    Each node offers its newest checkpoint rounds (a control value, not an adapter) through one
    all_gather; also the first collective, so every process is up before the first exchange.
    """
    have = checkpoint.rounds(root, rank)[-checkpoint.KEEP :] if enabled else []
    mine = torch.full((checkpoint.KEEP,), -1, dtype=torch.int64)
    mine[: len(have)] = torch.tensor(have, dtype=torch.int64)
    offers = [torch.empty_like(mine, device=device) for _ in range(world)]
    dist.all_gather(offers, mine.to(device))
    common = set.intersection(*(set(o.cpu().tolist()) for o in offers)) - {-1}
    return max(common, default=0)


def _exchange_state(ex: Exchange) -> State:
    """CHOCO's public copies (Exchange.public); empty for direct exchange."""
    return {f"public.{j}": v for j, v in getattr(ex, "public", {}).items()}


def _restore_exchange(ex: Exchange, state: State, payload_size: int) -> None:
    for key, value in state.items():
        ex.public[int(key.split(".", 1)[1])] = value.clone()
    ex.last_payload_size = payload_size


def gather_to_root(node: Node, extra: list[float], link: Link, round_: int):
    """Rank 0 gets every node's adapter and a few scalars (evaluation and outputs only).

    float64 holds float32 values and byte counts exactly. Returns (states, scalars (n, k)) on
    rank 0 and (None, None) elsewhere.
    """
    vec = torch.cat([flatten(node.state()).double(), torch.tensor(extra, dtype=torch.float64)])
    vec = vec.to(link.device)
    world = dist.get_world_size()
    bucket = [torch.empty_like(vec) for _ in range(world)] if dist.get_rank() == 0 else None
    work = dist.gather(vec, bucket, dst=0, async_op=True)
    link.wait([work], [0] if bucket is None else list(range(1, world)), round_)
    if bucket is None:
        return None, None
    template = node.state()  # every trainable tensor (the message may carry fewer)
    n = numel(template)
    states = [unflatten(b[:n].cpu().float(), template) for b in bucket]
    return states, np.stack([b[n:].cpu().numpy() for b in bucket])


def run_worker(cfg: Config, echo=print) -> None:
    """The body of one torchrun process: node ``RANK`` of a Dec-LoRA run."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if world != cfg.nodes:
        raise ConfigError(f"nodes={cfg.nodes}, but torchrun started {world} processes")
    if "dec-lora" not in cfg.methods:
        raise ConfigError("launch runs dec-lora only; add it to methods")
    fresh = rank == 0 and not check_out_dir(cfg)
    key = wire.read_key(cfg.security.key_file) if cfg.security.key_file else None
    out, debug = Path(cfg.out), Debug.from_env()
    backend, device = backend_and_device()
    s = prepare(cfg, node=rank)  # keeps this node's rows only
    if fresh:
        out.mkdir(parents=True, exist_ok=True)
        write_run_files(s, out)
    # collectives get room for the slowest machine to load; exchanges wait peer_timeout only
    startup = timedelta(seconds=max(cfg.peer_timeout, STARTUP_S))
    store = rendezvous_store(rank, world, startup)
    dist.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=startup)
    node = Node.create(rank, s.train, s.init, cfg.for_method("dec-lora"), stream=rank)
    ex = Exchange(rank, s.init, cfg.compression, seed=cfg.seed, consensus=cfg.consensus)
    sizes = [v.numel() for v in s.init.values()]
    link = Link(device, cfg.peer_timeout, wire.max_frame_size(sizes))
    root = out / "checkpoints"
    start = agree_on_start(root, rank, world, device, enabled=cfg.checkpoint_every > 0)
    sent, samples, refused, wall0 = 0, 0, 0, 0.0
    if start:
        counters, extra = checkpoint.load(root, node, start)
        _restore_exchange(ex, extra, counters["payload_size"])
        sent, samples, refused = counters["sent"], counters["samples"], counters["refused"]
        wall0 = counters["wall_s"]
    log = open_log(s, out, start, echo) if rank == 0 else None
    began = time.perf_counter()
    states = scalars = None
    for t in range(start + 1, cfg.rounds + 1):
        plan = faults.plan_for(cfg, s.adj, s.W, t)
        active = bool(plan.active[rank])
        loss = local_steps(s.model, node, cfg.local_steps, s.pad_id) if active else math.nan
        samples += int(plan.active.sum()) * cfg.local_steps * cfg.batch_size
        if debug.on("hang", rank, t):
            time.sleep(3 * cfg.peer_timeout)
        n_bytes, n_refused = exchange_step(node, ex, plan.W, t, link, key, debug)
        sent, refused = sent + n_bytes, refused + n_refused
        wall = wall0 + time.perf_counter() - began
        if is_eval_round(cfg, t):
            row = [loss, node.last_grad_norm, sent, ex.last_payload_size, refused]
            states, scalars = gather_to_root(node, row, link, t)
            if rank == 0:
                log_round(s, log, t, states, scalars, samples, wall, echo)
        if cfg.checkpoint_every and t % cfg.checkpoint_every == 0:
            counters = {"sent": sent, "samples": samples, "refused": refused, "wall_s": wall}
            counters["payload_size"] = ex.last_payload_size
            checkpoint.save(root, node, t, counters, _exchange_state(ex))
            if debug.on("crash", rank, t):
                marker = root / f".crashed_node{rank}_round{t}"
                if not marker.exists():
                    marker.touch()
                    os._exit(1)
    if start == cfg.rounds:  # resumed after the last round: gather the final states again
        row = [math.nan, node.last_grad_norm, sent, ex.last_payload_size, refused]
        states, scalars = gather_to_root(node, row, link, start)
    if rank == 0:
        summary = {"methods": {}, "spectral_gap": topo.spectral_gap(s.W)}
        finish_method(s, out, summary, "dec-lora", log.records[-1], states)
        summary["runtime"] = {
            "processes": world,
            "backend": backend,
            "messages_refused": int(scalars[:, 4].sum()),
        }
        write_summary(out, log, summary, echo)
    dist.destroy_process_group()


def open_log(s, out: Path, start: int, echo) -> RunLog:
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


def log_round(s, log: RunLog, t: int, states, scalars: np.ndarray, samples: int, wall, echo):
    """Rank 0: the simulator's metrics record for round t, from the gathered states."""
    losses, grads, sent = scalars[:, 0], scalars[:, 1], scalars[:, 2]
    finite = losses[np.isfinite(losses)]
    grads = grads[np.isfinite(grads)]
    rec = round_record(
        s,
        states,
        method="dec-lora",
        round=t,
        samples_seen=samples,
        train_loss=float(finite.mean()) if len(finite) else math.nan,
        grad_norm=float(grads.mean()) if len(grads) else math.nan,
        bytes_sent=int(sent.mean()),
        bytes_sent_total=int(sent.sum()),
        bytes_per_edge_round=int(scalars[:, 3].max()),
        wall_s=wall,
    )
    log.write(rec)
    echo(
        f"round {t}/{s.cfg.rounds}: accuracy {rec['accuracy']:.4f}, loss {rec['loss']:.4f}, "
        f"{rec['bytes_sent'] / 1e6:.2f} MB sent per node"
    )


def launch(
    config: str | None, overrides: list[str], nproc: int | None = None, max_restarts: int = 0
) -> int:
    """``declora launch``: check the config here, then hand over to torchrun on this machine."""
    cfg = load_config(config, overrides)
    n = nproc or cfg.nodes
    if n != cfg.nodes:
        raise ConfigError(f"--nproc {n}, but nodes={cfg.nodes}: launch runs one process per node")
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
