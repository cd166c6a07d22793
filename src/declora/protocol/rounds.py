"""One round for the nodes a process holds, over a transport: the round is written once, here.

The runtimes differ only in their transport: the simulator holds every node and moves bytes
in memory (:class:`declora.runtimes.sim.MemoryTransport`); a distributed process holds one node and
moves bytes with point-to-point torch.distributed (:class:`declora.runtimes.dist.p2p.P2PTransport`); the
tests wrap either in one that drops, corrupts, forges, replays, delays or crashes.

Round t, for every node i the process holds (:func:`play_round`):

1. local steps: ``steps`` optimizer steps on its own rows, unless the round's plan
   (:mod:`declora.algorithms.faults`) sits it out or the round is a gossip-only finishing round; a
   non-finite training loss stops the run (:class:`Diverged`);
2. message: if it has a live neighbour in the round's W, its :class:`~declora.protocol.exchange.Exchange`
   payload, sealed in a frame (:mod:`declora.protocol.wire`: run, sender, round, step, checksum,
   optional HMAC);
3. transport: lengths, acknowledgements and frames on each live edge (:mod:`declora.protocol.gossip`);
4. mixing: each received frame is opened and checked; a refused one is logged; both ends
   tell each other their verdict, and an edge mixes only when both accepted (its weight goes
   to the nodes themselves otherwise), so W stays doubly stochastic under any refusal; then
   :meth:`Exchange.incoming` mixes; steps 2-4 repeat ``gossip_steps`` times (the same W);
5. counters: samples, bytes, refusals (:class:`Counters`).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from torch import nn

from declora.algorithms.faults import RoundPlan
from declora.algorithms.methods import Method
from declora.algorithms.tensors import State
from declora.learning.dpsgd import Losses
from declora.learning.train import Collate, Node, Stopped, train_steps
from declora.learning.vectorize import Together, train_together
from declora.protocol import wire
from declora.protocol.exchange import Exchange, row_weights
from declora.protocol.gossip import Inbox, Outgoing, Step


def say(line: str) -> None:
    """One line to stderr in a single write, so that lines from several processes never interleave."""
    os.write(2, (line + "\n").encode())


@dataclass
class NodeCounters:
    """What one node alone knows about its run so far."""

    loss: float = math.nan  # mean training loss of its latest round (NaN: it sat the round out)
    grad_norm: float = math.nan  # gradient norm of its latest step
    sent: int = 0  # payload bytes sent so far, once per receiving neighbour (or server)
    payload: int = 0  # bytes of its latest payload (one edge, one round)
    refused: int = 0  # messages it refused so far
    epsilon: float = math.nan  # DP: privacy spent so far at the run's delta (NaN without DP)

    def to_vector(self) -> list[float]:
        """The fields in order, as floats (float64 holds byte counts exactly)."""
        return [float(v) for v in dataclasses.astuple(self)]

    @classmethod
    def from_vector(cls, values) -> NodeCounters:
        loss, grad, sent, payload, refused, eps = (float(v) for v in values)
        return cls(loss, grad, int(sent), int(payload), int(refused), eps)


@dataclass
class Counters:
    """A process's counters: network-wide samples and wall time, and its nodes' own."""

    samples: int = 0  # training samples of every node so far (each process knows it from the plan)
    wall_s: float = 0.0
    nodes: dict[int, NodeCounters] = field(default_factory=dict)

    def state_dict(self, node_id: int) -> dict:
        """What node ``node_id``'s checkpoint keeps (JSON-ready)."""
        return {"samples": self.samples, "wall_s": self.wall_s, **_jsonable(self.nodes[node_id])}

    def load_state_dict(self, node_id: int, state: dict) -> None:
        self.samples, self.wall_s = int(state["samples"]), float(state["wall_s"])
        own = {f.name: state.get(f.name) for f in dataclasses.fields(NodeCounters)}
        self.nodes[node_id] = NodeCounters(**{k: _nan(v) for k, v in own.items()})


def _jsonable(c: NodeCounters) -> dict:
    """JSON has no NaN: a missing value is written as None."""
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in vars(c).items()}


def _nan(value):
    return math.nan if value is None else value


class Transport(Protocol):
    """How frames, control values and evaluation data move between the nodes of a run
    (:class:`declora.protocol.gossip.Links` writes the phases once over a transport's byte mover)."""

    def swap(self, outbox: dict[int, Outgoing], step: Step) -> Inbox:
        """Each held node's frame to the peers that take it; what each held node received."""
        ...

    def tell(
        self, values: dict[int, dict[int, int]], kind: str, step: Step
    ) -> dict[int, dict[int, int | wire.Refused]]:
        """One number from each held node to each peer, and theirs back."""
        ...

    def gather(
        self, held: dict[int, tuple[State, NodeCounters]], round_: int
    ) -> list[tuple[State, NodeCounters]] | None:
        """Every node's adapter and counters, in node order, on the process that evaluates
        (evaluation and outputs only: training never goes through it); None elsewhere."""
        ...

    def gather_vectors(
        self, held: dict[int, np.ndarray], round_: int, finite: int | None = None
    ) -> list[np.ndarray] | None:
        """Every node's float64 vector (per-site evaluation counts and counters), in node
        order, on the process that evaluates; None elsewhere. Its first ``finite`` values (all
        by default) must be finite; the rest may hold NaN (a node that did not train)."""
        ...

    def after_evaluation(self, round_: int) -> None:
        """Every process waits here until the evaluating one has evaluated round ``round_``
        (so that evaluation time never counts against ``peer_timeout``)."""
        ...


class Diverged(Stopped):
    """A node's training loss is not finite: the run stops at that round."""


@dataclass
class Party:
    """The nodes one process holds for one method, and what playing a round needs."""

    method: Method
    model: nn.Module  # the frozen base with LoRA; nodes own the trainable tensors
    collate: Collate
    nodes: list[Node]
    exchanges: list[Exchange]  # one per held node
    steps: int  # optimizer steps per node per round
    batch_size: int
    size: int  # nodes in the method's network (1 when pooled), held or not
    W: np.ndarray | None  # configured mixing matrix; None = no messages
    rounds: int = 1  # rounds with local steps
    finish_rounds: int = 0  # gossip-only rounds after them
    gossip_steps: int = 1  # mixing steps in each round
    key: bytes | None = None  # HMAC key of security.key_file
    encrypt: bool = False  # security.encrypt: frames sealed with AES-256-GCM for each receiver
    losses: Losses | None = None  # the task's per-row losses (DP-SGD)
    together: Together | None = None  # vectorize=true: the held nodes train in one batch
    run: bytes = bytes(wire.RUN_BYTES)  # run id bound into every message (agreed at start)
    counters: Counters = field(default_factory=Counters)
    warn: Callable[[str], None] = say
    final: dict | None = None  # per-site files: the sites' test figures, on the evaluating process
    own_test: dict = field(default_factory=dict)  # per-site files: held sites' test counts

    @property
    def total_rounds(self) -> int:
        """Rounds with local steps, then the gossip-only finishing rounds."""
        return self.rounds + self.finish_rounds

    def __post_init__(self) -> None:
        for node in self.nodes:
            self.counters.nodes.setdefault(node.node_id, NodeCounters())


def play_round(
    party: Party, t: int, plan: RoundPlan, transport: Transport, train: bool = True
) -> None:
    """Round ``t`` for the party's nodes: local steps (none in a gossip-only finishing round,
    ``train=False``), then messages and mixing."""
    steps = party.steps if train else 0
    batched = [n for n in party.nodes if plan.active[n.node_id]] if party.together else []
    together = bool(steps) and len(batched) > 1
    if together:
        train_together(party.model, batched, steps, party.collate, party.together)
    for node in party.nodes:
        c = party.counters.nodes[node.node_id]
        active = bool(plan.active[node.node_id])
        if active and not together:
            train_steps(party.model, node, steps, party.collate, party.losses)
        if active and steps and node.diverged:
            raise Diverged(
                f"node {node.node_id} diverged at round {t}: its training loss is "
                f"{node.last_loss} (lower lr, or lora.alpha)"
            )
        # under DP the training loss stays on the site (it is not private); the noisy
        # gradient's norm and the epsilon spent are
        private = node.budget is not None
        c.loss = node.last_loss if active and not private else math.nan
        c.grad_norm, c.epsilon = node.last_grad_norm, node.epsilon
    party.counters.samples += int(plan.active.sum()) * steps * party.batch_size
    if plan.W is not None:
        for step in range(party.gossip_steps):
            communicate(party, plan.W, t, transport, step)


def communicate(party: Party, W: np.ndarray, t: int, transport: Transport, step: int = 0) -> None:
    """Every held node with a live edge sends its frame, then mixes over the edges whose two
    ends accepted each other's frames (gossip step ``step`` of round t: its frames carry
    round t and the step; its rounding noise is its own).

    A node with no live edge this round (faults) neither sends nor mixes. Bytes count each
    payload once per neighbour, or once for a server (fedavg); the frame's header and the
    control messages are not counted (``wire.HEADER.size`` + ``wire.TAG_SIZE`` with a key per
    frame, and 3 or 4 of ``wire.CONTROL_SIZE`` bytes per edge and step).
    """
    limit = wire.max_frame_size(party.exchanges[0].sizes)
    call = Step(wire.Stamp(party.run, t, step), party.key, limit)
    outbox, weights = {}, {}
    for node, ex in zip(party.nodes, party.exchanges):
        i = node.node_id
        weights[i] = row_weights(W, i)
        peers = sorted(j for j in weights[i] if j != i)
        if not peers:
            continue
        payload = ex.outgoing(node.state(), t, step)
        c = party.counters.nodes[i]
        c.payload = len(payload)
        c.sent += len(payload) * (1 if party.method.server else len(peers))
        outbox[i] = Outgoing(peers, _frames(party, ex, payload, i, peers, call))
    if not outbox:
        return
    inbox = transport.swap(outbox, call)
    accepted = {
        i: accept(party, ex, i, inbox.get(i, {}), outbox[i].peers, call)
        for i, ex in zip(_ids(party), party.exchanges)
        if i in outbox
    }
    verdicts = {i: {j: int(j in got) for j in outbox[i].peers} for i, got in accepted.items()}
    theirs = transport.tell(verdicts, "verdict", call)
    committed = None
    if party.exchanges[0].spec.scheme == "choco":
        committed = commit(transport, theirs, outbox, call)
    for node, ex in zip(party.nodes, party.exchanges):
        i = node.node_id
        if i not in outbox:
            continue
        got, row = accepted[i], weights[i]
        for j in outbox[i].peers:  # an edge mixes only when both ends accepted
            if not (j in got and theirs[i][j] == 1):
                row[i] += row.pop(j)
        mixed = got if committed is not None else {j: got[j] for j in row if j in got}
        kept = None if committed is None else committed[i]
        node.set_state(ex.incoming(node.state(), mixed, row, committed=kept))


def commit(transport: Transport, theirs: dict, outbox: dict, call: Step) -> dict[int, set[int]]:
    """CHOCO's commit phase: node i's message counts (updates every copy of x_hat_i) only if
    every neighbour accepted it; each node learns which of its neighbours' messages count."""
    mine = {i: int(all(v == 1 for v in theirs[i].values())) for i in outbox}
    told = transport.tell(
        {i: dict.fromkeys(outbox[i].peers, v) for i, v in mine.items()}, "commit", call
    )
    return {
        i: ({i} if mine[i] else set()) | {j for j, v in told[i].items() if v == 1} for i in outbox
    }


def accept(party: Party, ex: Exchange, i: int, got: dict, peers, call: Step) -> dict:
    """The payloads node i accepts from its peers (a refusal is logged and counted)."""
    received = {}
    for j in peers:
        frame = got.get(j, "no message arrived")
        if frame is None:  # the peer closed the edge; it says why
            continue
        try:
            if isinstance(frame, str):
                raise wire.Refused(frame)
            to = i if party.encrypt else None
            body = wire.open_frame(frame, j, call.stamp, _dtype(ex), party.key, to)
            wire.check_payload(body, ex.sizes)
            received[j] = body
        except wire.Refused as why:
            t, step = call.stamp.round, call.stamp.step
            at = f"round {t}" + (f" step {step}" if party.gossip_steps > 1 else "")
            party.warn(f"declora: node {i} refused the message from node {j} at {at}: {why}")
            party.counters.nodes[i].refused += 1
    return received


def _frames(party: Party, ex: Exchange, payload: bytes, i: int, peers, call: Step):
    """Node i's frame for its peers: one for all, or (encrypted) one sealed for each."""
    seal = lambda to=None: wire.seal(payload, i, call.stamp, _dtype(ex), party.key, to)  # noqa: E731
    return {j: seal(j) for j in peers} if party.encrypt else seal()


def _ids(party: Party) -> list[int]:
    return [n.node_id for n in party.nodes]


def _dtype(ex: Exchange):
    return next(iter(ex.template.values())).dtype
