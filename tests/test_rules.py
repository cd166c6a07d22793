"""Consensus rules (config ``consensus``): ab, frozen_a and product, against independent numpy
computations, on tiny tensors and the tiny random model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from declora.algorithms import topology as topo
from declora.algorithms.compress import HEADER, payload_size
from declora.algorithms.consensus import (
    consensus_distances,
    exchanged_keys,
    network_average,
    product_row,
    refactor,
)
from declora.algorithms.tensors import is_lora_a, numel
from declora.config import CompressionConfig, ConfigError, load_config
from declora.protocol.exchange import Exchange
from declora.runtimes.sim import run
from tests.helpers import tiny_args
from tests.reference import exchange_round, mix, mix_products

RANK = 3
SHAPES = {  # PEFT orientation: lora_A (r, d_in), lora_B (d_out, r)
    "q.lora_A.w": (RANK, 7),
    "q.lora_B.w": (6, RANK),
    "v.lora_A.w": (RANK, 5),
    "v.lora_B.w": (4, RANK),
    "head.w": (2, 6),
}
PAIRS = [("q.lora_A.w", "q.lora_B.w"), ("v.lora_A.w", "v.lora_B.w")]


def random_states(n: int, seed: int = 0, dtype=torch.float64) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [
        {k: torch.randn(s, generator=g, dtype=torch.float64).to(dtype) for k, s in SHAPES.items()}
        for _ in range(n)
    ]


def ring(n: int) -> np.ndarray:
    return topo.mixing_matrix(topo.build_graph("ring", n), "metropolis")


def numpy_rank_r(P: np.ndarray, r: int) -> np.ndarray:
    U, S, Vt = np.linalg.svd(P, full_matrices=False)
    return (U[:, :r] * S[:r]) @ Vt[:r]


# --- product ---------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [3, 5])
def test_product_rule_is_the_rank_r_svd_of_the_mixed_products(n):
    W = ring(n)
    states = random_states(n, seed=n)
    mixed = mix_products(states, W)
    for i in range(n):
        for ka, kb in PAIRS:
            P = sum(W[i, j] * (states[j][kb].numpy() @ states[j][ka].numpy()) for j in range(n))
            got = mixed[i][kb].numpy() @ mixed[i][ka].numpy()
            np.testing.assert_allclose(got, numpy_rank_r(P, RANK), rtol=1e-9, atol=1e-11)
            assert mixed[i][ka].shape == SHAPES[ka] and mixed[i][kb].shape == SHAPES[kb]
        # the head is mixed as usual
        head = sum(W[i, j] * states[j]["head.w"].numpy() for j in range(n))
        np.testing.assert_allclose(mixed[i]["head.w"].numpy(), head, rtol=1e-12)


def test_product_rule_leaves_an_agreed_adapter_unchanged():
    same = random_states(1, seed=4, dtype=torch.float32)[0]
    W = ring(4)
    mixed = mix_products([same] * 4, W)
    for s in mixed:
        for ka, kb in PAIRS:
            torch.testing.assert_close(s[kb] @ s[ka], same[kb] @ same[ka], rtol=1e-5, atol=1e-5)
            assert s[ka].dtype == torch.float32 and s[ka].shape == same[ka].shape
        torch.testing.assert_close(s["head.w"], same["head.w"])


def test_refactor_orientation_and_balance():
    g = torch.Generator().manual_seed(1)
    P = torch.randn(6, 9, generator=g, dtype=torch.float64)
    B, A = refactor(P, 2)
    assert B.shape == (6, 2) and A.shape == (2, 9)
    np.testing.assert_allclose((B @ A).numpy(), numpy_rank_r(P.numpy(), 2), atol=1e-12)
    # balanced: B^T B = A A^T = S_r
    torch.testing.assert_close(B.T @ B, A @ A.T)
    # rank above min(d_out, d_in): the extra factors are zero, the product is exact
    B, A = refactor(P[:2], 4)
    assert B.shape == (2, 4) and A.shape == (4, 9)
    torch.testing.assert_close(B @ A, P[:2])


@pytest.mark.parametrize("kind", ["none", "quantize"])
def test_product_exchange_equals_the_matrix_form(kind):
    """The Exchange (what both runtimes call) gives mix_products on the decoded messages."""
    n, W = 4, ring(4)
    states = random_states(n, seed=2, dtype=torch.float32)
    spec = CompressionConfig(kind=kind, bits=16)
    exchanges = [Exchange(i, states[0], spec, seed=0, consensus="product") for i in range(n)]
    got, payloads = exchange_round(exchanges, states, W)
    assert len(payloads[0]) == payload_size([v.numel() for v in states[0].values()], spec)
    expected = mix_products(states, W)
    for g_state, e_state in zip(got, expected):
        for ka, kb in PAIRS:
            tol = 1e-5 if kind == "none" else 1e-3
            torch.testing.assert_close(
                g_state[kb] @ g_state[ka], e_state[kb] @ e_state[ka], rtol=tol, atol=tol
            )


def test_product_rule_alone_keeps_its_factors():
    state = random_states(1, seed=5, dtype=torch.float32)[0]
    ex = Exchange(0, state, seed=0, consensus="product")
    out = ex.incoming(state, {}, {0: 0.5, 1: 0.5})  # neighbour 1 missing: weight to self
    for k in state:
        assert torch.equal(out[k], state[k])
    assert product_row(state, 1.0, {}).keys() == state.keys()


# --- frozen_a ---------------------------------------------------------------------------------


def test_frozen_a_payload_holds_b_and_head_only():
    state = random_states(1, dtype=torch.float32)[0]
    ex = Exchange(0, state, seed=0, consensus="frozen_a")
    keys = exchanged_keys(state, "frozen_a")
    assert keys == ["q.lora_B.w", "v.lora_B.w", "head.w"] and list(ex.template) == keys
    payload = ex.outgoing(state, 1)
    assert len(payload) == 4 * numel({k: state[k] for k in keys}) + HEADER.size
    full = Exchange(0, state, seed=0, consensus="ab").outgoing(state, 1)
    assert len(full) == 4 * numel(state) + HEADER.size


@pytest.mark.parametrize(
    "spec",
    [
        CompressionConfig(),
        CompressionConfig(kind="quantize", bits=8, block=4),
        CompressionConfig(kind="quantize", bits=4, scheme="choco"),
    ],
    ids=["none", "q8", "q4-choco"],
)
def test_frozen_a_mixing_is_exact_in_product_space(spec):
    """B mixed with W, times the shared A, equals the mixed products; A never moves."""
    n, W = 5, ring(5)
    states = random_states(n, seed=3, dtype=torch.float32)
    for s in states[1:]:  # one seeded A everywhere
        s.update({k: v.clone() for k, v in states[0].items() if is_lora_a(k)})
    exchanges = [Exchange(i, states[0], spec, seed=0, consensus="frozen_a") for i in range(n)]
    got, _ = exchange_round(exchanges, states, W)
    for i, s in enumerate(got):
        for ka, kb in PAIRS:
            assert torch.equal(s[ka], states[0][ka])
            if spec.kind == "none":
                mixed_products = sum(W[i, j] * (states[j][kb] @ states[j][ka]) for j in range(n))
                torch.testing.assert_close(s[kb] @ s[ka], mixed_products, rtol=1e-5, atol=1e-5)
    if spec.kind == "none":  # exactly mix() on B and head
        ref = mix(states, W)
        for s, r in zip(got, ref):
            for k in ("q.lora_B.w", "head.w"):
                torch.testing.assert_close(s[k], r[k])


def test_frozen_a_tiny_run_keeps_every_a_at_its_seed(tiny_model_dir, tiny_csv, tmp_path):
    from declora.algorithms.methods import METHODS
    from declora.harness import session
    from declora.harness.runner import plan_of_round
    from declora.protocol.rounds import play_round
    from declora.runtimes.sim import MemoryTransport

    cfg = load_config(None, [*tiny_args(tiny_model_dir, tiny_csv, tmp_path), "consensus=frozen_a"])
    s = session.prepare(cfg)
    party = session.party_for(s, METHODS["dec-lora"])
    counters = party.counters()
    for t in (1, 2):
        play_round(party, counters, t, plan_of_round(s, party, t), MemoryTransport())
    nodes = party.nodes
    a_keys = [k for k in s.init if is_lora_a(k)]
    assert a_keys
    for node in nodes:
        for k in a_keys:
            assert torch.equal(node.params[k], s.init[k])
            assert not node.params[k].requires_grad
        assert not torch.equal(
            node.params[k.replace("lora_A", "lora_B")], s.init[k.replace("lora_A", "lora_B")]
        )
    b_and_head = {k: v for k, v in s.init.items() if not is_lora_a(k)}
    assert counters.nodes[0].payload == 4 * numel(b_and_head) + HEADER.size
    assert numel(b_and_head) < numel(s.init)
    assert np.isfinite(consensus_distances([n.state() for n in nodes])["consensus_ab"])


# --- every rule, end to end -------------------------------------------------------------------


@pytest.fixture(scope="module")
def summaries(tiny_model_dir, tiny_csv, tmp_path_factory):
    base = [
        *tiny_args(tiny_model_dir, tiny_csv, "unused"),
        "methods=[dec-lora]",
        "export_adapters=false",
        "rounds=3",
        "eval_every=3",
    ]
    out = {}
    for name, extra in [
        ("none", []),
        ("ab", ["consensus=ab"]),
        ("frozen_a", ["consensus=frozen_a"]),
        ("product", ["consensus=product"]),
    ]:
        folder = tmp_path_factory.mktemp(name) / "run"
        cfg = load_config(None, [*base, *extra, f"out={folder}"])
        run(cfg, echo=lambda *_: None)
        out[name] = (folder, json.loads((folder / "summary.json").read_text()))
    return out


def test_ab_is_the_default_bit_for_bit(summaries):
    drop = {"wall_s"}
    a, b = (
        {k: v for k, v in summaries[x][1]["methods"]["dec-lora"].items() if k not in drop}
        for x in ("none", "ab")
    )
    assert a == b


@pytest.mark.parametrize("rule", ["ab", "frozen_a", "product"])
def test_every_rule_reports_the_product_consensus_error(summaries, rule):
    m = summaries[rule][1]["methods"]["dec-lora"]
    assert np.isfinite(m["consensus_ab"]) and m["consensus_ab"] >= 0
    assert np.isfinite(m["loss"])


def test_frozen_a_sends_fewer_bytes_than_ab_and_product_the_same(summaries):
    per_edge = {
        r: summaries[r][1]["methods"]["dec-lora"]["bytes_per_edge_round"] for r in summaries
    }
    assert per_edge["product"] == per_edge["ab"]
    assert per_edge["frozen_a"] < per_edge["ab"]


def test_bad_rule_is_a_one_line_config_error():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["consensus=foo"])
    msg = str(err.value)
    assert "consensus" in msg and "\n" not in msg
    with pytest.raises(ConfigError, match="consensus=product"):
        load_config(None, ["consensus=product", "compression.scheme=choco"])


def test_product_rule_keeps_agreed_factors_and_stays_near_the_old_ones():
    """At consensus, with A's rows orthogonal and of one norm (as LoRA's random A nearly is),
    the rule is the identity: the SVD alone would flip signs, reorder and rescale. In general A
    keeps the node's size and the factors move no further than the raw SVD's would."""
    g = torch.Generator().manual_seed(7)
    state = random_states(1, seed=6)[0]
    for ka, _ in PAIRS:  # A = 0.3 x orthonormal rows
        d_in = state[ka].shape[1]
        Q, _ = torch.linalg.qr(torch.randn(d_in, RANK, generator=g, dtype=torch.float64))
        state[ka] = 0.3 * Q.T
    mixed = mix_products([state] * 3, ring(3))
    for s in mixed:
        for ka, kb in PAIRS:
            torch.testing.assert_close(s[kb], state[kb], rtol=1e-9, atol=1e-9)
            torch.testing.assert_close(s[ka], state[ka], rtol=1e-9, atol=1e-9)
    states = random_states(3, seed=8)
    for i, s in enumerate(mix_products(states, ring(3))):
        for ka, kb in PAIRS:
            old_a = states[i][ka]
            assert float(s[ka].norm()) == pytest.approx(float(old_a.norm()), rel=1e-9)
            scale = float(old_a.norm()) / RANK**0.5
            raw_B, raw_A = refactor(s[kb] @ s[ka], RANK, scale)
            moved = (s[kb] - states[i][kb]).norm() ** 2 + (s[ka] - old_a).norm() ** 2
            raw = (raw_B - states[i][kb]).norm() ** 2 + (raw_A - old_a).norm() ** 2
            assert moved <= raw + 1e-12


def test_product_rule_keeps_a_when_b_is_zero():
    """LoRA's start (B = 0): the product is 0, and A must stay as it was, not collapse to 0."""
    state = random_states(1, seed=9)[0]
    for _, kb in PAIRS:
        state[kb] = torch.zeros_like(state[kb])
    for s in mix_products([state] * 3, ring(3)):
        for ka, kb in PAIRS:
            assert torch.equal(s[ka], state[ka]) and not torch.any(s[kb])


def test_network_average_under_product_is_the_mean_product():
    """Nodes under ``product`` agree on B_i A_i, not on their factors: the network's adapter is
    the rank-r SVD of the mean product, not the product of mean factors."""
    states = random_states(4, seed=11)
    avg = network_average(states, "product")
    for ka, kb in PAIRS:
        P = sum(s[kb].numpy() @ s[ka].numpy() for s in states) / 4
        got = avg[kb].numpy() @ avg[ka].numpy()
        np.testing.assert_allclose(got, numpy_rank_r(P, RANK), rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(
        avg["head.w"].numpy(), np.mean([s["head.w"].numpy() for s in states], 0), rtol=1e-12
    )
    plain = network_average(states, "ab")
    for k in states[0]:
        torch.testing.assert_close(plain[k], torch.stack([s[k] for s in states]).mean(0))
