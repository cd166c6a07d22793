"""One gossip step on every live edge, in phases, so that both ends of an edge decide together:
all five phases are here (:func:`gossip_step` drives them), written once for both runtimes.

A transport only moves bytes (:meth:`Links.post`: to each peer some bytes, from each peer an
expected number of bytes). Every phase but the frames is a control message
(:func:`declora.protocol.wire.seal_control`), tagged when a key is set.

1. **length**: each node tells each live neighbour how long its frame is;
2. **ack**: each node answers whether it takes that many bytes (a valid, authenticated
   announcement of at least a header and at most ``limit``); the announced length is never
   used before it is checked;
3. **frames**: on each edge whose two ends acknowledged each other, the frames cross; on any
   other edge nothing moves, so no unread bytes are left behind on a connection and a peer
   cannot abort an honest node by announcing too much;
4. **verdict**: each node tells each neighbour whether it
   accepted its frame; an edge mixes only if both ends accepted, so a refusal at either end
   drops the edge at both. W restricted to the kept edges, with the dropped weight on the
   diagonal, stays symmetric and doubly stochastic: the network average is kept;
5. **commit** (CHOCO only, :func:`commit`): a node's message counts only when every neighbour accepted it;
   then, and only then, every holder of its public copy applies it, so the copies stay equal.

An inbox holds, per peer, the frame's bytes, a reason (this node refused it: logged and
counted), or None (the peer closed the edge: it logs the reason).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from declora.algorithms.tensors import State
from declora.protocol import wire
from declora.protocol.exchange import Exchange, row_weights

# receiver -> sender -> bytes
Mail = dict[int, dict[int, bytes]]
# receiver -> sender -> the frame, why this node refused it, or None (the peer closed the edge)
Inbox = dict[int, dict[int, bytes | str | None]]


@dataclass(frozen=True)
class Outgoing:
    """One node's frame for this step, the live neighbours it goes to (``peers``) and those it
    hears from (``sources``: the same on an undirected round): one frame for all, or one a
    peer (encrypted frames are sealed for their receiver; relay sends each its own sum)."""

    peers: list[int]
    frame: bytes | dict[int, bytes]
    sources: list[int] | None = None  # None: the peers

    def to(self, peer: int) -> bytes:
        return self.frame[peer] if isinstance(self.frame, dict) else self.frame

    @property
    def heard(self) -> list[int]:
        return self.peers if self.sources is None else self.sources


@dataclass(frozen=True)
class Step:
    """What every message of one gossip step is checked against."""

    stamp: wire.Stamp
    key: bytes | None = None
    limit: int = 2**62  # longest frame a node takes (wire.max_frame_size)


class ControlRefused(wire.PeerError):
    """A control message (a length, an acknowledgement, a verdict, a commit) failed its
    checks: deciding on it would make the two ends of an edge disagree, so the round stops."""


def _takes(length: int, limit: int) -> str | None:
    """Why an announced length is refused, or None when this node takes it."""
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
        self,
        values: dict[int, dict[int, int]],
        kind: str,
        step: Step,
        hear: dict[int, list[int]] | None = None,
    ) -> dict[int, dict[int, int]]:
        """One number from each held node to each peer in ``values[i]``, and one from each
        node in ``hear[i]`` (default: the same peers) back. One that fails its checks (a tag
        that does not match, another kind, run, round or receiver) raises
        :class:`ControlRefused` naming the peer: an edge's two ends must decide alike."""
        s, key = step.stamp, step.key
        outbox = {
            i: {j: wire.seal_control(kind, v, i, j, s, key) for j, v in row.items()}
            for i, row in values.items()
        }
        hear = {i: list(row) for i, row in values.items()} if hear is None else hear
        expect = {i: dict.fromkeys(js, wire.CONTROL_SIZE) for i, js in hear.items()}
        got = self.post(outbox, expect, s.round)
        answers: dict[int, dict[int, int]] = {}
        for i, js in hear.items():
            answers[i] = {}
            for j in js:
                try:
                    answers[i][j] = wire.open_control(got[i][j], kind, j, i, s, key)
                except wire.Refused as why:
                    raise ControlRefused(
                        f"round {s.round}: node {i} refused the {kind} message from node {j}: "
                        f"{why}; the round stops rather than let the two ends decide apart"
                    ) from None
        return answers

    def swap(self, outbox: dict[int, Outgoing], step: Step) -> Inbox:
        """Phases 1-3: each held node's frame to the peers that take it, and what it takes
        from those it hears from. Each direction of an edge decides alone: node j's frame
        crosses to i only if i took j's announced length."""
        sizes = {i: {j: len(out.to(j)) for j in out.peers} for i, out in outbox.items()}
        sources = {i: out.heard for i, out in outbox.items()}
        lengths = self.tell(sizes, "length", step, sources)
        why = {i: {j: _takes(n, step.limit) for j, n in row.items()} for i, row in lengths.items()}
        taken = {i: {j: int(r is None) for j, r in row.items()} for i, row in why.items()}
        acks = self.tell(taken, "ack", step, {i: out.peers for i, out in outbox.items()})
        send = {i: [j for j in out.peers if acks[i][j] == 1] for i, out in outbox.items()}
        take = {i: [j for j, r in row.items() if r is None] for i, row in why.items()}
        got = self.post(
            {i: {j: outbox[i].to(j) for j in js} for i, js in send.items()},
            {i: {j: lengths[i][j] for j in js} for i, js in take.items()},
            step.stamp.round,
        )
        return {
            i: {j: got[i][j] if reason is None else reason for j, reason in row.items()}
            for i, row in why.items()
        }


@dataclass(frozen=True)
class Link:
    """How a process's messages are protected: the same on every node of a run."""

    key: bytes | None = None  # HMAC key of security.key_file
    encrypt: bool = False  # security.encrypt: frames sealed with AES-256-GCM for each receiver
    run: bytes = bytes(wire.RUN_BYTES)  # run id bound into every message (agreed at start)


@dataclass
class Traffic:
    """What one gossip step did at one node."""

    payload: int = 0  # bytes of one of its payloads (one edge)
    sent: int = 0  # payload bytes it sent, to every live neighbour together
    refused: int = 0  # messages it refused


# (node, round, gossip step, its payload or one per peer) -> None, before the payload leaves
Release = Callable[[int, int, int, "bytes | dict[int, bytes]"], None]


class Held(Protocol):
    """A node as a gossip step sees it: its id, and what it mixes (its adapter; under
    ``second_moment=mixed`` its AdamW second moments too) to read and overwrite."""

    node_id: int

    def shared(self) -> State: ...

    def set_shared(self, state: State) -> None: ...


def gossip_step(
    held: list[tuple[Held, Exchange]],
    W: np.ndarray,
    t: int,
    transport: Links,
    link: Link,
    warn: Callable[[str], None],
    step: int = 0,
    several: bool = False,
    release: Release | None = None,
) -> dict[int, Traffic]:
    """Every held node with a live edge sends its frame, then mixes over what it accepted
    (gossip step ``step`` of round t, one of ``several`` when the round has more than one:
    its frames carry round t and the step; its rounding noise is its own). ``release`` is
    told every payload before it leaves (DP: the site's record). Returns what each node that
    sent did; a control message that fails its checks stops the round (ControlRefused).

    Row i of W is what node i mixes: it hears from j where W_ij > 0 and sends to j where
    W_ji > 0. On a symmetric W an edge mixes only when both ends accepted each other's frame
    (its weight goes to the diagonal otherwise). On a directed round (one-peer exponential)
    no weight can move without moving the network average: a refusal at either end stops
    the round with a :class:`~declora.protocol.wire.PeerError` naming the peer. A node with
    no live edge neither sends nor receives; an exchange with ``alone`` set mixes with itself.
    """
    limit = wire.max_frame_size(held[0][1].sizes)
    call = Step(wire.Stamp(link.run, t, step), link.key, limit)
    directed = not np.array_equal(W != 0, W.T != 0)
    outbox, rows, traffic = _outbox(held, W, t, step, link, call, release)
    accepted, theirs, committed = {}, {}, None
    if outbox:
        accepted, theirs, committed = _cross(
            held, outbox, transport, call, link, traffic, warn, several
        )
    for node, ex in held:
        i = node.node_id
        if i not in outbox:
            if getattr(ex, "alone", False):
                node.set_shared(ex.incoming(node.shared(), {}, {i: 1.0}))
            continue
        got, row = accepted[i], rows[i]
        if directed:
            _all_accepted(i, outbox[i], got, theirs[i], t)
        else:
            for j in outbox[i].peers:  # an edge mixes only when both ends accepted
                if not (j in got and theirs[i][j] == 1):
                    row[i] += row.pop(j)
        mixed = got if committed is not None else {j: got[j] for j in row if j in got}
        kept = None if committed is None else committed[i]
        node.set_shared(ex.incoming(node.shared(), mixed, row, committed=kept))
    return traffic


def _cross(held, outbox, transport: Links, call: Step, link: Link, traffic, warn, several):
    """Phases 1-5: frames cross, each node accepts what passes its checks, every node learns
    its peers' verdicts on its own frame (and, under CHOCO, which messages count). (what each
    accepted, their verdicts, the commits or None). A control message that fails its checks
    is told to ``warn`` and stops the round."""
    try:
        inbox = transport.swap(outbox, call)
        accepted = {}
        for node, ex in held:
            i = node.node_id
            if i in outbox:
                got, heard = inbox.get(i, {}), outbox[i].heard
                accepted[i] = accept(link, ex, i, got, heard, call, traffic[i], warn, several)
        verdicts = {i: {j: int(j in got) for j in outbox[i].heard} for i, got in accepted.items()}
        hear = {i: o.peers for i, o in outbox.items()}
        theirs = transport.tell(verdicts, "verdict", call, hear)
        choco = held[0][1].spec.scheme == "choco"
        committed = commit(transport, theirs, outbox, call) if choco else None
    except ControlRefused as err:
        warn(f"declora: {err}")
        raise
    return accepted, theirs, committed


def _all_accepted(i: int, out: Outgoing, got: dict, theirs: dict, t: int) -> None:
    """On a directed round every frame must have crossed both ways it was meant to."""
    for j in out.heard:
        if j not in got:
            raise wire.PeerError(
                f"round {t}: node {i} refused the message from node {j} on a one-way round "
                "(topology.kind=one_peer_exponential), where no weight can move without moving "
                "the network average: the run stops (resume from a checkpoint)"
            )
    for j in out.peers:
        if theirs[j] != 1:
            raise wire.PeerError(
                f"round {t}: node {j} did not accept node {i}'s message on a one-way round "
                "(topology.kind=one_peer_exponential): the run stops (resume from a checkpoint)"
            )


def _outbox(held, W: np.ndarray, t: int, step: int, link: Link, call: Step, release=None):
    """Phase 0: each held node's row of W, and the frame of each node with a live edge
    (``release`` is told each payload first)."""
    outbox, rows, traffic = {}, {}, {}
    for node, ex in held:
        i = node.node_id
        rows[i] = row_weights(W, i)
        heard = sorted(j for j in rows[i] if j != i)
        peers = sorted(int(j) for j in np.flatnonzero(W[:, i]) if j != i)
        if not peers and not heard:
            continue
        payload = ex.outgoing(node.shared(), t, step, peers) if peers else b""
        if isinstance(payload, dict):  # a payload of its own for each peer (relay)
            sizes = [len(payload[j]) for j in peers]
        else:
            sizes = [len(payload)] * len(peers)
        traffic[i] = Traffic(max(sizes, default=0), sum(sizes))
        if peers and release is not None:
            release(i, t, step, payload)
        frames = _frames(link, ex, payload, i, peers, call)
        outbox[i] = Outgoing(peers, frames, None if heard == peers else heard)
    return outbox, rows, traffic


def commit(transport: Links, theirs: dict, outbox: dict, call: Step) -> dict[int, set[int]]:
    """CHOCO's commit phase: node i's message counts (updates every copy of x_hat_i) only if
    every neighbour accepted it; each node learns which of its neighbours' messages count."""
    mine = {i: int(all(v == 1 for v in theirs[i].values())) for i in outbox}
    told = transport.tell(
        {i: dict.fromkeys(outbox[i].peers, v) for i, v in mine.items()}, "commit", call
    )
    return {
        i: ({i} if mine[i] else set()) | {j for j, v in told[i].items() if v == 1} for i in outbox
    }


def accept(
    link: Link,
    ex: Exchange,
    i: int,
    got: dict,
    peers,
    call: Step,
    traffic: Traffic,
    warn: Callable[[str], None],
    several: bool = False,
) -> dict:
    """The payloads node i accepts from its peers (a refusal is logged and counted)."""
    received = {}
    for j in peers:
        frame = got.get(j, "no message arrived")
        if frame is None:  # the peer closed the edge; it says why
            continue
        try:
            if isinstance(frame, str):
                raise wire.Refused(frame)
            to = i if link.encrypt else None
            body = wire.open_frame(frame, j, call.stamp, _dtype(ex), link.key, to)
            wire.check_payload(body, ex.sizes)
            received[j] = body
        except wire.Refused as why:
            t, step = call.stamp.round, call.stamp.step
            at = f"round {t}" + (f" step {step}" if several else "")
            warn(f"declora: node {i} refused the message from node {j} at {at}: {why}")
            traffic.refused += 1
    return received


def _frames(link: Link, ex: Exchange, payload, i: int, peers, call: Step):
    """Node i's frame for its peers: one for all, or one sealed for each (encrypted, or a
    payload of its own for each: relay)."""
    own = isinstance(payload, dict)
    seal = lambda to=None: wire.seal(  # noqa: E731
        payload[to] if own else payload,
        i,
        call.stamp,
        _dtype(ex),
        link.key,
        to if link.encrypt else None,
    )
    return {j: seal(j) for j in peers} if link.encrypt or own else seal()


def _dtype(ex: Exchange):
    return next(iter(ex.template.values())).dtype
