"""Compressors on the flat message (wire format, exact sizes, unbiased rounding, seeding) and the
two gossip schemes built on them (direct and CHOCO), on tiny tensors."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import torch

from declora.algorithms import topology as topo
from declora.algorithms.compress import (
    HEADER,
    PayloadError,
    compress,
    decompress,
    message_generator,
    num_scales,
    payload_size,
    topk_count,
)
from declora.algorithms.consensus import mix_row
from declora.config import CompressionConfig, ConfigError, load_config
from declora.protocol.exchange import Exchange, row_weights
from tests.reference import exchange_round, mix


def spec(**kw) -> CompressionConfig:
    return CompressionConfig(**kw)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


SIZES = [37, 64, 1, 200]  # tensor lengths of a toy message; 200 is not a multiple of any block
CASES = [
    spec(kind="none"),
    *(
        spec(kind="quantize", bits=b, block=blk)
        for b in (1, 2, 3, 4, 7, 8, 13, 16)
        for blk in (0, 16)
    ),
    spec(kind="quantize", bits=4, block=1000),
    spec(kind="topk", ratio=0.1),
    spec(kind="topk", ratio=1.0),
    spec(kind="topk", ratio=1e-9),
]


def message(seed: int = 0) -> torch.Tensor:
    return torch.randn(sum(SIZES), generator=gen(seed))


# --- wire format and sizes -------------------------------------------------------------------


@pytest.mark.parametrize("s", CASES, ids=lambda s: f"{s.kind}-{s.bits}-{s.block}-{s.ratio}")
def test_payload_length_equals_the_formula_and_the_header_says_how(s):
    payload = compress(message(), s, gen(), SIZES)
    assert len(payload) == payload_size(SIZES, s)
    magic, version, kind, bits, _, n, param = HEADER.unpack_from(payload)
    assert (magic, version, n) == (b"DLRM", 1, sum(SIZES))
    assert kind == {"none": 0, "quantize": 1, "topk": 2}[s.kind]
    assert bits == (s.bits if s.kind == "quantize" else 32)
    if s.kind == "quantize":
        assert param == s.block
    if s.kind == "topk":
        assert param == topk_count(sum(SIZES), s.ratio)


def test_size_formula_by_hand():
    # 4 tensors, block 16: ceil(37/16) + ceil(64/16) + 1 + ceil(200/16) = 3 + 4 + 1 + 13 scales
    assert num_scales(SIZES, 16) == 21
    assert num_scales(SIZES, 0) == 4
    n = sum(SIZES)  # 302
    assert payload_size(SIZES, spec(kind="quantize", bits=3, block=16)) == 16 + 4 * 21 + 114
    assert payload_size(SIZES, spec(kind="none")) == 16 + 4 * n
    assert payload_size(SIZES, spec(kind="topk", ratio=0.1)) == 16 + 8 * 31  # ceil(30.2)


def test_none_round_trips_exactly():
    x = message()
    assert torch.equal(decompress(compress(x, spec(kind="none")), sum(SIZES)), x)


def test_code_bit_stream_matches_a_hand_built_reference():
    """3-bit codes read back from the payload by plain integer bit arithmetic (LSB first)."""
    x = torch.tensor([-1.0, -0.5, 0.0, 0.25, 1.0, 0.75, -0.25, 0.5, 0.1])
    s = spec(kind="quantize", bits=3, block=0)
    payload = compress(x, s, gen(3))
    body = payload[HEADER.size :]
    (scale,) = struct.unpack_from("<f", body)
    assert scale == 1.0
    stream = int.from_bytes(body[4:], "little")
    codes = [(stream >> (3 * i)) & 0b111 for i in range(len(x))]
    assert len(body) - 4 == -(-len(x) * 3 // 8)
    assert stream >> (3 * len(x)) == 0  # padding bits are zero
    decoded = decompress(payload, len(x))
    assert torch.allclose(decoded, torch.tensor([(2 * c / 7 - 1) * scale for c in codes]))
    assert codes[0] == 0 and codes[4] == 7  # -s and +s are levels: no noise there


@pytest.mark.parametrize("bits", [1, 2, 4, 8, 16])
def test_every_value_lands_on_a_neighbouring_level(bits):
    x = message(1)
    out = decompress(compress(x, spec(kind="quantize", bits=bits, block=16), gen(), SIZES), SIZES)
    scale = 0.0
    for pos, m in zip(np.cumsum([0, *SIZES]), SIZES):  # each block's step is 2 s / L
        for b in range(0, m, 16):
            blk = slice(pos + b, pos + min(b + 16, m))
            scale = float(x[blk].abs().max())
            assert float((out[blk] - x[blk]).abs().max()) <= 2 * scale / (2**bits - 1) * 1.0001
            assert float(out[blk].abs().max()) <= scale * 1.0001


def test_zero_tensor_gets_scale_zero_and_decodes_to_exact_zeros():
    """B starts at zero: its own per-tensor (or per-block) scale is 0, and no 0/0 happens."""
    x = torch.cat([torch.zeros(64), torch.randn(37, generator=gen())])
    for block in (0, 16):
        s = spec(kind="quantize", bits=2, block=block)
        payload = compress(x, s, gen(), [64, 37])
        out = decompress(payload, [64, 37])
        assert torch.isfinite(out).all()
        assert torch.equal(out[:64], torch.zeros(64))
        n_zero_scales = num_scales(64, block)
        scales = np.frombuffer(payload[HEADER.size : HEADER.size + 4 * n_zero_scales], "<f4")
        assert (scales == 0).all()


def _z_scores(x: torch.Tensor, bits: int, refit: bool, draws: int = 3000) -> np.ndarray:
    """(mean of decoded - x) / standard error, per entry, over independent draws."""
    s = spec(kind="quantize", bits=bits, block=0)
    outs = torch.stack(
        [decompress(compress(x, s, gen(d), refit=refit), x.numel()) for d in range(draws)]
    ).double()
    L, scale = 2**bits - 1, float(x.abs().max())
    p = ((x.double() / scale + 1) * L / 2) % 1  # fractional position between two levels
    se = (2 * scale / L) * torch.sqrt(p * (1 - p) / draws)  # std of one draw is step*sqrt(p(1-p))
    err = outs.mean(0) - x.double()
    on_level = se < 1e-12  # a value on a level is never moved: any error there is a bias
    exact = torch.where(err.abs() < 1e-6, 0.0, float("inf"))
    return torch.where(on_level, exact, err / se.clamp_min(1e-12)).numpy()


@pytest.mark.parametrize("bits", [1, 2, 4])
def test_stochastic_rounding_is_unbiased(bits):
    """Over 3000 seeded draws every entry's mean lies within 4.5 standard errors of the value
    (fixed seeds; under no bias 40 entries would miss about 3 times in 10^4), and the z-scores
    look standard normal."""
    x = torch.linspace(-0.9, 1.0, 40) + 0.013
    z = _z_scores(x, bits, refit=False)
    assert np.abs(z).max() < 4.5
    assert abs(z.mean()) < 0.6 and 0.6 < z.std() < 1.4


def test_the_unbiasedness_check_catches_a_biased_quantizer():
    """The least-squares refit (what CHOCO sends) shrinks 1-bit messages; the same check sees it."""
    x = torch.linspace(-0.9, 1.0, 40) + 0.013
    assert np.abs(_z_scores(x, 1, refit=True)).max() > 10


@pytest.mark.parametrize("bits", [1, 2, 4])
def test_refit_scales_are_a_contraction(bits):
    for seed in range(20):
        x = torch.randn(300, generator=gen(100 + seed)) * torch.rand(300, generator=gen(seed))
        s = spec(kind="quantize", bits=bits, block=32)
        out = decompress(compress(x, s, gen(seed), refit=True), 300)
        assert float((x - out).norm()) <= float(x.norm())


def test_sixteen_bits_is_nearly_lossless_and_hits_the_end_levels():
    x = message()
    out = decompress(compress(x, spec(kind="quantize", bits=16, block=0), gen(), SIZES), SIZES)
    assert float((out - x).abs().max()) < 2 * float(x.abs().max()) / 65535 * 1.0001
    i = int(x.abs().argmax())
    assert out[i] == x[i]  # the block maximum is a level: exact, never rounded past it


def test_same_seed_same_bytes_other_round_other_bytes():
    s = spec(kind="quantize", bits=2, block=16)
    x = message()
    a = compress(x, s, message_generator(7, node_id=3, round_=5), SIZES)
    b = compress(x, s, message_generator(7, node_id=3, round_=5), SIZES)
    assert a == b
    assert a != compress(x, s, message_generator(7, node_id=3, round_=6), SIZES)
    assert a != compress(x, s, message_generator(7, node_id=4, round_=5), SIZES)
    assert a != compress(x, s, message_generator(8, node_id=3, round_=5), SIZES)
    compress(x, s, message_generator(-1, 0, 1), SIZES)  # negative run seeds are fine


def test_topk_keeps_the_largest_magnitudes_exactly():
    x = torch.tensor([0.1, -5.0, 0.3, 2.0, -0.2, 0.0, 4.0, -2.0])
    out = decompress(compress(x, spec(kind="topk", ratio=0.5)), 8)
    assert torch.equal(out, torch.tensor([0.0, -5.0, 0.0, 2.0, 0.0, 0.0, 4.0, -2.0]))
    tied = torch.ones(6)  # equal magnitudes: the lower indices win, on every platform
    assert torch.equal(
        decompress(compress(tied, spec(kind="topk", ratio=0.5)), 6),
        torch.tensor([1.0] * 3 + [0.0] * 3),
    )


def test_topk_count():
    assert [topk_count(n, 0.1) for n in (0, 1, 9, 10, 11)] == [0, 1, 1, 1, 2]
    assert topk_count(10, 1.0) == 10


@pytest.mark.parametrize(
    "tamper, match",
    [
        (lambda p: b"XXXX" + p[4:], "not a declora"),
        (lambda p: p[:-1], "bytes, expected"),
        (lambda p: p + b"\0", "bytes, expected"),
        (lambda p: p[:8] + struct.pack("<I", 999) + p[12:], "values, expected"),
        (lambda p: p[:3], "shorter than the header"),
        (lambda p: p[:5] + b"\x09" + p[6:], "unknown message kind"),
    ],
)
def test_decompress_refuses_a_malformed_payload(tamper, match):
    payload = compress(message(), spec(kind="quantize", bits=3, block=16), gen(), SIZES)
    with pytest.raises(PayloadError, match=match):
        decompress(tamper(payload), SIZES)


def test_decompress_refuses_bad_topk_indices():
    payload = bytearray(compress(torch.arange(8.0), spec(kind="topk", ratio=0.25)))
    payload[HEADER.size : HEADER.size + 4] = struct.pack("<I", 8)  # index past the end
    with pytest.raises(PayloadError, match="indices"):
        decompress(bytes(payload), 8)


# --- config ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "override, key",
    [
        ("compression.bits=0", "compression.bits"),
        ("compression.bits=17", "compression.bits"),
        ("compression.kind=zip", "compression.kind"),
        ("compression.ratio=0", "compression.ratio"),
        ("compression.gamma=1.5", "compression.gamma"),
        ("compression.block=-1", "compression.block"),
        ("compression.scheme=gossip", "compression.scheme"),
    ],
)
def test_bad_compression_settings_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key):
        load_config(None, [override])


@pytest.mark.parametrize("fault", ["faults.link_drop=0.1", "faults.node_drop=0.1"])
def test_choco_refuses_faults(fault):
    """A missed message leaves a public copy behind for good: refused at load time."""
    with pytest.raises(ConfigError, match="compression.scheme=choco"):
        load_config(None, ["compression.scheme=choco", fault])
    load_config(None, ["compression.scheme=direct", fault])


def test_compression_defaults_and_per_tensor_block():
    cfg = load_config(None, [])
    assert (cfg.compression.kind, cfg.compression.scheme) == ("none", "direct")
    assert load_config(None, ["compression.block=null"]).compression.block == 0


# --- the two schemes in the exchange ---------------------------------------------------------


def template() -> dict[str, torch.Tensor]:
    return {"a": torch.randn(4, 6, generator=gen(9)), "b": torch.zeros(6, 4), "h": torch.zeros(3)}


def states(n: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    g = gen(seed)
    return [
        {k: v + torch.randn(v.shape, generator=g) for k, v in template().items()} for _ in range(n)
    ]


def ring(n: int = 5) -> np.ndarray:
    return topo.mixing_matrix(topo.build_graph("ring", n), "metropolis")


def flat_all(xs) -> torch.Tensor:
    return torch.stack([torch.cat([v.reshape(-1) for v in x.values()]) for x in xs]).double()


def spread(xs) -> float:
    f = flat_all(xs)
    return float((f - f.mean(0)).norm(dim=1).mean())


@pytest.mark.parametrize("scheme", ["direct", "choco"])
def test_uncompressed_exchange_is_plain_dec_lora_mixing(scheme):
    W, xs = ring(), states(5)
    exchanges = [Exchange(i, template(), spec(scheme=scheme)) for i in range(5)]
    got, payloads = exchange_round(exchanges, xs, W, 1)
    for g, ref in zip(got, mix(xs, W)):
        for k in ref:
            assert torch.allclose(g[k], ref[k], atol=1e-6)
    assert all(len(p) == payload_size([24, 24, 3], spec()) for p in payloads)


def test_choco_step_size_gamma():
    """Uncompressed CHOCO with gamma: x_i + gamma * (sum_j W_ij x_j - x_i)."""
    W, xs, gamma = ring(), states(5), 0.3
    exchanges = [Exchange(i, template(), spec(scheme="choco", gamma=gamma)) for i in range(5)]
    got, _ = exchange_round(exchanges, xs, W, 1)
    for g, x, m in zip(got, xs, mix(xs, W)):
        for k in x:
            assert torch.allclose(g[k], x[k] + gamma * (m[k] - x[k]), atol=1e-6)


def test_choco_public_copies_agree_on_every_node():
    """Node i's copy of x_hat_j is bit-identical to node j's own x_hat_j, round after round."""
    W, xs = ring(), states(5)
    s = spec(kind="quantize", bits=2, block=8, scheme="choco")
    exchanges = [Exchange(i, template(), s, seed=4) for i in range(5)]
    for t in range(1, 6):
        xs, _ = exchange_round(exchanges, xs, W, t)
        for i, ex in enumerate(exchanges):
            for j, copy in ex.public.items():
                assert torch.equal(copy, exchanges[j].public[j]), (t, i, j)


def test_choco_keeps_the_network_average_where_direct_lets_it_drift():
    """Without training, 4-bit CHOCO preserves the mean exactly (W symmetric, every copy gets the
    same q) and its error feedback drives the spread to 0. Direct 4-bit quantization also ends
    in agreement (stochastic rounding gets absorbed on a grid point), but at a mean that has
    drifted away by the accumulated rounding noise."""
    W, x0 = ring(), states(5)
    mean0 = flat_all(x0).mean(0)
    drift = {}
    for scheme in ("direct", "choco"):
        s = spec(kind="quantize", bits=4, block=8, scheme=scheme)
        exchanges = [Exchange(i, template(), s, seed=1) for i in range(5)]
        xs = x0
        for t in range(1, 61):
            xs, _ = exchange_round(exchanges, xs, W, t)
        assert spread(xs) < 1e-3 * spread(x0), scheme
        drift[scheme] = float((flat_all(xs).mean(0) - mean0).norm() / mean0.norm())
    assert drift["choco"] < 1e-6
    assert drift["direct"] > 1e-2


@pytest.mark.parametrize("scheme", ["direct", "choco"])
def test_a_missing_neighbour_counts_as_self(scheme):
    """weights still lists node 1, but its payload did not arrive: its weight goes to self."""
    W, xs = ring(), states(5)
    ex = [Exchange(i, template(), spec(scheme=scheme)) for i in range(5)]
    payloads = [e.outgoing(x, 1) for e, x in zip(ex, xs)]
    w = row_weights(W, 0)  # {0: 1/3, 1: 1/3, 4: 1/3}
    got = ex[0].incoming(xs[0], {4: payloads[4]}, w)
    ref = mix_row(xs[0], w[0] + w[1], {4: (w[4], xs[4])})
    for k in ref:
        assert torch.allclose(got[k], ref[k], atol=1e-6)


def test_exchange_refuses_a_payload_from_a_node_without_weight():
    ex = [Exchange(i, template()) for i in range(3)]
    xs = states(3)
    p = ex[2].outgoing(xs[2], 1)
    with pytest.raises(ValueError, match="no weight"):
        ex[0].incoming(xs[0], {2: p}, {0: 0.5, 1: 0.5})
