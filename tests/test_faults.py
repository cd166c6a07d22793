"""Intermittent links and nodes: both ends agree, the rates are right, W stays doubly stochastic
(checked against an independent Metropolis computation), and the simulator skips what is down."""

from __future__ import annotations

import json

import numpy as np
import pytest

from declora.algorithms import faults
from declora.algorithms import topology as topo
from declora.cli import main
from tests.helpers import tiny_args


def reference_metropolis(adj: np.ndarray, up: np.ndarray) -> np.ndarray:
    """W_ij = 1 / (1 + max(deg_i, deg_j)) on live edges, W_ii = 1 - sum of the row."""
    live = adj & up
    deg = live.sum(1)
    n = len(adj)
    W = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            if i != j and live[i, j]:
                W[i, j] = 1.0 / (1 + max(deg[i], deg[j]))
        W[i, i] = 1.0 - W[i].sum()
    return W


def test_both_ends_of_a_link_agree_and_draws_are_reproducible():
    for t in range(1, 30):
        for i, j in [(0, 1), (2, 7), (5, 3)]:
            assert faults.link_up(4, t, i, j, 0.5) == faults.link_up(4, t, j, i, 0.5)
            assert faults.link_up(4, t, i, j, 0.5) == faults.link_up(4, t, i, j, 0.5)
    draws = {faults.link_up(4, t, 0, 1, 0.5) for t in range(1, 30)}
    assert draws == {True, False}


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_drop_rates(p):
    links = [faults.link_up(1, t, i, i + 1, p) for t in range(200) for i in range(10)]
    nodes = [faults.node_up(1, t, i, p) for t in range(200) for i in range(10)]
    assert abs((1 - np.mean(links)) - p) < 0.05
    assert abs((1 - np.mean(nodes)) - p) < 0.05


def test_negative_seed_is_fine():
    assert isinstance(faults.link_up(-3, 1, 0, 1, 0.5), bool)


def test_no_faults_keeps_the_configured_matrix():
    adj = topo.build_graph("ring", 6)
    W = topo.mixing_matrix(adj, "laplacian")
    plan = faults.round_plan(adj, W, 0.0, 0.0, seed=0, round_=3)
    assert plan.W is W and plan.active.all()


@pytest.mark.parametrize("kind", ["ring", "complete", "erdos_renyi"])
def test_surviving_mixing_is_doubly_stochastic_and_matches_reference(kind):
    adj = topo.build_graph(kind, 8, p=0.5, seed=1)
    W0 = topo.mixing_matrix(adj, "metropolis")
    changed = 0
    for t in range(1, 40):
        plan = faults.round_plan(adj, W0, 0.3, 0.2, seed=5, round_=t)
        W = plan.W
        assert np.allclose(W, W.T) and np.allclose(W.sum(0), 1) and np.allclose(W.sum(1), 1)
        assert np.all(W >= 0)
        off = (W > 0) & ~np.eye(8, dtype=bool)
        assert not (off & ~adj).any()  # only graph edges carry weight
        for i in np.flatnonzero(~plan.active):  # a node that sits out keeps its own adapter
            assert W[i, i] == 1.0 and off[i].sum() == 0
        up = np.array(
            [
                [
                    i != j and plan.active[i] and plan.active[j] and faults.link_up(5, t, i, j, 0.3)
                    for j in range(8)
                ]
                for i in range(8)
            ]
        )
        if not (up | ~adj).all():
            changed += 1
            assert np.allclose(W, reference_metropolis(adj, up))
    assert changed > 0


def test_simulator_run_with_faults_counts_only_active_nodes(tiny_model_dir, tiny_csv, tmp_path):
    args = [
        *tiny_args(tiny_model_dir, tiny_csv, tmp_path / "run"),
        "methods=[dec-lora]",
        "faults.node_drop=0.4",
        "faults.link_drop=0.3",
    ]
    assert main(["run", *args]) == 0
    records = [
        json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().split("\n")[:-1]
    ]
    adj = topo.build_graph("ring", 4)
    active = [int(faults.round_plan(adj, None, 0.3, 0.4, 0, t).active.sum()) for t in range(1, 7)]
    assert sum(active) < 24  # some node sat some round out
    per_step = 4 * 8  # local_steps x batch_size
    assert records[-1]["samples_seen"] == sum(active) * per_step
    assert np.isfinite(records[-1]["loss"])
