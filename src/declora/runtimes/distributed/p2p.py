"""Point-to-point transport over torch.distributed: bytes to and from graph neighbours
(``batch_isend_irecv``; the phases of a gossip step are in :mod:`declora.protocol.gossip`), and the
authenticated gather to rank 0 for evaluation and outputs.

A neighbour that does not answer within ``peer_timeout`` seconds, or that closed its
connection, fails the round with a :class:`PeerError` naming it and the cause (or, for an
honest neighbour that stopped first, the cause it stopped on: :mod:`.stops`). Rank 0 checks
every gathered state like a frame (HMAC with the run, node and round when a key is set; finite
values) before it evaluates or exports it.
"""

from __future__ import annotations

import struct
import time
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

from declora.algorithms.tensors import State, flatten, numel, unflatten
from declora.protocol import crypt, wire
from declora.protocol.gossip import Links, Mail
from declora.protocol.rounds import NodeCounters
from declora.protocol.wire import PeerError
from declora.runtimes.distributed.stops import Stops, reason


def _bytes(t: torch.Tensor) -> bytes:
    return t.cpu().numpy().tobytes()


def _tensor(data: bytes, device: torch.device) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).to(device)


class P2PTransport(Links):
    """This process's node talks to its live neighbours only; rank r is node r."""

    def __init__(
        self,
        device: torch.device,
        timeout: float,
        key: bytes | None = None,
        encrypt: bool = False,
        run: bytes = bytes(wire.RUN_BYTES),
        stops: Stops | None = None,
    ):
        self.device = device
        self.timeout = timeout  # seconds a neighbour may take to answer
        self.key = key
        self.encrypt = encrypt  # security.encrypt: gathered vectors are AES-256-GCM sealed
        self.run = run  # the run id the processes agreed on at start
        self.gathers = 0  # gathers so far: every process counts the same (a nonce field)
        self.stops = stops or Stops(None, 0, 1)  # why the run stopped, told to the others

    def wait(self, works, peers: list[int], round_: int) -> None:
        """Wait for every request; one that fails names its peer (when the backend returns
        one request per operation) or the peers of the round, and the cause."""
        deadline = time.monotonic() + self.timeout
        for k, work in enumerate(works):
            peer = peers[k] if len(works) == len(peers) else None
            left = timedelta(seconds=max(deadline - time.monotonic(), 1e-3))
            try:
                work.wait(timeout=left)
            except RuntimeError as err:
                raise self.stops.fail(err, peer, peers, round_, self.timeout) from None

    def start(self, ops: list[tuple], round_: int) -> list:
        """Post ``(isend or irecv, tensor, peer)`` operations. Gloo has no batching: they go
        one by one (as batch_isend_irecv would post them), so that one that fails at once (a
        peer whose connection is closed) names its peer; NCCL batches them in one group."""
        peers = [peer for _, _, peer in ops]
        if dist.get_backend() == "nccl":
            try:
                return dist.batch_isend_irecv([dist.P2POp(*op) for op in ops])
            except RuntimeError as err:
                raise self.stops.fail(err, None, peers, round_, self.timeout) from None
        works = []
        for op, tensor, peer in ops:
            try:
                works.append(op(tensor, peer))
            except RuntimeError as err:
                raise self.stops.fail(err, peer, peers, round_, self.timeout) from None
        return works

    def post(self, outbox: Mail, expect: dict[int, dict[int, int]], round_: int) -> Mail:
        ((i, sends),) = outbox.items()  # one node a process
        bufs = {
            j: torch.empty(n, dtype=torch.uint8, device=self.device) for j, n in expect[i].items()
        }
        ops = [(dist.isend, _tensor(data, self.device), j) for j, data in sends.items()]
        ops += [(dist.irecv, b, j) for j, b in bufs.items()]
        if ops:
            self.wait(self.start(ops, round_), [j for _, _, j in ops], round_)
        return {i: {j: _bytes(b) for j, b in bufs.items()}}

    def gather(
        self, held: dict[int, tuple[State, NodeCounters]], round_: int
    ) -> list[tuple[State, NodeCounters]] | None:
        """Rank 0 gets every node's adapter and counters, as float64 (which holds float32
        values and byte counts exactly), each checked; None on the other ranks."""
        ((node, (state, counters)),) = held.items()
        n = numel(state)
        vec = np.concatenate([flatten(state).double().numpy(), counters.to_vector()])
        got = self.gather_vectors({node: vec}, round_, finite=n)
        if got is None:
            return None
        return [
            (unflatten(torch.from_numpy(v[:n]).float(), state), NodeCounters.from_vector(v[n:]))
            for v in got
        ]

    def gather_vectors(
        self, held: dict[int, np.ndarray], round_: int, finite: int | None = None
    ) -> list[np.ndarray] | None:
        """Rank 0 gets every node's float64 vector (all of the same length), each tagged with
        the run, node and round when a key is set and checked (its first ``finite`` values,
        all by default, must be finite); None on the other ranks."""
        ((node, vec),) = held.items()
        self.gathers += 1
        mine = _tensor(self._seal(node, round_, np.asarray(vec, dtype=np.float64)), self.device)
        world = dist.get_world_size()
        bucket = [torch.empty_like(mine) for _ in range(world)] if dist.get_rank() == 0 else None
        peers = [0] if bucket is None else list(range(1, world))
        try:
            work = dist.gather(mine, bucket, dst=0, async_op=True)
        except RuntimeError as err:
            raise self.stops.fail(err, None, peers, round_, self.timeout) from None
        self.wait([work], peers, round_)
        if bucket is None:
            return None
        n = len(vec) if finite is None else finite
        return [self._check(j, _bytes(b), round_, n) for j, b in enumerate(bucket)]

    def _context(self, node: int, round_: int) -> tuple[bytes, ...]:
        return b"gather", self.run, struct.pack("<III", node, round_, self.gathers)

    def _seal(self, node: int, round_: int, vec: np.ndarray) -> bytes:
        """The vector's bytes, then its HMAC tag (zeros without a key); or, encrypted, its
        AES-GCM ciphertext and tag, sealed for node 0."""
        data = vec.tobytes()
        if self.encrypt:
            aes, where = crypt.cipher(self.key, self.run), self._nonce(node, round_)
            return crypt.encrypt(aes, where, data, b"".join(self._context(node, round_)))
        return data + (
            wire.sign(self.key, *self._context(node, round_), data) if self.key else wire.NO_TAG
        )

    def _nonce(self, node: int, round_: int) -> bytes:
        return crypt.nonce(node, 0, round_, self.gathers % 2**16, "gather")

    def _open(self, node: int, raw: bytes, round_: int) -> bytes:
        context = self._context(node, round_)
        if self.encrypt:
            try:
                aes = crypt.cipher(self.key, self.run)
                return crypt.decrypt(aes, self._nonce(node, round_), raw, b"".join(context))
            except crypt.Undecryptable as err:
                raise PeerError(
                    f"round {round_}: node {node}'s state for evaluation: {err}"
                ) from None
        data, tag = raw[: -wire.TAG_SIZE], raw[-wire.TAG_SIZE :]
        if self.key and not wire.verify(self.key, tag, *context, data):
            raise PeerError(
                f"round {round_}: node {node}'s state for evaluation fails its HMAC tag "
                "(another key, or altered): nothing of it is evaluated or exported"
            )
        return data

    def _check(self, node: int, raw: bytes, round_: int, n: int) -> np.ndarray:
        """Node ``node``'s gathered vector (``n`` adapter values, then counters, which may
        hold NaN for a node that sat a round out), or a PeerError naming it."""
        data = self._open(node, raw, round_)
        vec = np.frombuffer(data, dtype=np.float64).copy()
        if not np.isfinite(vec[:n]).all():
            raise PeerError(f"round {round_}: node {node}'s state for evaluation is not finite")
        return vec

    def after_evaluation(self, round_: int) -> None:
        """Every rank waits for rank 0's word that it has evaluated (the start-up timeout
        applies here, not peer_timeout)."""
        flag = torch.tensor([round_], dtype=torch.int64, device=self.device)
        try:
            dist.broadcast(flag, src=0)
        except RuntimeError as err:
            theirs = self.stops.read(0)
            self.stops.fail(err, 0, [0], round_, self.timeout)  # its line, for the others
            raise PeerError(
                f"round {round_}: node 0 stopped while evaluating: {theirs or reason(err)}"
            ) from None
