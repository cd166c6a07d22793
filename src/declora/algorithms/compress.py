"""Compressors for the flat message a node sends, with an explicit wire format and exact sizes.

Pure torch/numpy on a 1-D float32 tensor: the simulator and the torch.distributed runtime call
the same functions, and :func:`payload_size` gives the byte count without building a payload.

Wire format (all little-endian). A 16-byte header::

    offset  size  field
    0       4     magic b"DLRM"
    4       1     version (1)
    5       1     kind: 0 none, 1 quantize, 2 topk
    6       1     bits per value: 32 for none and topk, 1..16 for quantize
    7       1     reserved, 0
    8       4     n: values in the message (uint32)
    12      4     quantize: block (0 = one scale per tensor); topk: k kept entries; none: 0

then the body:

- ``none``:     n float32 values.
- ``quantize``: S float32 scales (one per block, blocks in message order), then the n codes of
  ``bits`` bits each as one bit stream, least significant bit first (code i holds stream bits
  i*bits .. i*bits+bits-1; stream bit k is bit k % 8 of byte k // 8), zero-padded to a byte.
  Blocks never cross a tensor boundary: a tensor of m values has ceil(m / block) blocks (the
  last one short), or one block when block = 0. So B (zero at the start) and the head get
  their own scales, and an all-zero block has scale 0 and decodes to exact zeros.
- ``topk``:     k uint32 indices (strictly increasing), then k float32 values.

Quantization is unbiased stochastic rounding onto 2^bits evenly spaced levels on [-s, s],
s = max |x| over the block: q = floor((x / s + 1) / 2 * L + u), u ~ U[0, 1), L = 2^bits - 1,
decoded as (2 q / L - 1) s. E[decoded] = x exactly; the noise comes from a torch.Generator
seeded by (run seed, node, round) (:func:`message_generator`), so a distributed node and the
simulator draw the same numbers.

With ``refit`` (what CHOCO sends) each block's scale is then replaced by the least-squares fit
s' = <x, c> / <c, c> of the drawn levels c = 2 q / L - 1. That is biased, but it guarantees
||x - s' c|| <= ||x||: the contraction CHOCO's public copies need. Plain unbiased rounding at
1-2 bits has error variance near or above ||x||^2, and the copies drift away from the adapters.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from functools import lru_cache
from typing import Protocol

import numpy as np
import torch

MAGIC = b"DLRM"
VERSION = 1
HEADER = struct.Struct("<4sBBBBII")  # magic, version, kind, bits, reserved, n, block|k
KINDS = {"none": 0, "quantize": 1, "topk": 2}
SCHEMES = (
    "direct",
    "choco",
)  # what a node compresses: its adapter, or the change to its copy (gossip)
KIND_NAMES = {v: k for k, v in KINDS.items()}


class Spec(Protocol):
    """What a compressor needs (``declora.config.CompressionConfig`` is one)."""

    kind: str
    bits: int
    block: int
    ratio: float


class PayloadError(ValueError):
    """A received payload does not match the message this node expects."""


def _sizes(sizes: int | Sequence[int]) -> tuple[int, ...]:
    if isinstance(sizes, (int, np.integer)):
        return (int(sizes),)
    return tuple(int(m) for m in sizes)


def num_scales(sizes: int | Sequence[int], block: int) -> int:
    """Scales a quantized message carries: per tensor (block 0) or per block within tensors."""
    return sum(0 if m == 0 else (1 if not block else -(-m // block)) for m in _sizes(sizes))


def topk_count(n: int, ratio: float) -> int:
    """Entries kept by topk: ceil(ratio * n), at least one (none of an empty message)."""
    return 0 if n == 0 else min(n, max(1, math.ceil(ratio * n)))


def _body_size(kind: str, bits: int, param: int, sizes: tuple[int, ...]) -> int:
    """Bytes after the header; ``param`` is the block (quantize) or k (topk)."""
    n = sum(sizes)
    if kind == "none":
        return 4 * n
    if kind == "quantize":
        return 4 * num_scales(sizes, param) + -(-n * bits // 8)
    if kind == "topk":
        return 8 * param
    raise ValueError(f"unknown compression kind {kind!r}")


def payload_size(sizes: int | Sequence[int], spec: Spec) -> int:
    """Exact bytes of one payload for a message of tensors of ``sizes`` values (header included)."""
    sizes = _sizes(sizes)
    param = topk_count(sum(sizes), spec.ratio) if spec.kind == "topk" else spec.block
    return HEADER.size + _body_size(spec.kind, spec.bits, param, sizes)


def message_generator(seed: int, node_id: int, round_: int, step: int = 0) -> torch.Generator:
    """The rounding noise of one node's message in one round (its ``step``-th gossip step of
    the round), independent of who computes it."""
    entropy = [seed % 2**64, node_id, round_, 0x6D7367]  # the last word separates this stream
    if step:
        entropy.append(step)
    state = np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


@lru_cache(maxsize=16)
def _block_ids(sizes: tuple[int, ...], block: int) -> torch.Tensor:
    """(n,) block index of every value; blocks restart at every tensor boundary."""
    ids, base = [], 0
    for m in sizes:
        width = block or max(m, 1)
        ids.append(torch.arange(m) // width + base)
        base += num_scales(m, block)
    return torch.cat(ids) if ids else torch.zeros(0, dtype=torch.long)


def _pack(codes: np.ndarray, bits: int) -> bytes:
    """n codes of ``bits`` bits each -> LSB-first bit stream, zero-padded to whole bytes."""
    shifts = np.arange(bits, dtype=np.uint32)
    stream = ((codes.astype(np.uint32)[:, None] >> shifts) & 1).astype(np.uint8)  # (n, bits)
    return np.packbits(stream.reshape(-1), bitorder="little").tobytes()


def _unpack(buf: bytes, n: int, bits: int) -> np.ndarray:
    stream = np.unpackbits(np.frombuffer(buf, np.uint8), count=n * bits, bitorder="little")
    weights = np.left_shift(np.uint32(1), np.arange(bits, dtype=np.uint32))
    return stream.reshape(n, bits).astype(np.uint32) @ weights  # (n,)


def _levels(bits: int) -> int:
    return 2**bits - 1


def quantize_codes(
    flat: torch.Tensor,
    bits: int,
    ids: torch.Tensor,
    n_scales: int,
    generator: torch.Generator,
    refit: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(scales (S,) float32, codes (n,) int64 in [0, 2^bits - 1]) by stochastic rounding."""
    x = flat.detach().to(torch.float64)
    scales = torch.zeros(n_scales, dtype=torch.float32)
    scales.scatter_reduce_(0, ids, flat.detach().float().abs(), "amax")
    s = scales.to(torch.float64)[ids]
    L = _levels(bits)
    # float64: at 16 bits, y + u in float32 could round up past L and bias the top level
    y = (x / torch.where(s > 0, s, torch.ones_like(s)) + 1.0) * (L / 2)
    y = torch.nan_to_num(y, nan=0.0, posinf=float(L), neginf=0.0)  # NaN/inf stay in the scale
    u = torch.rand(x.numel(), generator=generator, dtype=torch.float64)
    codes = torch.floor(y + u).clamp_(0, L).to(torch.int64)
    if refit:  # least-squares scale per block: ||x - s' c|| <= ||x||, a contraction
        c = codes.to(torch.float64) * (2.0 / L) - 1.0  # (n,) levels in [-1, 1]
        num = torch.zeros(n_scales, dtype=torch.float64).index_add_(0, ids, x * c)
        den = torch.zeros(n_scales, dtype=torch.float64).index_add_(0, ids, c * c)
        scales = torch.where(den > 0, num / den.clamp_min(1e-300), 0.0).to(torch.float32)
    return scales, codes


def dequantize(scales: torch.Tensor, codes: torch.Tensor, bits: int, ids: torch.Tensor):
    """Inverse map of :func:`quantize_codes`: (2 q / L - 1) * s, as float32."""
    s = scales.to(torch.float64)[ids]
    return ((codes.to(torch.float64) * (2.0 / _levels(bits)) - 1.0) * s).to(torch.float32)


def compress(
    flat: torch.Tensor,
    spec: Spec,
    generator: torch.Generator | None = None,
    sizes: int | Sequence[int] | None = None,
    refit: bool = False,
) -> bytes:
    """Encode a 1-D message as a payload (see the module docstring for the format).

    ``flat`` holds the ``(n,)`` values, cast to float32; ``spec`` gives kind, bits, block and
    ratio. ``generator`` is the rounding noise for ``quantize`` (:func:`message_generator`),
    required there. ``sizes`` are the tensor lengths in message order, summing to n (default:
    one tensor). ``refit`` (quantize only) fits least-squares block scales (contractive,
    biased; see the module docstring).
    """
    flat = flat.detach().reshape(-1).to(torch.float32)
    n = flat.numel()
    sizes = _sizes(n if sizes is None else sizes)
    if sum(sizes) != n:
        raise ValueError(f"sizes sum to {sum(sizes)}, message has {n} values")
    if spec.kind == "none":
        head = HEADER.pack(MAGIC, VERSION, KINDS["none"], 32, 0, n, 0)
        return head + flat.numpy().astype("<f4", copy=False).tobytes()
    if spec.kind == "quantize":
        if generator is None:
            raise ValueError("quantize needs a generator (stochastic rounding)")
        ids = _block_ids(sizes, spec.block)
        n_scales = num_scales(sizes, spec.block)
        scales, codes = quantize_codes(flat, spec.bits, ids, n_scales, generator, refit)
        head = HEADER.pack(MAGIC, VERSION, KINDS["quantize"], spec.bits, 0, n, spec.block)
        body = scales.numpy().astype("<f4", copy=False).tobytes()
        return head + body + _pack(codes.numpy(), spec.bits)
    if spec.kind == "topk":
        k = topk_count(n, spec.ratio)
        # stable sort: equal magnitudes keep the lower index, on every platform
        order = torch.argsort(flat.abs(), descending=True, stable=True)[:k]
        idx = torch.sort(order).values
        head = HEADER.pack(MAGIC, VERSION, KINDS["topk"], 32, 0, n, k)
        return (
            head
            + idx.numpy().astype("<u4").tobytes()
            + flat[idx].numpy().astype("<f4", copy=False).tobytes()
        )
    raise ValueError(f"unknown compression kind {spec.kind!r}")


def decompress(payload: bytes, sizes: int | Sequence[int]) -> torch.Tensor:
    """Decode a payload into the ``(n,)`` float32 message; refuses one that does not fit ``sizes``.

    The header says how it was compressed, so a receiver needs only the tensor lengths
    (``sizes``, which every node knows from the shared initial adapter).
    """
    sizes = _sizes(sizes)
    n = sum(sizes)
    if len(payload) < HEADER.size:
        raise PayloadError(f"payload of {len(payload)} bytes is shorter than the header")
    magic, version, kind, bits, _, count, param = HEADER.unpack_from(payload)
    if magic != MAGIC or version != VERSION:
        raise PayloadError(f"not a declora v{VERSION} message (magic {magic!r}, version {version})")
    if count != n:
        raise PayloadError(f"message has {count} values, expected {n}")
    name = KIND_NAMES.get(kind)
    if name is None or (name == "quantize" and not 1 <= bits <= 16):
        raise PayloadError(f"unknown message kind {kind} / bits {bits}")
    expected = HEADER.size + _body_size(name, bits, param, sizes)
    if len(payload) != expected or (name == "topk" and param > n):
        raise PayloadError(f"{name} payload has {len(payload)} bytes, expected {expected}")
    body = memoryview(payload)[HEADER.size :]
    if name == "none":
        return torch.from_numpy(np.frombuffer(body, dtype="<f4").astype(np.float32))
    if name == "quantize":
        n_scales = num_scales(sizes, param)
        scales = torch.from_numpy(np.frombuffer(body[: 4 * n_scales], "<f4").astype(np.float32))
        codes = torch.from_numpy(_unpack(body[4 * n_scales :], n, bits).astype(np.int64))
        return dequantize(scales, codes, bits, _block_ids(sizes, param))
    idx = np.frombuffer(body[: 4 * param], "<u4").astype(np.int64)
    if param and (idx[-1] >= n or np.any(np.diff(idx) <= 0)):
        raise PayloadError("topk indices must be increasing and below the message length")
    out = torch.zeros(n, dtype=torch.float32)
    out[torch.from_numpy(idx)] = torch.from_numpy(np.frombuffer(body[4 * param :], "<f4").copy())
    return out


def describe(spec: Spec) -> str:
    """One line for logs: what a message is made of."""
    if spec.kind == "quantize":
        per = "per tensor" if not spec.block else f"per {spec.block} values"
        return f"{spec.bits}-bit stochastic quantization, one float32 scale {per}"
    if spec.kind == "topk":
        return f"top-{spec.ratio:g} of entries by magnitude (uint32 index + float32 value)"
    return "float32 values (no compression)"
