"""A method's rounds, start to end, for the nodes a process holds: play each round over the
transport, evaluate and log on evaluation rounds, checkpoint when due. Both runtimes call
:func:`play_rounds`; they differ in the transport, the progress display and where files go."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np

from declora.algorithms import faults
from declora.algorithms.scores import from_counts
from declora.algorithms.tensors import State
from declora.config import Config
from declora.harness import checkpoint
from declora.harness.evaluation import pool_sites, site_counts
from declora.harness.progress import Progress
from declora.harness.report import RunLog, round_record, site_record
from declora.harness.session import Session
from declora.protocol.rounds import Counters, NodeCounters, Party, Transport, play_round


@dataclass
class Played:
    """What a method's rounds leave on this process, besides its nodes' own state."""

    counters: Counters
    states: list[State] | None = None  # every node's final adapter (the evaluating process)
    sites: dict | None = None  # per-site files: the sites' test figures (evaluating process)
    own_test: dict = field(default_factory=dict)  # per-site files: held sites' test counts


def is_eval_round(cfg: Config, t: int, total: int) -> bool:
    return t % cfg.eval_every == 0 or t == total


def plan_of_round(s: Session, party: Party, t: int) -> faults.RoundPlan:
    """Round t's W and active nodes: the round's mixing matrix (one per gossip step on a
    time-varying graph), and the config's faults for methods that take them (on each step's
    edges; a link is up or down for the whole round)."""
    mixing = party.mixing
    if mixing is None:
        return faults.no_faults(None, party.size)
    steps = range(party.gossip_steps if mixing.varies else 1)
    if party.method.faults:
        f = s.cfg.faults
        plans = [
            faults.round_plan(
                mixing.edges(t, k), mixing.at(t, k), f.link_drop, f.node_drop, s.cfg.seed, t
            )
            for k in steps
        ]
    else:
        plans = [faults.no_faults(mixing.at(t, k), party.size) for k in steps]
    return replace(plans[0], later=tuple(p.W for p in plans[1:]))


def play_rounds(
    s: Session,
    party: Party,
    transport: Transport,
    log: RunLog | None,
    progress: Progress,
    start: int = 0,
    checkpoints: checkpoint.Store | None = None,
    counters: Counters | None = None,
    eval_rounds: set[int] | None = None,
) -> Played:
    """Rounds ``start + 1 ..`` the party's last (the ``finish_rounds`` after its ``rounds``
    only gossip), counted in ``counters`` (fresh ones by default; a resumed run's as they
    were); every node's final adapter reaches the process that evaluates. ``checkpoints``:
    where per-node checkpoints go, written every ``checkpoint_every`` rounds;
    ``eval_rounds``: the rounds evaluated (default: every ``eval_every`` and the last; the
    method's own rounds, so under ``subrounds`` every subrounds x eval_every)."""
    cfg = s.cfg.for_method(party.method.name)
    total = party.total_rounds
    played = Played(party.counters() if counters is None else counters)
    c = played.counters
    began, wall0 = time.perf_counter(), c.wall_s
    for t in range(start + 1, total + 1):
        play_round(party, c, t, plan_of_round(s, party, t), transport, train=t <= party.rounds)
        c.wall_s = wall0 + time.perf_counter() - began
        if t in eval_rounds if eval_rounds is not None else is_eval_round(cfg, t, total):
            if cfg.gather:
                played.states = evaluate_and_log(s, party, c, transport, t, log, progress)
            else:
                evaluate_sites(s, party, c, transport, t, log, progress)
        if checkpoints is not None and cfg.checkpoint_every and t % cfg.checkpoint_every == 0:
            save_checkpoints(party, c, checkpoints, t)
        progress.round_done(t)
    if not cfg.gather:  # each site's own test rows, pooled from counts
        played.sites, played.own_test = final_sites(s, party, transport, total)
    elif start == total:  # resumed after the last round: gather the final states again
        played.states = gather(party, c, transport, start)[0]
    return played


def gather(party: Party, counters: Counters, transport: Transport, t: int):
    """(states, counters) of every node on the evaluating process; (None, None) elsewhere."""
    held = {n.node_id: (n.state(), counters.nodes[n.node_id]) for n in party.nodes}
    got = transport.gather(held, t)
    if got is None:
        return None, None
    return [st for st, _ in got], [c for _, c in got]


def evaluate_and_log(
    s: Session,
    party: Party,
    counters: Counters,
    transport: Transport,
    t: int,
    log: RunLog | None,
    progress: Progress,
) -> list[State] | None:
    """Round t's record, written by the process that evaluates; returns the gathered states."""
    states, per_node = gather(party, counters, transport, t)
    if states is not None:
        rec = round_record(s, party.method.name, t, states, per_node, counters)
        if log is not None:
            log.write(rec)
        progress.evaluated(rec)
    transport.after_evaluation(t)  # the next exchange's peer_timeout starts after evaluation
    return states


def _held(s: Session, party: Party, split: dict[int, list[dict]], extra) -> dict:
    """Each held site's counts on ``split`` (its own rows), then ``extra(node)``'s values; a
    pooled model (one node) is scored on every site's rows."""
    by_id = {n.node_id: n for n in party.nodes}
    counts = site_counts(s, {i: n.state() for i, n in by_id.items()}, split)
    return {i: np.concatenate([c, extra(by_id.get(i, party.nodes[0]))]) for i, c in counts.items()}


def evaluate_sites(
    s: Session,
    party: Party,
    counters: Counters,
    transport: Transport,
    t: int,
    log: RunLog | None,
    progress: Progress,
) -> None:
    """Round t evaluated where the rows are: each site scores the adapter it holds on its own
    validation rows, and only the counts (and its counters) reach the evaluating process."""
    held = _held(s, party, s.site_val, lambda n: counters.nodes[n.node_id].to_vector())
    k = len(next(iter(held.values()))) - len(NodeCounters().to_vector())  # counts, then counters
    got = transport.gather_vectors(held, t, finite=k)
    if got is not None:
        per_node = [NodeCounters.from_vector(v[k:]) for v in got]
        if party.method.pooled:
            per_node = per_node[:1]
        rec = site_record(party.method.name, t, [v[:k] for v in got], per_node, counters)
        if log is not None:
            log.write(rec)
        progress.evaluated(rec)
    transport.after_evaluation(t)


def final_sites(s: Session, party: Party, transport: Transport, t: int) -> tuple[dict | None, dict]:
    """Each site's own test rows: the adapter it holds and the untrained start, pooled from
    counts on the evaluating process (None elsewhere); and each held site's own counts (its
    site.json, without scoring again)."""
    init = {i: s.task.counts(s.model, s.init, b) for i, b in s.site_test.items()}
    held = _held(s, party, s.site_test, lambda n: np.zeros(0))
    got = transport.gather_vectors({i: np.concatenate([v, init[i]]) for i, v in held.items()}, t)
    if got is None:
        return None, held
    k = len(got[0]) // 2
    final = pool_sites([v[:k] for v in got])
    final["untrained"] = from_counts(np.sum([v[k:] for v in got], axis=0))
    return final, held


def save_checkpoints(party: Party, counters: Counters, store: checkpoint.Store, t: int) -> None:
    for node, ex in zip(party.nodes, party.exchanges):
        own = counters.state_dict(node.node_id)
        extra = ex.state_dict()
        checkpoint.save(store.root, node, t, own, extra, store.fingerprint, store.keep, store.key)


def resume(party: Party, store: checkpoint.Store, t: int) -> Counters:
    """Every held node and its exchange as they were after round t; their counters then."""
    counters = party.counters()
    for node, ex in zip(party.nodes, party.exchanges):
        own, extra = checkpoint.load(store.root, node, t, store.key)
        ex.load_state_dict(extra)
        counters.load_state_dict(node.node_id, own)
    return counters
