"""One round for the nodes a process holds, over a transport: the round is written once, here.

The runtimes differ only in their transport: the simulator holds every node and moves bytes
in memory (:class:`declora.runtimes.sim.MemoryTransport`); a distributed process holds one node and
moves bytes with point-to-point torch.distributed (:class:`declora.runtimes.distributed.p2p.P2PTransport`); the
tests wrap either in one that drops, corrupts, forges, replays, delays or crashes.

Round t, for every node i the process holds (:func:`play_round`):

1. local steps: ``steps`` optimizer steps on its own rows, unless the round's plan
   (:mod:`declora.algorithms.faults`) sits it out or the round is a gossip-only finishing round; a
   non-finite training loss stops the run (:class:`Diverged`);
2. message: if it has a live neighbour in the round's W, its :class:`~declora.protocol.exchange.Exchange`
   payload, sealed in a frame (:mod:`declora.protocol.wire`: run, sender, round, step, checksum,
   optional HMAC);
3. transport: lengths, acknowledgements and frames on each live edge;
4. mixing: each received frame is opened and checked; a refused one is logged; both ends
   tell each other their verdict, and an edge mixes only when both accepted (its weight goes
   to the nodes themselves otherwise), so W stays doubly stochastic under any refusal; then
   :meth:`Exchange.incoming` mixes; steps 2-4 (all of a gossip step's phases are in
   :mod:`declora.protocol.gossip`) repeat ``gossip_steps`` times (the same W on a static
   graph; a time-varying graph's next matrices);
5. counters: samples, bytes, refusals (:class:`Counters`).

Under ``exchange=gradients`` step 1 sets the one local step's gradients without taking the
step, steps 2-4 mix those gradients (exactly, the config sees to it), and every node then
takes the optimizer step on the network's gradient: the nodes stay one model.

A :class:`Party` is what a round reads (the held nodes, their exchanges, the settings); the
:class:`Counters` are what the rounds produce, besides the nodes' own state.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from torch import nn

from declora.algorithms.faults import RoundPlan
from declora.algorithms.methods import Method
from declora.algorithms.schedule import Schedule
from declora.algorithms.tensors import State
from declora.learning.dpsgd import Losses
from declora.learning.train import Collate, Node, Stopped, train_steps
from declora.learning.vectorize import Together, train_together
from declora.protocol import wire
from declora.protocol.exchange import Exchange
from declora.protocol.gossip import Inbox, Link, Outgoing, Release, Step, gossip_step


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

    @classmethod
    def of(cls, node_ids: Iterable[int]) -> Counters:
        """Fresh counters for the nodes ``node_ids``."""
        return cls(nodes={i: NodeCounters() for i in node_ids})

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


@dataclass(frozen=True)
class Party:
    """The nodes one process holds for one method, and what playing a round reads."""

    method: Method
    model: nn.Module  # the frozen base with LoRA; nodes own the trainable tensors
    collate: Collate
    nodes: list[Node]
    exchanges: list[Exchange]  # one per held node
    steps: int  # optimizer steps per node per round
    batch_size: int
    size: int  # nodes in the method's network (1 when pooled), held or not
    mixing: Schedule | None  # who mixes with whom, round by round; None = no messages
    rounds: int = 1  # rounds with local steps
    finish_rounds: int = 0  # gossip-only rounds after them
    gossip_steps: int = 1  # mixing steps in each round
    link: Link = Link()  # how messages are protected, and the run id they carry
    losses: Losses | None = None  # the task's per-row losses (DP-SGD)
    together: Together | None = None  # vectorize=true: the held nodes train in one batch
    warn: Callable[[str], None] = say
    release: Release | None = None  # DP under launch: the site's record of what it sent

    @property
    def gradients(self) -> bool:
        """``exchange=gradients``: the nodes mix each step's gradient, then take the step."""
        return any(n.gradients for n in self.nodes)

    @property
    def total_rounds(self) -> int:
        """Rounds with local steps, then the gossip-only finishing rounds."""
        return self.rounds + self.finish_rounds

    def counters(self) -> Counters:
        """Fresh counters for the held nodes."""
        return Counters.of(n.node_id for n in self.nodes)


def play_round(
    party: Party,
    counters: Counters,
    t: int,
    plan: RoundPlan,
    transport: Transport,
    train: bool = True,
) -> None:
    """Round ``t`` for the party's nodes: local steps (none in a gossip-only finishing round,
    ``train=False``), then messages and mixing; ``counters`` take what the round did. Under
    ``exchange=gradients`` the one local step's gradients are mixed before the optimizer
    takes them, and a round without training sends nothing."""
    steps = party.steps if train else 0
    grads_first = party.gradients and bool(steps)
    batched = [n for n in party.nodes if plan.active[n.node_id]] if party.together else []
    together = bool(steps) and len(batched) > 1
    if together:
        train_together(party.model, batched, steps, party.collate, party.together)
    for node in party.nodes:
        c = counters.nodes[node.node_id]
        active = bool(plan.active[node.node_id])
        if active and not together:
            train_steps(party.model, node, steps, party.collate, party.losses, not grads_first)
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
    counters.samples += int(plan.active.sum()) * steps * party.batch_size
    if plan.W is not None and (steps or not party.gradients):
        for step in range(party.gossip_steps):
            communicate(party, counters, plan.at_step(step), t, transport, step)
    if grads_first:
        for node in party.nodes:
            if plan.active[node.node_id]:
                node.apply_grads()
                c = counters.nodes[node.node_id]
                c.grad_norm, c.epsilon = node.last_grad_norm, node.epsilon


def communicate(
    party: Party, counters: Counters, W: np.ndarray, t: int, transport: Transport, step: int = 0
) -> None:
    """One gossip step of round t (:func:`declora.protocol.gossip.gossip_step`) for the held
    nodes, counted: bytes count each payload once per neighbour, or once for a server
    (fedavg)."""
    held = list(zip(party.nodes, party.exchanges))
    several = party.gossip_steps > 1
    traffic = gossip_step(
        held, W, t, transport, party.link, party.warn, step, several, party.release
    )
    for i, done in traffic.items():
        c = counters.nodes[i]
        c.payload = done.payload
        c.sent += done.payload if party.method.server else done.sent
        c.refused += done.refused
