"""One gossip step on every live edge, in phases, so that both ends of an edge decide together.

A transport only moves bytes (:meth:`Links.post`: to each peer some bytes, from each peer an
expected number of bytes); the phases are written here once, for both runtimes. Every phase
but the frames is a control message (:func:`declora.protocol.wire.seal_control`), tagged when a key is set.

1. **length**: each node tells each live neighbour how long its frame is;
2. **ack**: each node answers whether it takes that many bytes (a valid, authenticated
   announcement of at least a header and at most ``limit``); the announced length is never
   used before it is checked;
3. **frames**: on each edge whose two ends acknowledged each other, the frames cross; on any
   other edge nothing moves, so no unread bytes are left behind on a connection and a peer
   cannot abort an honest node by announcing too much;
4. **verdict** (:func:`declora.protocol.rounds.communicate`): each node tells each neighbour whether it
   accepted its frame; an edge mixes only if both ends accepted, so a refusal at either end
   drops the edge at both. W restricted to the kept edges, with the dropped weight on the
   diagonal, stays symmetric and doubly stochastic: the network average is kept;
5. **commit** (CHOCO only): a node's message counts only when every neighbour accepted it;
   then, and only then, every holder of its public copy applies it, so the copies stay equal.

An inbox holds, per peer, the frame's bytes, a reason (this node refused it: logged and
counted), or None (the peer closed the edge: it logs the reason).
"""

from __future__ import annotations

from dataclasses import dataclass

from declora.protocol import wire

# receiver -> sender -> bytes
Mail = dict[int, dict[int, bytes]]
# receiver -> sender -> the frame, why this node refused it, or None (the peer closed the edge)
Inbox = dict[int, dict[int, bytes | str | None]]


@dataclass(frozen=True)
class Outgoing:
    """One node's frame for this step and the live neighbours it goes to: one frame for all,
    or one a peer (encrypted frames are sealed for their receiver)."""

    peers: list[int]
    frame: bytes | dict[int, bytes]

    def to(self, peer: int) -> bytes:
        return self.frame[peer] if isinstance(self.frame, dict) else self.frame


@dataclass(frozen=True)
class Step:
    """What every message of one gossip step is checked against."""

    stamp: wire.Stamp
    key: bytes | None = None
    limit: int = 2**62  # longest frame a node takes (wire.max_frame_size)


def _takes(length: int | wire.Refused, limit: int) -> str | None:
    """Why an announced length is refused, or None when this node takes it."""
    if isinstance(length, wire.Refused):
        return f"its length announcement was refused: {length}"
    if not wire.HEADER.size <= length <= limit:
        return f"announced a frame of {length} bytes (at most {limit})"
    return None


class Links:
    """The phases over :meth:`post`, which each transport implements."""

    def post(self, outbox: Mail, expect: dict[int, dict[int, int]], round_: int) -> Mail:
        """Send ``outbox[i][j]`` from held node i to node j, and receive at i from each j in
        ``expect[i]`` exactly that many bytes. Both ends of an edge post to each other."""
        raise NotImplementedError

    def tell(
        self, values: dict[int, dict[int, int]], kind: str, step: Step
    ) -> dict[int, dict[int, int | wire.Refused]]:
        """One number from each held node to each of its peers, and theirs back (a
        :class:`~declora.protocol.wire.Refused` where the answer fails its checks)."""
        s, key = step.stamp, step.key
        outbox = {
            i: {j: wire.seal_control(kind, v, i, j, s, key) for j, v in row.items()}
            for i, row in values.items()
        }
        expect = {i: dict.fromkeys(row, wire.CONTROL_SIZE) for i, row in values.items()}
        got = self.post(outbox, expect, s.round)
        answers: dict[int, dict[int, int | wire.Refused]] = {}
        for i, row in values.items():
            answers[i] = {}
            for j in row:
                try:
                    answers[i][j] = wire.open_control(got[i][j], kind, j, i, s, key)
                except wire.Refused as why:
                    answers[i][j] = why
        return answers

    def swap(self, outbox: dict[int, Outgoing], step: Step) -> Inbox:
        """Phases 1-3: each held node's frame to the peers that take it, and theirs back."""
        sizes = {i: {j: len(out.to(j)) for j in out.peers} for i, out in outbox.items()}
        lengths = self.tell(sizes, "length", step)
        why = {i: {j: _takes(n, step.limit) for j, n in row.items()} for i, row in lengths.items()}
        taken = {i: {j: int(r is None) for j, r in row.items()} for i, row in why.items()}
        acks = self.tell(taken, "ack", step)
        both = {i: [j for j in row if row[j] is None and acks[i][j] == 1] for i, row in why.items()}
        got = self.post(
            {i: {j: outbox[i].to(j) for j in js} for i, js in both.items()},
            {i: {j: lengths[i][j] for j in js} for i, js in both.items()},
            step.stamp.round,
        )
        return {
            i: {j: got[i][j] if j in both[i] else reason for j, reason in row.items()}
            for i, row in why.items()
        }
