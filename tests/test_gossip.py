"""One node's exchange (:class:`declora.protocol.exchange.Exchange`) on small hand-made adapters: the direct
scheme's weighted sum, missing and stray payloads, ``frozen_a`` messages, CHOCO's public copies
and their checkpoint round trip, the seeding of the rounding noise, and ``row_weights``.
Expected values are computed apart from the package, with numpy in float64."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from declora.algorithms.compress import HEADER, decompress
from declora.config import CompressionConfig
from declora.protocol.exchange import Exchange, row_weights
from tests.reference import exchange_round

RANK = 3
SHAPES = {  # PEFT orientation: lora_A (r, d_in), lora_B (d_out, r); then a task head
    "m.lora_A.w": (RANK, 5),
    "m.lora_B.w": (4, RANK),
    "n.lora_A.w": (RANK, 4),
    "n.lora_B.w": (6, RANK),
    "head.w": (2, 4),
    "head.b": (2,),
}
A_KEYS = ["m.lora_A.w", "n.lora_A.w"]
NOT_A = [k for k in SHAPES if k not in A_KEYS]

# rows of mixing weights {node: W_ij} for node 0, self included; they need not sum to 1 here
ROWS = {
    "ring": {0: 1 / 3, 1: 1 / 3, 3: 1 / 3},
    "uneven": {0: 0.5, 1: 0.2, 2: 0.05, 3: 0.25},
    "one-neighbour": {0: 0.4, 2: 0.6},
    "no-self-weight": {1: 0.7, 3: 0.3},
}


def spec(**kw) -> CompressionConfig:
    return CompressionConfig(**kw)


def template(seed: int = 100) -> dict[str, torch.Tensor]:
    """The shared initial adapter: random A, B at zero (LoRA's start), random head."""
    g = torch.Generator().manual_seed(seed)
    return {
        k: torch.zeros(s) if ".lora_B." in k else torch.randn(s, generator=g)
        for k, s in SHAPES.items()
    }


def states(n: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """n adapters that differ in every tensor (A included)."""
    g = torch.Generator().manual_seed(seed)
    return [{k: torch.randn(s, generator=g) for k, s in SHAPES.items()} for _ in range(n)]


def flat_np(state: dict[str, torch.Tensor], keys) -> np.ndarray:
    return np.concatenate([state[k].numpy().astype(np.float64).ravel() for k in keys])


def ring_w(n: int) -> np.ndarray:
    """Metropolis weights of a ring, written out by hand: 1/3 on self and both neighbours."""
    W = np.zeros((n, n))
    for i in range(n):
        for j in (i - 1, i, i + 1):
            W[i, j % n] = 1 / 3
    return W


# --- direct scheme ---------------------------------------------------------------------------


@pytest.mark.parametrize("row", list(ROWS.values()), ids=list(ROWS))
@pytest.mark.parametrize("consensus", ["ab", "frozen_a"])
def test_uncompressed_direct_exchange_is_the_weighted_sum(row, consensus):
    """x_0 <- W_00 x_0 + sum_j W_0j x_j for every exchanged tensor; under frozen_a A stays."""
    xs = states(4, seed=1)
    exchanges = [Exchange(i, template(), spec(), consensus=consensus) for i in range(4)]
    received = {j: exchanges[j].outgoing(xs[j], 1) for j in row if j != 0}
    got = exchanges[0].incoming(xs[0], received, dict(row))
    assert list(got) == list(SHAPES)
    for k in SHAPES:
        if consensus == "frozen_a" and k in A_KEYS:
            assert torch.equal(got[k], xs[0][k])
            continue
        own = row.get(0, 0.0) * xs[0][k].numpy().astype(np.float64)
        expected = own + sum(w * xs[j][k].numpy().astype(np.float64) for j, w in row.items() if j)
        np.testing.assert_allclose(got[k].numpy(), expected, rtol=1e-6, atol=1e-6)
        assert got[k].dtype == torch.float32 and got[k].shape == SHAPES[k]


@pytest.mark.parametrize(
    "missing", [[1], [3], [1, 3]], ids=lambda m: "missing-" + "-".join(map(str, m))
)
def test_a_missing_neighbour_gives_its_weight_to_the_node_itself(missing):
    row = ROWS["uneven"]
    xs = states(4, seed=2)
    exchanges = [Exchange(i, template()) for i in range(4)]
    received = {j: exchanges[j].outgoing(xs[j], 1) for j in row if j and j not in missing}
    got = exchanges[0].incoming(xs[0], received, dict(row))
    own_weight = row[0] + sum(row[j] for j in missing)
    for k in SHAPES:
        expected = own_weight * xs[0][k].numpy().astype(np.float64) + sum(
            row[j] * xs[j][k].numpy().astype(np.float64) for j in received
        )
        np.testing.assert_allclose(got[k].numpy(), expected, rtol=1e-6, atol=1e-6)


def test_every_neighbour_missing_leaves_the_adapter_as_it_was():
    x = states(1, seed=3)[0]
    got = Exchange(0, template()).incoming(x, {}, dict(ROWS["ring"]))
    for k in SHAPES:
        torch.testing.assert_close(got[k], x[k], rtol=1e-6, atol=1e-7)


def test_direct_quantized_exchange_mixes_decoded_neighbours_with_the_exact_own_adapter():
    """Only what crosses the wire is compressed: the node's own term is its exact adapter."""
    row = ROWS["uneven"]
    xs = states(4, seed=4)
    s = spec(kind="quantize", bits=2, block=8)
    exchanges = [Exchange(i, template(), s, seed=5) for i in range(4)]
    received = {j: exchanges[j].outgoing(xs[j], 7) for j in row if j}
    got = exchanges[0].incoming(xs[0], received, dict(row))
    sizes = [int(np.prod(SHAPES[k])) for k in SHAPES]
    expected = row[0] * flat_np(xs[0], SHAPES)
    for j, payload in received.items():
        expected += row[j] * decompress(payload, sizes).numpy().astype(np.float64)
    np.testing.assert_allclose(flat_np(got, SHAPES), expected, rtol=1e-6, atol=1e-6)
    # and 2-bit rounding is visible: the result is not the uncompressed mix
    exact = row[0] * flat_np(xs[0], SHAPES) + sum(row[j] * flat_np(xs[j], SHAPES) for j in received)
    assert np.abs(flat_np(got, SHAPES) - exact).max() > 1e-3


@pytest.mark.parametrize("scheme", ["direct", "choco"])
def test_a_payload_from_a_node_without_weight_is_refused(scheme):
    xs = states(4, seed=5)
    exchanges = [Exchange(i, template(), spec(scheme=scheme)) for i in range(4)]
    payloads = [ex.outgoing(x, 1) for ex, x in zip(exchanges, xs)]
    with pytest.raises(ValueError, match=r"\[2\]"):
        exchanges[0].incoming(xs[0], {1: payloads[1], 2: payloads[2]}, {0: 0.5, 1: 0.5})


def test_the_nodes_own_payload_among_the_received_ones_is_not_counted_twice():
    row = ROWS["ring"]
    xs = states(4, seed=6)
    exchanges = [Exchange(i, template()) for i in range(4)]
    payloads = [ex.outgoing(x, 1) for ex, x in zip(exchanges, xs)]
    with_self = exchanges[0].incoming(xs[0], {j: payloads[j] for j in row}, dict(row))
    without = exchanges[0].incoming(xs[0], {j: payloads[j] for j in row if j}, dict(row))
    for k in SHAPES:
        assert torch.equal(with_self[k], without[k])


# --- frozen_a --------------------------------------------------------------------------------


def test_frozen_a_message_is_b_and_head_in_template_order():
    x = states(1, seed=7)[0]
    ex = Exchange(0, template(), consensus="frozen_a")
    assert list(ex.template) == NOT_A
    assert ex.sizes == [int(np.prod(SHAPES[k])) for k in NOT_A]
    payload = ex.outgoing(x, 1)
    assert len(payload) == HEADER.size + 4 * sum(ex.sizes)
    np.testing.assert_array_equal(
        decompress(payload, ex.sizes).numpy(), flat_np(x, NOT_A).astype(np.float32)
    )
    full = Exchange(0, template(), consensus="ab")
    assert list(full.template) == list(SHAPES)
    assert len(full.outgoing(x, 1)) == HEADER.size + 4 * sum(full.sizes)


@pytest.mark.parametrize("scheme", ["direct", "choco"])
def test_frozen_a_never_touches_a_even_when_neighbours_hold_another_a(scheme):
    W = ring_w(4)
    xs = states(4, seed=8)  # every node a different A: the exchange must still keep its own
    exchanges = [
        Exchange(i, template(), spec(scheme=scheme), consensus="frozen_a") for i in range(4)
    ]
    got, _ = exchange_round(exchanges, xs, W, 1)
    for i, g in enumerate(got):
        for k in A_KEYS:
            assert torch.equal(g[k], xs[i][k])
        for k in NOT_A:
            expected = sum(W[i, j] * xs[j][k].numpy().astype(np.float64) for j in range(4))
            np.testing.assert_allclose(g[k].numpy(), expected, rtol=1e-6, atol=1e-6)


# --- CHOCO -----------------------------------------------------------------------------------


def test_choco_public_copies_hold_the_template_plus_the_decoded_messages():
    n, W = 4, ring_w(4)
    xs = states(n, seed=9)
    s = spec(kind="quantize", bits=3, block=4, scheme="choco")
    exchanges = [Exchange(i, template(), s, seed=2) for i in range(n)]
    assert all(ex.state_dict() == {} for ex in exchanges)  # no copy before the first round
    _, payloads = exchange_round(exchanges, xs, W, 1)
    sizes = exchanges[0].sizes
    start = torch.cat([v.reshape(-1) for v in template().values()])
    for i, ex in enumerate(exchanges):
        saved = ex.state_dict()
        expected_nodes = sorted(j for j in range(n) if W[i, j])  # itself and its neighbours
        assert sorted(saved) == [f"public.{j}" for j in expected_nodes]
        for j in expected_nodes:
            assert torch.equal(saved[f"public.{j}"], start + decompress(payloads[j], sizes))


def test_uncompressed_choco_copies_are_the_adapters_and_gamma_scales_the_step():
    n, W, gamma = 4, ring_w(4), 0.4
    xs = states(n, seed=10)
    exchanges = [Exchange(i, template(), spec(scheme="choco", gamma=gamma)) for i in range(n)]
    got, _ = exchange_round(exchanges, xs, W, 1)
    for i, ex in enumerate(exchanges):
        for j in range(n):
            if W[i, j]:
                np.testing.assert_allclose(
                    ex.state_dict()[f"public.{j}"].numpy(), flat_np(xs[j], SHAPES), atol=1e-6
                )
        mixed = sum(W[i, j] * flat_np(xs[j], SHAPES) for j in range(n))
        own = flat_np(xs[i], SHAPES)
        np.testing.assert_allclose(
            flat_np(got[i], SHAPES), own + gamma * (mixed - own), rtol=1e-5, atol=1e-5
        )


def test_choco_step_from_the_decoded_copies():
    """One quantized round: x_i + gamma * sum_j W_ij (x_hat_j - x_hat_i), x_hat from payloads."""
    n, W, gamma = 5, ring_w(5), 0.7
    xs = states(n, seed=11)
    s = spec(kind="quantize", bits=4, block=0, scheme="choco", gamma=gamma)
    exchanges = [Exchange(i, template(), s, seed=3) for i in range(n)]
    got, payloads = exchange_round(exchanges, xs, W, 1)
    start = flat_np(template(), SHAPES)
    sizes = exchanges[0].sizes
    hat = [start + decompress(p, sizes).numpy().astype(np.float64) for p in payloads]
    for i in range(n):
        pull = sum(W[i, j] * (hat[j] - hat[i]) for j in range(n) if j != i)
        expected = flat_np(xs[i], SHAPES) + gamma * pull
        np.testing.assert_allclose(flat_np(got[i], SHAPES), expected, rtol=1e-5, atol=1e-5)


def test_choco_checkpoint_round_trip_resumes_identically():
    """state_dict after round 2, loaded into fresh exchanges: round 3 gives the same bytes and
    the same adapters; fresh exchanges without it do not (so the copies really matter)."""
    n, W = 4, ring_w(4)
    s = spec(kind="quantize", bits=2, block=8, scheme="choco", gamma=0.8)
    original = [Exchange(i, template(), s, seed=6) for i in range(n)]
    xs = states(n, seed=12)
    for t in (1, 2):
        xs, _ = exchange_round(original, xs, W, t)
    saved = [ex.state_dict() for ex in original]
    resumed = [Exchange(i, template(), s, seed=6) for i in range(n)]
    for ex, st in zip(resumed, saved):
        ex.load_state_dict(st)
    blank = [Exchange(i, template(), s, seed=6) for i in range(n)]

    want, want_payloads = exchange_round(original, xs, W, 3)
    got, got_payloads = exchange_round(resumed, xs, W, 3)
    assert got_payloads == want_payloads
    for g, w in zip(got, want):
        for k in SHAPES:
            assert torch.equal(g[k], w[k])
    for ex, ref in zip(resumed, original):
        assert ex.state_dict().keys() == ref.state_dict().keys()
        for k, v in ex.state_dict().items():
            assert torch.equal(v, ref.state_dict()[k])
    _, blank_payloads = exchange_round(blank, xs, W, 3)
    assert blank_payloads != want_payloads


def test_state_dict_is_a_copy():
    s = spec(scheme="choco")
    ex = Exchange(0, template(), s)
    x = states(1, seed=13)[0]
    ex.outgoing(x, 1)
    ex.incoming(x, {}, {0: 1.0})
    saved = ex.state_dict()
    before = saved["public.0"].clone()
    saved["public.0"].add_(1.0)
    assert torch.equal(ex.state_dict()["public.0"], before)
    loaded = Exchange(0, template(), s)
    loaded.load_state_dict(saved)
    saved["public.0"].add_(1.0)  # the exchange keeps its own copy of what it loaded
    assert torch.equal(loaded.state_dict()["public.0"], before + 1.0)


def test_direct_exchange_keeps_no_state():
    xs = states(4, seed=14)
    exchanges = [Exchange(i, template(), spec(kind="quantize", bits=4)) for i in range(4)]
    exchange_round(exchanges, xs, ring_w(4), 1)
    assert all(ex.state_dict() == {} for ex in exchanges)


def test_choco_incoming_needs_this_rounds_outgoing_first():
    x = states(1, seed=15)[0]
    ex = Exchange(0, template(), spec(scheme="choco"))
    with pytest.raises(RuntimeError, match="outgoing"):
        ex.incoming(x, {}, {0: 1.0})
    ex.outgoing(x, 1)
    ex.incoming(x, {}, {0: 1.0})
    with pytest.raises(RuntimeError, match="outgoing"):  # one outgoing serves one incoming
        ex.incoming(x, {}, {0: 1.0})


@pytest.mark.parametrize(
    "compression, ok",
    [
        (None, True),
        (spec(), True),
        (spec(kind="quantize", bits=4), True),
        (spec(scheme="choco"), False),
        (spec(kind="quantize", bits=4, scheme="choco"), False),
    ],
)
def test_product_rule_refuses_choco(compression, ok):
    if ok:
        Exchange(0, template(), compression, consensus="product")
    else:
        with pytest.raises(ValueError, match="consensus=product"):
            Exchange(0, template(), compression, consensus="product")
    Exchange(0, template(), compression, consensus="ab")  # every scheme is fine with ab


def test_an_unknown_consensus_rule_is_refused():
    with pytest.raises(ValueError, match="unknown consensus rule"):
        Exchange(0, template(), consensus="mean")


# --- seeding of the rounding noise -----------------------------------------------------------


def payload(seed=0, node=2, round_=5, kind="quantize", scheme="direct") -> bytes:
    s = spec(kind=kind, bits=2, block=8, scheme=scheme)
    return Exchange(node, template(), s, seed=seed).outgoing(states(1, seed=16)[0], round_)


@pytest.mark.parametrize("scheme", ["direct", "choco"])
def test_payload_noise_depends_only_on_seed_node_and_round(scheme):
    base = payload(scheme=scheme)
    assert payload(scheme=scheme) == base  # two exchanges built alike draw the same noise
    assert payload(round_=6, scheme=scheme) != base
    assert payload(node=3, scheme=scheme) != base
    assert payload(seed=1, scheme=scheme) != base


def test_uncompressed_payload_has_no_noise():
    assert payload(kind="none", round_=5) == payload(kind="none", round_=6)
    assert payload(kind="none", node=2) == payload(kind="none", node=3)


# --- row_weights -----------------------------------------------------------------------------


def plain_row(W: np.ndarray, i: int) -> dict[int, float]:
    return {j: float(W[i][j]) for j in range(len(W)) if W[i][j] != 0}


@pytest.mark.parametrize(
    "W",
    [
        ring_w(5),
        np.array([[0.5, 0.5, 0.0], [0.25, 0.5, 0.25], [0.0, 0.5, 0.5]]),
        np.array([[1.0, 0.0], [0.0, 1.0]]),  # no edges: only self
        np.array([[0.0, 1.0], [1.0, 0.0]]),  # no self weight: self is left out
        np.full((4, 4), 0.25),
    ],
    ids=["ring5", "path3", "isolated", "no-self", "complete4"],
)
def test_row_weights_are_the_nonzero_entries_of_the_row(W):
    for i in range(len(W)):
        got = row_weights(W, i)
        assert got == plain_row(W, i)
        assert list(got) == sorted(got)
        assert all(type(j) is int and type(w) is float for j, w in got.items())
