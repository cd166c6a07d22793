"""Methods as values: one small record per way of training, read wherever methods differ.

Every method sees the same number of training samples per round (nodes x local_steps x
batch_size); they differ in who trains, who talks and what is reported:

- ``dec-lora``: every node trains on its own rows and mixes with its graph neighbours (W).
- ``centralized``: one model on the pooled rows, nodes x local_steps steps a round.
- ``local``: every node trains alone; nothing is sent.
- ``fedavg``: every node trains, then a server averages all of them (one upload a node).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

HEADLINES = {
    "nodes": "mean of the nodes' own adapters (what each site holds)",
    "model": "the one model",
}


@dataclass(frozen=True)
class Method:
    """What sets a method apart; the round and the run layer read these fields only."""

    name: str
    pooled: bool = False  # one model trains on every node's rows (no nodes, no messages)
    mixes: bool = True  # nodes average with others after their local steps
    server: bool = False  # a server averages all nodes: each node's one upload is counted
    faults: bool = False  # the config's link and node drops apply
    headline: Literal["nodes", "model"] = "nodes"  # what summary.json leads with
    export_nodes: bool = False  # adapters/<method>/node_<i>/ besides the network's adapter

    @property
    def gossips(self) -> bool:
        """Whether its nodes mix with graph neighbours (and so take ``finish_rounds``)."""
        return self.mixes and not self.pooled and not self.server

    @property
    def spread(self) -> bool:
        """Whether its nodes can disagree at an evaluation (consensus distances are shown)."""
        return not self.pooled and not self.server


METHODS = {
    m.name: m
    for m in (
        Method("dec-lora", faults=True, export_nodes=True),
        Method("centralized", pooled=True, mixes=False, headline="model"),
        Method("local", mixes=False, export_nodes=True),
        Method("fedavg", server=True),
    )
}
