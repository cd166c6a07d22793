"""Property tests (hypothesis) of what a node receives: random bytes, and honest frames and
control messages with bytes flipped, cut, added or rewritten, are answered with the payload or
value (only when nothing changed) or a :class:`~declora.protocol.wire.Refused`, never another exception.
Nothing here can hang: every check is a bounded parse of the bytes in hand.

Settings as in test_properties.py: 300 examples a property, no deadline, ``derandomize=True``
(a fixed seed, so CI tries the same examples every run), no example database.
"""

from __future__ import annotations

import contextlib

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from declora.algorithms.compress import compress
from declora.config import CompressionConfig
from declora.protocol import wire

SETTINGS = settings(max_examples=300, deadline=None, derandomize=True, database=None)
KEY = b"k" * 32
SIZES = [6, 4]
AT = wire.Stamp(b"run-0001", 7, 1)
KINDS = ["none", "quantize", "topk"]


def honest_frame(kind: str, key: bytes | None) -> bytes:
    flat = torch.linspace(-1, 1, sum(SIZES))
    spec = CompressionConfig(kind=kind, bits=4, block=0)
    body = compress(flat, spec, torch.Generator().manual_seed(0), SIZES)
    return wire.seal(body, 3, AT, torch.float32, key)


def receive(frame: bytes, key: bytes | None) -> bytes | None:
    """What a node does with a frame: its payload, or None when refused."""
    try:
        body = wire.open_frame(frame, 3, AT, torch.float32, key)
        wire.check_payload(body, SIZES)
        return body
    except wire.Refused:
        return None


def mutate(data: bytes, draw) -> bytes:
    """One edit: flip a bit, overwrite, cut, insert or append bytes."""
    how = draw(st.sampled_from(["flip", "write", "cut", "insert", "append"]))
    at = draw(st.integers(0, max(len(data) - 1, 0)))
    if how == "flip":
        out = bytearray(data)
        out[at] ^= 1 << draw(st.integers(0, 7))
        return bytes(out)
    if how == "write":
        chunk = draw(st.binary(min_size=1, max_size=16))
        return data[:at] + chunk + data[at + len(chunk) :]
    if how == "cut":
        return data[:at] + data[at + draw(st.integers(1, 64)) :]
    extra = draw(st.binary(min_size=1, max_size=64))
    return data[:at] + extra + data[at:] if how == "insert" else data + extra


@SETTINGS
@given(st.binary(max_size=512), st.sampled_from([None, KEY]))
def test_random_bytes_are_refused(data, key):
    assert receive(data, key) is None


@SETTINGS
@given(st.data(), st.sampled_from(KINDS), st.sampled_from([None, KEY]))
def test_a_mutated_honest_frame_is_refused_or_unchanged(data, kind, key):
    frame = honest_frame(kind, key)
    changed = mutate(frame, data.draw)
    got = receive(changed, key)
    if key is not None:  # with a key, any change at all is refused
        assert (got is None) == (changed != frame)
    elif got is not None:  # without one, only what the CRC and the checks let through
        assert got == wire.open_frame(changed, 3, AT, torch.float32)


@SETTINGS
@given(st.data(), st.sampled_from(KINDS), st.booleans())
def test_random_or_mutated_payloads_decode_or_are_refused(data, kind, random):
    honest = honest_frame(kind, None)[wire.HEADER.size :]
    payload = data.draw(st.binary(max_size=256)) if random else mutate(honest, data.draw)
    with contextlib.suppress(wire.Refused):
        wire.check_payload(payload, SIZES)


@SETTINGS
@given(st.data(), st.sampled_from(list(wire.KINDS)), st.integers(-(2**63), 2**63 - 1))
def test_a_mutated_control_message_is_refused_or_unchanged(data, kind, value):
    msg = wire.seal_control(kind, value, 2, 5, AT, KEY)
    changed = mutate(msg, data.draw)
    try:
        got = wire.open_control(changed, kind, 2, 5, AT, KEY)
    except wire.Refused:
        assert changed != msg
    else:
        assert changed == msg and got == value
