"""Gossip maths against an independent numpy computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from declora.algorithms import topology as topo
from declora.algorithms.consensus import average, consensus_distances, mix_row
from tests.reference import mix, neighbours

GRAPHS = [
    ("ring", 8),
    ("ring", 5),
    ("grid", 9),
    ("erdos_renyi", 10),
    ("exponential", 8),
    ("star", 6),
]


def random_states(n: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    shapes = {"m.lora_A.w": (4, 6), "m.lora_B.w": (5, 4), "head.w": (2, 5)}
    return [
        {k: torch.randn(s, generator=g, dtype=torch.float64) for k, s in shapes.items()}
        for _ in range(n)
    ]


@pytest.mark.parametrize(("kind", "n"), GRAPHS)
@pytest.mark.parametrize("rule", ["metropolis", "laplacian", "uniform"])
def test_t_rounds_of_mixing_equal_w_to_the_t(kind, n, rule):
    W = topo.mixing_matrix(topo.build_graph(kind, n, p=0.5, seed=3), rule)
    states = random_states(n)
    x0 = {k: np.stack([s[k].numpy() for s in states]) for k in states[0]}  # (n, *shape)
    t = 7
    for _ in range(t):
        states = mix(states, W)
    Wt = np.linalg.matrix_power(W, t)
    for k, x in x0.items():
        expected = np.tensordot(Wt, x, axes=1)
        got = np.stack([s[k].numpy() for s in states])
        np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(("kind", "n"), GRAPHS)
def test_consensus_distance_shrinks_at_least_as_fast_as_the_spectral_gap_predicts(kind, n):
    """||X_t - mean|| <= (1 - gap)^t ||X_0 - mean|| for symmetric doubly stochastic W."""
    W = topo.mixing_matrix(topo.build_graph(kind, n, p=0.5, seed=3), "metropolis")
    rate = 1 - topo.spectral_gap(W)
    states = random_states(n, seed=1)

    def spread(sts):
        x = np.stack([np.concatenate([v.numpy().ravel() for v in s.values()]) for s in sts])
        return np.linalg.norm(x - x.mean(0))

    d0 = spread(states)
    for t in range(1, 16):
        states = mix(states, W)
        assert spread(states) <= rate**t * d0 * (1 + 1e-9)


def test_mixing_preserves_the_network_average():
    W = topo.mixing_matrix(topo.build_graph("ring", 6), "metropolis")
    states = random_states(6)
    before, after = average(states), average(mix(states, W))
    for k in before:
        torch.testing.assert_close(after[k], before[k])


def test_one_row_equals_the_matrix_form():
    """What a distributed node computes for itself matches the simulator's row."""
    adj = topo.build_graph("erdos_renyi", 7, p=0.5, seed=2)
    W = topo.mixing_matrix(adj, "metropolis")
    states = random_states(7)
    full = mix(states, W)
    for i in range(7):
        received = {j: (W[i, j], states[j]) for j in neighbours(adj, i)}
        row = mix_row(states[i], W[i, i], received)
        for k in row:
            torch.testing.assert_close(row[k], full[i][k], rtol=1e-12, atol=1e-12)


def test_consensus_distances_by_hand():
    a = torch.eye(2, dtype=torch.float64)
    states = [
        {"m.lora_A.w": a, "m.lora_B.w": 1.0 * a},
        {"m.lora_A.w": a, "m.lora_B.w": 3.0 * a},
    ]
    d = consensus_distances(states)
    assert d["consensus_a"] == 0.0
    # products are I and 3I, mean 2I: each node is ||I||_F away, relative to ||2I||_F -> 0.5
    assert d["consensus_b"] == pytest.approx(0.5)
    assert d["consensus_ab"] == pytest.approx(0.5)


def test_factor_average_is_not_product_average():
    """The pitfall the consensus rules address: mean(B) @ mean(A) != mean(B @ A)."""
    states = random_states(4)
    mean_of_products = torch.stack([s["m.lora_B.w"] @ s["m.lora_A.w"] for s in states]).mean(0)
    avg = average(states)
    product_of_means = avg["m.lora_B.w"] @ avg["m.lora_A.w"]
    assert not torch.allclose(mean_of_products, product_of_means)
    assert np.isnan(
        consensus_distances([{"m.lora_A.w": a, "m.lora_B.w": 0 * a} for a in [torch.eye(2)] * 2])[
            "consensus_ab"
        ]
    )


def test_equal_adapters_are_found_bit_for_bit_and_nothing_else_is():
    from declora.algorithms.tensors import same_as_earlier

    a = {"x.lora_A.weight": torch.ones(2, 3), "head": torch.zeros(2)}
    near = {k: v.clone() for k, v in a.items()}
    near["head"][1] = torch.nextafter(torch.tensor(0.0), torch.tensor(1.0))  # one ulp away
    copy = {k: v.clone() for k, v in a.items()}
    other_keys = {"x.lora_A.weight": torch.ones(2, 3)}
    assert same_as_earlier([a, near, copy, other_keys, near]) == [0, 1, 0, 3, 1]
    assert same_as_earlier([]) == []
