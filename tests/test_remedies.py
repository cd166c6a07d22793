"""The remedies against label skew, as the round plays them (in memory, hand-made nodes):
time-varying graphs average exactly after their period, relay holds the exact delayed
average from the tree's diameter on, tracking keeps the mean correction at 0, size weighting
moves the fixed point to the row-weighted optimum; and the combinations that are not sound
are refused in one line."""

from __future__ import annotations

import json
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from declora.algorithms import graphs
from declora.algorithms.methods import METHODS
from declora.algorithms.schedule import Schedule, relay_tree, schedule_for
from declora.algorithms.topology import surviving_mixing
from declora.config import ConfigError, load_config
from declora.harness.outputs import describe_graph
from declora.harness.runner import plan_of_round
from declora.harness.session import finish_rounds_of, graph_for
from declora.learning.dataset import Dataset
from declora.learning.train import MOMENT, Node, moment_template
from declora.protocol import wire
from declora.protocol.exchange import Exchange
from declora.protocol.gossip import Link
from declora.protocol.relay import RelayExchange
from declora.protocol.rounds import Party, communicate, play_round
from declora.protocol.tracking import TrackingExchange
from declora.runtimes.sim import MemoryTransport
from tests.helpers import load_benchmark
from tests.test_rounds import OneSided

HEAD = (3,)  # one tensor of 3 values stands for the adapter


# the built-in dec-lora with plain gossip of full-precision adapters at 70 rounds of 16 rows
# (its own 8-bit messages and 2 subrounds off), where the remedies and their checks are probed
GOSSIP = ["compression.kind=none", "subrounds=1"]


def make_party(values, make_exchange=Exchange, optimizer="sgd", lr=0.1, scales=None) -> Party:
    """Nodes 0..n-1, node i starting with every entry at values[i], one exchange each."""
    cfg = load_config(None, [f"optimizer={optimizer}", f"lr={lr}", "batch_size=2", "rounds=1"])
    data = Dataset([[1, 2]], np.array([0]), ["a", "b"])
    nodes, exchanges = [], []
    shared = {"head": torch.zeros(HEAD)}
    for i, v in enumerate(values):
        scale = 1.0 if scales is None else scales[i]
        node = Node.create(i, data, {"head": torch.full(HEAD, float(v))}, cfg, i, scale=scale)
        nodes.append(node)
        exchanges.append(make_exchange(i, shared))
    return Party(
        method=METHODS["dec-lora"],
        model=None,
        collate=None,
        nodes=nodes,
        exchanges=exchanges,
        steps=1,
        batch_size=2,
        size=len(values),
        mixing=None,
        link=Link(),
        warn=lambda line: None,
    )


def heads(party) -> np.ndarray:
    return np.array([n.params["head"].detach().numpy() for n in party.nodes])  # (n, 3)


def mix(party, W, t, transport=None, step=0):
    counters = party.counters()
    communicate(party, counters, W, t, transport or MemoryTransport(), step)
    return counters


@pytest.mark.parametrize(
    "kind,n,k", [("one_peer_exponential", 8, 1), ("base", 6, 1), ("base", 7, 2)]
)
def test_a_time_varying_graph_averages_exactly_after_its_period(kind, n, k):
    values = np.arange(n, dtype=float) ** 2
    party = make_party(values)
    g = Schedule.varying(kind, n, k)
    assert g.rounds_to_exact == g.period
    for t in range(1, g.period + 1):
        counters = mix(party, g.at(t), t)
        sent = [c.sent for c in counters.nodes.values()]
        payload = max(c.payload for c in counters.nodes.values())
        assert max(sent) <= k * payload  # at most k messages a node a round
    np.testing.assert_allclose(heads(party), values.mean(), rtol=1e-6)


@pytest.mark.parametrize("kind,n,k", [("base", 8, 1), ("base", 5, 1), ("base", 7, 2)])
def test_finishing_stops_at_the_fewest_rounds_that_multiply_to_the_average(kind, n, k):
    g, J = Schedule.varying(kind, n, k), np.full((n, n), 1 / n)
    for after in range(2 * g.period):  # a window may start anywhere in the period
        fewest = g.exact_within(after, 40)
        assert fewest is not None and g.exact_within(after, fewest - 1) is None
        ws = [g.at(after + t) for t in range(1, fewest + 1)]
        np.testing.assert_allclose(graphs.mixing_product(ws), J, atol=1e-12)
        if fewest > 1:  # one round fewer is not the average
            assert graphs.consensus_error(ws[:-1]) > 1e-6
    assert schedule_for("ring", 8).exact_within(70, 40) is None
    # 8 gossip steps a round: the ring's 0.805 ** 128 is below 1e-12 after 16 rounds, far
    # below what float32 adapters resolve
    assert schedule_for("ring", 8).with_steps(8).exact_within(70, 40) == 16
    assert schedule_for("complete", 5).exact_within(70, 40) == 1


def test_gossip_steps_walk_a_time_varying_graph_to_the_exact_average_every_round():
    """Base-2 on 8 nodes with 3 gossip steps a round: each step takes the graph's next
    matrix, so every round ends at the exact average (the same matrix 3 times would only
    average pairs), no finishing round is needed, and under faults each step's W is
    re-weighted on that step's edges (a link is down for the whole round)."""
    n, J = 8, graphs.consensus_matrix(8)
    g = Schedule.varying("base", n).with_steps(3)
    for t in range(1, 7):
        ws = [g.at(t, k) for k in range(3)]
        np.testing.assert_allclose(graphs.mixing_product(ws), J, atol=1e-12)
        assert graphs.consensus_error([ws[0]] * 3) > 0.5
    assert g.rounds_to_exact == 1 and Schedule.varying("base", n).rounds_to_exact == 3
    values = np.arange(n, dtype=float) ** 2
    party = replace(make_party(values), model=torch.nn.Identity(), mixing=g, gossip_steps=3)
    s = SimpleNamespace(cfg=load_config(None, []))
    play_round(party, party.counters(), 5, plan_of_round(s, party, 5), MemoryTransport(), False)
    np.testing.assert_allclose(heads(party), values.mean(), rtol=1e-6)
    base = [*GOSSIP, "topology.kind=base", "nodes=8", "finish_rounds=40"]
    for steps, finish in ((3, 0), (1, 3)):
        cfg = load_config(None, [*base, f"per_method.dec-lora.gossip_steps={steps}"])
        assert finish_rounds_of(cfg, "dec-lora") == finish
    s = SimpleNamespace(cfg=load_config(None, ["faults.link_drop=0.5", "seed=3"]))
    plan = plan_of_round(s, party, 5)
    for k in range(3):
        W, edges = plan.at_step(k), g.edges(5, k)
        np.testing.assert_allclose(W.sum(axis=0), 1.0)
        np.testing.assert_allclose(W, W.T)
        assert not (W[~edges & ~np.eye(n, dtype=bool)]).any()
    assert any(not np.array_equal(plan.at_step(k), g.at(5, k)) for k in range(3))


def test_period_gossip_steps_follow_the_graph():
    """The built-in ``gossip_steps: period``: Base-2's period on its nodes (3 on 8, 4 on 16,
    2 on 4), one-peer exponential's, and 1 on a static graph, so a user who moves the built-in
    job to the ring sends the ring's bytes (and may relay on it, its messages in full
    precision) without another setting."""
    by_graph = {
        (): 3,
        ("nodes=16",): 4,
        ("nodes=4",): 2,
        ("topology.kind=one_peer_exponential", "nodes=16"): 4,
        ("topology.kind=ring",): 1,
        ("topology.kind=ring", "exchange=relay", "compression.kind=none"): 1,
        ("topology.kind=complete",): 1,
    }
    for override, period in by_graph.items():
        cfg = load_config(None, list(override))
        assert cfg.per_method["dec-lora"].gossip_steps == "period"
        assert cfg.for_method("dec-lora").gossip_steps == period
        assert schedule_for(cfg.topology.kind, cfg.nodes).period == period
        assert cfg.for_method("fedavg").gossip_steps == 1
    assert load_config(None, ["gossip_steps=2"]).for_method("dec-lora").gossip_steps == 2
    with pytest.raises(ConfigError, match="from 1 to 100, or period"):
        load_config(None, ["gossip_steps=periodic"])


def test_one_peer_exponential_sends_one_message_a_round_half_the_rings():
    ring = schedule_for("ring", 8)
    one = Schedule.varying("one_peer_exponential", 8)
    assert one.directed and not ring.directed
    np.testing.assert_array_equal(one.messages(), np.ones(8))
    np.testing.assert_array_equal(ring.messages(), 2 * np.ones(8))
    assert one.gap == 1.0 and ring.gap == pytest.approx(0.1953, abs=1e-4)


def test_a_refusal_on_a_one_way_round_stops_the_round_naming_the_peer():
    party = make_party([0.0, 1.0, 2.0, 3.0])
    W = graphs.one_peer_exponential(4, 1)  # node i hears from i - 1
    both = "node 2 refused the message from node 1|node 2 did not accept node 1's message"
    with pytest.raises(wire.PeerError, match=both):
        mix(party, W, 1, OneSided(bad=1, victim=2))


def _relay_path(rows):
    """A path of 6 (the ring's spanning tree), node k weighted by rows[k] (or 1): its
    weights, tree, hop distances and party of relaying nodes, all at 0."""
    n = 6
    w = np.ones(n) if rows is None else np.array(rows, dtype=float)
    tree = relay_tree(schedule_for("ring", n))
    party = make_party(np.zeros(n), lambda i, s: RelayExchange(i, s, _nbrs(tree, i), w[i], w.sum()))
    return w, tree, _distances(tree.adj), party


def _delayed_average(sent, w, dist, i, t):
    """What node i holds after round t by the relay's exact rule: the average over k, by w,
    of what node k held after its steps in round t - d(i, k) + 1, the start (0) filling what
    has not arrived."""
    arrived = [k for k in range(len(w)) if t >= dist[i, k]]
    return np.sum([w[k] * sent[t - max(dist[i, k], 1)][k] for k in arrived], 0) / w.sum()


def _step_all(party, rng):
    """Every node moves by a random update (its local steps) and returns what it holds."""
    for node in party.nodes:
        node.set_state({"head": node.params["head"] + torch.tensor(rng.normal(size=HEAD))})
    return heads(party).copy()


@pytest.mark.parametrize("rows", [None, [10, 1, 1, 28, 3, 7]])
def test_relay_holds_the_exact_delayed_average_from_the_diameter_on(rows):
    """Random updates every round: node i holds the exact delayed average (by rows, or
    uniform), and every node's model has arrived from round ecc(i) <= the diameter on."""
    rng = np.random.default_rng(0)
    w, tree, dist, party = _relay_path(rows)
    n, diameter = len(w), graphs.tree_diameter(tree.adj)
    assert diameter == n - 1
    sent = []  # sent[t - 1][k]: what node k held after its steps in round t
    for t in range(1, 3 * n):
        sent.append(_step_all(party, rng))
        mix(party, tree.at(t), t)
        for i in range(n):
            want = _delayed_average(sent, w, dist, i, t)
            np.testing.assert_allclose(heads(party)[i], want, atol=1e-5)
            assert t >= dist[i].max() or t < diameter


def test_relay_is_exact_again_a_diameter_after_its_last_lost_message():
    """A tree link down in each of 5 rounds (both ways), after every count has arrived: each
    node keeps the last sum and count heard on a lost edge, so every weight stays counted
    (none is filled by the start); the nodes are off the exact rule while the losses last,
    and on it again a diameter's rounds after the last loss."""
    rng = np.random.default_rng(2)
    w, tree, dist, party = _relay_path([10, 1, 1, 28, 3, 7])
    n, diameter = len(w), graphs.tree_diameter(tree.adj)
    lossy = range(diameter + 1, diameter + 6)
    edges = np.argwhere(np.triu(tree.adj))
    sent, off = [], 0.0
    for t in range(1, lossy[-1] + 3 * n):
        sent.append(_step_all(party, rng))
        up = np.ones((n, n), dtype=bool)
        if t in lossy:  # the link down as under faults: the round's W without it
            a, b = edges[rng.integers(len(edges))]
            up[a, b] = up[b, a] = False
        mix(party, surviving_mixing(tree.adj, up), t)
        gaps = [
            abs(heads(party)[i] - _delayed_average(sent, w, dist, i, t)).max() for i in range(n)
        ]
        if t in lossy:
            off = max(off, *gaps)
            for i, ex in enumerate(party.exchanges):
                assert ex.weight + sum(c for _, c in ex.heard.values()) == w.sum(), (t, i)
        elif t >= lossy[-1] + diameter:
            assert max(gaps) < 1e-5, (t, gaps)
    assert off > 0.1  # the losses moved the nodes off the rule


def test_tracking_keeps_the_mean_correction_at_zero_on_any_doubly_stochastic_w():
    n, rng = 6, np.random.default_rng(1)
    party = make_party(rng.normal(size=n), lambda i, s: TrackingExchange(i, s))
    rounds = [schedule_for("ring", n).at(1), Schedule.varying("base", n).at(1)]
    rounds += [Schedule.varying("base", n).at(t) for t in (2, 3, 4)]
    for t, W in enumerate(rounds * 3, start=1):
        before = heads(party).mean(axis=0)
        delta = rng.normal(size=(n, *HEAD))
        for node, d in zip(party.nodes, delta):
            node.set_state({"head": node.params["head"] + torch.tensor(d, dtype=torch.float32)})
        mix(party, W, t)
        c = np.array([ex.c.numpy() for ex in party.exchanges])
        np.testing.assert_allclose(c.mean(axis=0), 0.0, atol=1e-5)
        # so the mean adapter moves by exactly the mean update
        np.testing.assert_allclose(heads(party).mean(0), before + delta.mean(0), atol=1e-5)


def _quadratic_steps(party, targets, steps):
    """``steps`` SGD steps on f_i(x) = ||x - a_i||^2 / 2 at every node (gradient x - a_i)."""
    for _ in range(steps):
        _quadratic_grads(party, targets)
        for node in party.nodes:
            node.apply_grads()


def _quadratic_grads(party, targets):
    """Set every node's gradient of f_i(x) = ||x - a_i||^2 / 2, x - a_i, without a step."""
    for node, a in zip(party.nodes, targets):
        p = node.params["head"]
        p.grad = (p.detach() - torch.tensor(a, dtype=torch.float32)).clone()


@pytest.mark.parametrize("weighting", ["uniform", "rows"])
@pytest.mark.parametrize("how", ["exact", "tracking"])
def test_size_weighting_moves_the_fixed_point_to_the_row_weighted_optimum(weighting, how):
    """Quadratics f_i = ||x - a_i||^2 / 2 with rows n_i: the pooled objective's optimum is
    sum(n_i a_i) / sum(n); the equal-weight one mean(a_i)."""
    n, rows = 4, np.array([40, 10, 5, 145])
    targets = np.array([[1.0, -2.0, 0.5], [3.0, 0.0, 1.0], [-1.0, 4.0, 2.0], [0.0, 1.0, -3.0]])
    scales = n * rows / rows.sum() if weighting == "rows" else np.ones(n)
    tracking = lambda i, s: TrackingExchange(i, s)  # noqa: E731
    party = make_party(
        np.zeros(n), tracking if how == "tracking" else Exchange, lr=0.05, scales=scales
    )
    W = np.full((n, n), 1 / n) if how == "exact" else schedule_for("ring", n).at(1)
    for t in range(1, 400):
        _quadratic_steps(party, targets, 1)
        mix(party, W, t)
    want = (rows[:, None] * targets).sum(0) / rows.sum() if weighting == "rows" else targets.mean(0)
    np.testing.assert_allclose(heads(party), np.broadcast_to(want, (n, 3)), atol=2e-3)


def _mixed_moments(party) -> None:
    """second_moment=mixed on a hand-made party: each node mixes its AdamW second moment."""
    for node, ex in zip(party.nodes, party.exchanges):
        node.moments = True
        assert list(ex.template) == ["head", MOMENT + "head"]


def test_mixed_second_moments_are_averaged_with_the_adapter_and_the_first_stays_own():
    n = 4
    party = make_party(np.zeros(n), lambda i, s: Exchange(i, moment_template(s)), "adamw", 0.01)
    _mixed_moments(party)
    _quadratic_steps(party, np.arange(n * 3.0).reshape(n, 3) ** 2, 2)
    v = np.array(
        [node.optimizer.state[node.params["head"]]["exp_avg_sq"].numpy() for node in party.nodes]
    )
    m = np.array(
        [node.optimizer.state[node.params["head"]]["exp_avg"].numpy() for node in party.nodes]
    )
    x = heads(party)
    mix(party, np.full((n, n), 1 / n), 1)
    for node in party.nodes:
        state = node.optimizer.state[node.params["head"]]
        np.testing.assert_allclose(state["exp_avg_sq"].numpy(), v.mean(0), rtol=1e-6)
        np.testing.assert_allclose(state["exp_avg"].numpy(), m[node.node_id])
    np.testing.assert_allclose(heads(party), np.broadcast_to(x.mean(0), x.shape), rtol=1e-6)
    J = np.full((n, n), 1 / n)
    payload = {c.payload for c in mix(party, J, 2).nodes.values()}
    plain = {c.payload for c in mix(make_party(np.zeros(n)), J, 1).nodes.values()}
    assert payload == {plain.pop() + 3 * 4}  # the moments: one float32 per adapter value more


@pytest.mark.parametrize("moments", ["own", "mixed"])
def test_mixed_second_moments_move_adamw_to_the_optimum_of_the_mean_loss(moments):
    """f_i = (x - a_i)^2 / 2 with a = 0, 0, 0, 10, averaged exactly every round. Each node's
    own AdamW normalises its own gradient, so near a fixed point every node steps by about
    lr x sign(x - a_i): the network stops where the signs cancel, at the targets' median, 0,
    not at the mean loss's optimum 2.5. With the second moment mixed every node divides by
    the same estimate, the mean step is about the mean gradient's, and the network reaches 2.5."""
    n, targets = 4, np.array([[0.0] * 3, [0.0] * 3, [0.0] * 3, [10.0] * 3])
    make = (lambda i, s: Exchange(i, moment_template(s))) if moments == "mixed" else Exchange
    party = make_party(np.zeros(n), make, "adamw", 0.004)  # the head learns at 5x: 0.02
    if moments == "mixed":
        _mixed_moments(party)
    for t in range(1, 1500):
        _quadratic_steps(party, targets, 1)
        mix(party, np.full((n, n), 1 / n), t)
    want = 2.5 if moments == "mixed" else 0.0
    np.testing.assert_allclose(heads(party), want, atol=0.1)


@pytest.mark.parametrize("weighting", ["uniform", "rows"])
def test_mixed_gradients_keep_the_nodes_one_model_at_the_pooled_optimum(weighting):
    """exchange=gradients on the quadratics where mixing the models after each node's own
    AdamW stops at the targets' median (above): the nodes mix each step's gradient (times
    n n_i / sum(n) under rows) before their AdamW takes it, so they stay one model, with one
    optimizer state, and reach the optimum of the pooled loss: 2.5 with equal weights,
    sum(n_i a_i) / sum(n) = 7.25 with these rows."""
    n, rows = 4, np.array([40, 10, 5, 145])
    targets = np.array([[0.0] * 3, [0.0] * 3, [0.0] * 3, [10.0] * 3])
    scales = n * rows / rows.sum() if weighting == "rows" else np.ones(n)
    party = make_party(np.zeros(n), Exchange, "adamw", 0.01, scales=scales)
    for node in party.nodes:
        node.gradients = True
    J = np.full((n, n), 1 / n)
    for t in range(1, 500):
        _quadratic_grads(party, targets)
        for node in party.nodes:
            node.scale_grads()
        mix(party, J, t)
        mix(party, J, t, step=1)  # a second step leaves the exact average as it is
        for node in party.nodes:
            node.apply_grads()
        np.testing.assert_allclose(heads(party), heads(party)[[0] * n], rtol=1e-6, atol=1e-6)
    want = 7.25 if weighting == "rows" else 2.5
    np.testing.assert_allclose(heads(party), want, atol=0.1)


def test_the_run_says_that_the_nodes_mix_gradients():
    cfg = load_config(None, [*GOSSIP, "exchange=gradients"])
    line = describe_graph(SimpleNamespace(cfg=cfg, graph=graph_for(cfg)))
    assert "exact average every round" in line and "gradient mixed before the optimizer" in line


@pytest.mark.parametrize(
    "override,mixed",
    [
        ([], True),  # the built-in job's Base-2, plain gossip, AdamW
        (["topology.kind=ring"], True),
        (["compression.kind=quantize"], False),
        (["consensus=product"], False),
        (["exchange=relay", "topology.kind=ring", "gossip_steps=1"], False),
        (["correction=tracking", "gossip_steps=1"], False),
        (["exchange=gradients"], False),
        (["optimizer=sgd"], False),
    ],
)
def test_auto_mixes_the_second_moment_where_it_applies_and_nowhere_else(override, mixed):
    assert load_config(None, [*GOSSIP, "second_moment=auto", *override]).moments_mixed() is mixed
    assert not load_config(None, [*GOSSIP, *override]).moments_mixed()  # each node's own


@pytest.mark.parametrize(
    "override,message",
    [
        (["topology.kind=one_peer_exponential", "faults.link_drop=0.1"], "one way"),
        (["topology.kind=one_peer_exponential", "compression.scheme=choco"], "one way"),
        (["exchange=relay", "topology.kind=base", "gossip_steps=1"], "fixed spanning tree"),
        (
            ["exchange=relay", "compression.kind=quantize", "topology.kind=ring", "gossip_steps=1"],
            "every hop",
        ),
        (
            ["exchange=relay", "consensus=product", "topology.kind=ring", "gossip_steps=1"],
            "consensus=ab",
        ),
        (
            ["exchange=relay", "correction=tracking", "topology.kind=ring", "gossip_steps=1"],
            "already averages exactly",
        ),
        (
            ["exchange=relay", "per_method.dec-lora.gossip_steps=2", "topology.kind=ring"],
            "once a round",
        ),
        (["correction=tracking", "compression.scheme=choco", "gossip_steps=1"], "plain vectors"),
        (["correction=tracking", "consensus=product", "gossip_steps=1"], "plain vectors"),
        (["correction=tracking", "gossip_steps=2", "per_method={}"], "once a round"),
        (["second_moment=mixed", "optimizer=sgd"], "keeps none"),
        (
            ["second_moment=mixed", "exchange=relay", "topology.kind=ring", "gossip_steps=1"],
            "gossip's remedy",
        ),
        (["second_moment=mixed", "correction=tracking", "gossip_steps=1"], "gossip's remedy"),
        (["second_moment=mixed", "compression.kind=quantize"], "plain vectors"),
        (["second_moment=mixed", "consensus=product"], "plain vectors"),
        (["exchange=gradients", "topology.kind=ring"], "exact average every round"),
        (["exchange=gradients", "per_method.dec-lora.gossip_steps=2"], "exact average"),
        (["exchange=gradients", "topology.kind=one_peer_exponential", "nodes=6"], "exact"),
        (["exchange=gradients", "faults.node_drop=0.1"], "every message"),
        (["exchange=gradients", "compression.kind=quantize"], "plain vectors"),
        (["exchange=gradients", "consensus=frozen_a"], "plain vectors"),
        (["exchange=gradients", "correction=tracking"], "plain vectors"),
        (["exchange=gradients", "local_steps=2"], "local_steps=1"),
        (["exchange=gradients", "second_moment=mixed"], "gossip's remedy"),
        (["exchange=gradients", "precision=fp16"], "same optimizer state"),
        (["topology.degree=0"], "topology.degree"),
        (["exchange=push"], "exchange"),
    ],
)
def test_unsound_combinations_are_refused_in_one_line(override, message):
    with pytest.raises(ConfigError, match=message) as err:
        load_config(None, [*GOSSIP, *override])
    assert "\n" not in str(err.value)


def _nbrs(tree: Schedule, i: int) -> list[int]:
    return np.flatnonzero(tree.adj[i]).tolist()


def _distances(adj: np.ndarray) -> np.ndarray:
    """All-pairs hop distances by Floyd-Warshall (independent of the module's BFS)."""
    n = len(adj)
    d = np.where(adj, 1.0, np.inf)
    np.fill_diagonal(d, 0)
    for k in range(n):
        d = np.minimum(d, d[:, k : k + 1] + d[k : k + 1, :])
    return d.astype(int)


def test_a_party_is_read_only():
    party = make_party([0.0, 1.0])
    with pytest.raises(AttributeError):
        party.steps = 3  # type: ignore[misc]
    assert replace(party, steps=3).steps == 3


def test_the_start_up_handshake_tells_every_node_the_rows_of_every_other():
    """Per-site files: a node knows only its own rows; weighting=rows needs them all."""
    from declora.protocol import handshake

    cfg = load_config(None, ["nodes=3", "weighting=rows"])
    key = b"k" * 32
    offers = [
        handshake.offer(cfg, bytes([i]) * handshake.NONCE_BYTES, [], i, key, "", rows)
        for i, rows in enumerate([120, 7, 3000])
    ]
    for rank in range(3):
        agreed = handshake.agree(cfg, offers, rank, key, warn=lambda line: None)
        assert agreed.rows == (120, 7, 3000) and agreed.round == 0


def test_skew_study_keeps_its_record_when_runs_are_gone(tmp_path, monkeypatch):
    """benchmarks/skew.py's table is rebuilt from results/ (runs/ is not kept): a fresh clone
    regenerates the same rows, and a run finished here replaces its seed's entry."""
    skew = load_benchmark("skew")
    results, runs = tmp_path / "results", tmp_path / "runs"
    (results / "skew").mkdir(parents=True)
    kept = {"ring": {"Dirichlet 0.5": {"0": {"accuracy": 0.5, "bytes_sent_per_node": 1e6}}}}
    (results / "skew.json").write_text(json.dumps(kept))
    (results / "skew" / "choose.json").write_text(json.dumps({"Base-2": {"0": 0.7}}))
    monkeypatch.setattr(skew, "RESULTS", results)
    monkeypatch.setattr(skew, "RUNS", runs)
    assert skew.summaries() == kept
    done = runs / "choose" / "base-2" / "seed_1" / "trials.csv"
    done.parent.mkdir(parents=True)
    done.write_text("number,validation_accuracy\n0,0.81234\n")
    assert skew.choices() == {"Base-2": {"0": 0.7, "1": 0.8123}}
    assert skew.choice_rows(skew.choices(), ("Base-2",))[2] == "| Base-2 | 0.700 | 0.812 |  |  |"


def test_every_cell_of_the_skew_study_is_a_config_the_run_accepts():
    """Each variant x partition that ``skew.py test`` runs loads as ``declora run`` loads it:
    a refusal (mixed gradients on 16 nodes need Base-2's whole period a round) shows here,
    not as an empty cell after hours of the study."""
    skew = load_benchmark("skew")
    for name, (method, _) in skew.VARIANTS.items():
        start = skew.start_of(name)
        path = start[0] if start and start[0].endswith(".yaml") else None
        rest = start[1:] if path else start
        for part in skew.PARTITIONS:
            args = [*rest, f"methods=[{method}]", *skew.COMMON, *skew.overrides(name, part)]
            cfg = load_config(path, args)
            assert cfg.nodes == (16 if "16 nodes" in part else 8), (name, part)
