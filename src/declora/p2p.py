"""Point-to-point transport over torch.distributed: frames to and from graph neighbours
(``batch_isend_irecv``), and the gather to rank 0 for evaluation and outputs.

Lengths go first (one int64 each way), then the bytes, as frames may differ in size. A
neighbour that does not answer within ``peer_timeout`` seconds fails the round with a
:class:`PeerError` naming it.
"""

from __future__ import annotations

import re
import time
from datetime import timedelta

import torch
import torch.distributed as dist

from declora import wire
from declora.rounds import Inbox, NodeCounters, Outgoing
from declora.tensors import State, flatten, numel, unflatten


class PeerError(RuntimeError):
    """A neighbour did not answer in time (or its connection broke); names the neighbour."""


def _reason(err: BaseException) -> str:
    """First line of a backend error, without gloo's [file:line] prefix."""
    line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return re.sub(r"^\[[^\]]*\]\s*", "", line)


class P2PTransport:
    """This process's node talks to its live neighbours only; rank r is node r."""

    def __init__(self, device: torch.device, timeout: float, max_frame: int):
        self.device = device
        self.timeout = timeout  # seconds a neighbour may take to answer
        self.max_frame = max_frame  # longest frame a neighbour may announce

    def wait(self, works, peers: list[int], round_: int) -> None:
        """Wait for every request; one that misses the deadline names its peer (when the
        backend returns one request per operation) or the peers of the round."""
        deadline = time.monotonic() + self.timeout
        for k, work in enumerate(works):
            peer = peers[k] if len(works) == len(peers) else None
            left = timedelta(seconds=max(deadline - time.monotonic(), 1e-3))
            try:
                work.wait(timeout=left)
            except RuntimeError as err:
                who = f"node {peer}" if peer is not None else f"one of nodes {sorted(set(peers))}"
                raise PeerError(
                    f"round {round_}: {who} did not answer within {self.timeout:g} s "
                    f"(peer_timeout): {_reason(err)}"
                ) from None

    def swap(self, outbox: dict[int, Outgoing], round_: int) -> Inbox:
        """This node's frame to each peer, and one frame from each (or why it was refused)."""
        if not outbox:  # sits the round out, or every link is down
            return {}
        ((i, out),) = outbox.items()
        peers, dev = out.peers, self.device
        n_out = torch.tensor([len(out.frame)], dtype=torch.int64, device=dev)
        n_in = {j: torch.zeros(1, dtype=torch.int64, device=dev) for j in peers}
        ops = [dist.P2POp(dist.isend, n_out, j) for j in peers]
        ops += [dist.P2POp(dist.irecv, n_in[j], j) for j in peers]
        self.wait(dist.batch_isend_irecv(ops), peers + peers, round_)
        frame = torch.frombuffer(bytearray(out.frame), dtype=torch.uint8).to(dev)
        bufs, refused = {}, {}
        for j in peers:
            n = int(n_in[j].item())
            if wire.HEADER.size <= n <= self.max_frame:
                bufs[j] = torch.empty(n, dtype=torch.uint8, device=dev)
            else:
                refused[j] = f"announced a frame of {n} bytes (at most {self.max_frame})"
        ops = [dist.P2POp(dist.isend, frame, j) for j in peers]
        ops += [dist.P2POp(dist.irecv, b, j) for j, b in bufs.items()]
        self.wait(dist.batch_isend_irecv(ops), peers + list(bufs), round_)
        got: dict[int, bytes | str] = {j: b.cpu().numpy().tobytes() for j, b in bufs.items()}
        return {i: {**got, **refused}}

    def gather(
        self, held: dict[int, tuple[State, NodeCounters]], round_: int
    ) -> list[tuple[State, NodeCounters]] | None:
        """Rank 0 gets every node's adapter and counters, as float64 (which holds float32
        values and byte counts exactly); None on the other ranks."""
        ((state, counters),) = held.values()
        extra = torch.tensor(counters.to_vector(), dtype=torch.float64)
        vec = torch.cat([flatten(state).double(), extra]).to(self.device)
        world = dist.get_world_size()
        bucket = [torch.empty_like(vec) for _ in range(world)] if dist.get_rank() == 0 else None
        work = dist.gather(vec, bucket, dst=0, async_op=True)
        self.wait([work], [0] if bucket is None else list(range(1, world)), round_)
        if bucket is None:
            return None
        n = numel(state)
        return [
            (unflatten(b[:n].cpu().float(), state), NodeCounters.from_vector(b[n:].cpu().numpy()))
            for b in bucket
        ]
