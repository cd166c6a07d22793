"""In-process runtime: all nodes in one process over ONE frozen base model.

Memory is base + N x (adapter + optimizer state), not N x model. The round is
:func:`declora.protocol.rounds.play_round`, as in the distributed runtime; here its bytes move in
memory (:class:`MemoryTransport`) and every method of the config runs in turn.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from declora.algorithms.methods import METHODS
from declora.algorithms.tensors import State
from declora.config import Config
from declora.harness.outputs import (
    describe_run,
    finish_method,
    make_out_dir,
    plot_curves,
    write_run_files,
    write_summary,
)
from declora.harness.report import RunLog, headline, start_summary, write_json
from declora.harness.runner import play_rounds
from declora.harness.session import Session, party_for, prepare
from declora.learning.train import Stopped
from declora.protocol.gossip import Links, Mail
from declora.protocol.rounds import NodeCounters, Transport

Wrap = Callable[[Transport], Transport]  # tests: a transport around the real one


class MemoryTransport(Links):
    """Bytes move between the nodes of this process as they would on a wire, in the same
    phases (:mod:`declora.protocol.gossip`)."""

    def post(self, outbox: Mail, expect: dict[int, dict[int, int]], round_: int) -> Mail:
        got: Mail = {}
        for i, row in expect.items():
            got[i] = {}
            for j, n in row.items():
                data = outbox.get(j, {}).get(i)
                if data is None or len(data) != n:  # the distributed runtime would hang
                    raise RuntimeError(f"round {round_}: node {j} posted no {n} bytes to node {i}")
                got[i][j] = data
        return got

    def gather(
        self, held: dict[int, tuple[State, NodeCounters]], round_: int
    ) -> list[tuple[State, NodeCounters]]:
        return [held[i] for i in sorted(held)]

    def gather_vectors(
        self, held: dict[int, np.ndarray], round_: int, finite: int | None = None
    ) -> list[np.ndarray]:
        return [held[i] for i in sorted(held)]

    def after_evaluation(self, round_: int) -> None:
        pass


class Bar:
    """A progress bar over one method's rounds, showing the latest evaluation of what the
    method's headline reports (the nodes' own adapters for ``local``)."""

    def __init__(self, method: str, rounds: int, leave: bool = True):
        self.method = method
        self.bar = tqdm(total=rounds, desc=f"{method:>11}", unit="round", leave=leave)

    def round_done(self, t: int) -> None:
        self.bar.update(1)

    def evaluated(self, record: dict) -> None:
        shown = headline(self.method, record)
        self.bar.set_postfix(acc=f"{shown['accuracy']:.3f}", loss=f"{shown['loss']:.3f}")


def run_method(
    s: Session, method: str, log: RunLog, wrap: Wrap | None = None
) -> tuple[dict, list[State], dict | None]:
    """Train one method for ``rounds`` rounds; its last record, every node's adapter and,
    with per-site files, the sites' test figures."""
    party = party_for(s, METHODS[method])
    transport = MemoryTransport() if wrap is None else wrap(MemoryTransport())
    bar = Bar(method, party.total_rounds)
    try:
        states = play_rounds(s, party, transport, log, bar)
    finally:
        bar.bar.close()
    if states is None:  # per-site evaluation gathers no adapter; this process holds them all
        states = [n.state() for n in party.nodes]
    return log.records[-1], states, party.final


def run(cfg: Config, echo=print, wrap: Wrap | None = None) -> tuple[Path, dict]:
    """Run every configured method and write config, metrics, summary, curves and adapters."""
    s = prepare(cfg)
    out = make_out_dir(cfg)
    write_run_files(s, out)
    for line in describe_run(s, out):
        echo(line)
    log = RunLog(out)
    summary = start_summary(s)
    try:
        for method in cfg.methods:
            last, states, final = run_method(s, method, log, wrap)
            finish_method(s, out, summary, method, last, states, final)
    except Stopped as err:  # keep what ran: the methods before, the curves up to that round
        summary["stopped"] = str(err)
        write_json(out / "summary.json", summary)
        plot_curves(log.records, out / "curves.png")
        raise type(err)(f"{err}; what ran until then is in {out}") from None
    summary["runtime"] = {"processes": 1, "backend": "memory", "device": str(s.device)}
    write_summary(out, log, summary, echo)
    return out, summary
