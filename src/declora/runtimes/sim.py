"""In-process runtime: all nodes in one process over ONE frozen base model.

Memory is base + N x (adapter + optimizer state), not N x model. The round is
:func:`declora.protocol.rounds.play_round`, as in the distributed runtime; here its bytes move in
memory (:class:`MemoryTransport`) and every method of the config runs in turn.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from declora.algorithms.methods import METHODS
from declora.algorithms.tensors import State
from declora.config import Config
from declora.harness.evaluation import evaluate_untrained
from declora.harness.loggers import check_installed, open_loggers
from declora.harness.outputs import (
    describe_run,
    finish_method,
    finish_run,
    keep_stopped,
    make_out_dir,
    new_out_dir,
    write_run_files,
)
from declora.harness.progress import Bar
from declora.harness.report import RunLog
from declora.harness.runner import play_rounds
from declora.harness.session import Session, party_for, prepare
from declora.harness.summary import Summary
from declora.learning.train import Stopped
from declora.protocol import wire
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


def run_method(
    s: Session, method: str, log: RunLog, wrap: Wrap | None = None
) -> tuple[dict, list[State], dict | None]:
    """Train one method for ``rounds`` rounds; its last record, every node's adapter and,
    with per-site files, the sites' test figures."""
    party = party_for(s, METHODS[method], run=os.urandom(wire.RUN_BYTES))  # a run id of its own
    transport = MemoryTransport() if wrap is None else wrap(MemoryTransport())
    bar = Bar(method, party.total_rounds)
    try:
        played = play_rounds(s, party, transport, log, bar)
    finally:
        bar.bar.close()
    states = played.states
    if states is None:  # per-site evaluation gathers no adapter; this process holds them all
        states = [n.state() for n in party.nodes]
    return log.records[-1], states, played.sites


def run(cfg: Config, echo=print, wrap: Wrap | None = None) -> tuple[Path, dict]:
    """Run every configured method and write config, metrics, summary, curves and adapters."""
    check_installed(cfg)  # a logger that is not there is refused before anything is written
    new_out_dir(cfg)  # before the model loads: a folder that cannot be this run's
    s = prepare(cfg)
    out = make_out_dir(cfg)
    write_run_files(s, out)
    for line in describe_run(s, out):
        echo(line)
    log = RunLog(out, open_loggers(cfg, out))
    summary = Summary(s, evaluate_untrained(s))
    try:
        for method in cfg.methods:
            log.start(method)
            last, states, sites = run_method(s, method, log, wrap)
            finish_method(s, out, summary, method, last, states, sites)
    except Stopped as err:  # keep what ran: the methods before, the curves up to that round
        keep_stopped(out, log, summary, str(err))
        raise type(err)(f"{err}; what ran until then is in {out}") from None
    finally:
        log.close()
    runtime = {"processes": 1, "backend": "memory", "device": str(s.device)}
    finish_run(out, log, summary, runtime, echo)
    return out, summary.data
