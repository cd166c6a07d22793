"""Framing of a message between nodes: every check refuses what it should, with a clear reason,
and an honest frame (plain or compressed payload, with or without a key) passes."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import torch

from declora.algorithms.compress import compress
from declora.config import CompressionConfig
from declora.protocol import wire

KEY = b"k" * 32
SIZES = [6, 4]  # two tensors, 10 values
RUN = b"run-0001"
AT = wire.Stamp(RUN, 7, 0)  # round 7, gossip step 0


def payload(kind: str = "none", values=None) -> bytes:
    flat = torch.linspace(-1, 1, 10) if values is None else torch.tensor(values)
    spec = CompressionConfig(kind=kind, bits=4, block=0)
    return compress(flat, spec, torch.Generator().manual_seed(0), SIZES)


@pytest.mark.parametrize("key", [None, KEY])
@pytest.mark.parametrize("kind", ["none", "quantize", "topk"])
def test_honest_frame_round_trips(key, kind):
    body = payload(kind)
    frame = wire.seal(body, sender=3, stamp=AT, dtype=torch.float32, key=key)
    assert len(frame) == wire.HEADER.size + len(body) + (wire.TAG_SIZE if key else 0)
    assert len(frame) <= wire.max_frame_size(SIZES)
    got = wire.open_frame(frame, sender=3, stamp=AT, dtype=torch.float32, key=key)
    assert got == body
    wire.check_payload(got, SIZES)


def _refusal(frame: bytes, key=None, sender=3, round_=7, dtype=torch.float32, step=0, run=RUN):
    with pytest.raises(wire.Refused) as err:
        wire.open_frame(frame, sender, wire.Stamp(run, round_, step), dtype, key)
    return str(err.value)


def test_framing_checks():
    frame = wire.seal(payload(), 3, AT, torch.float32)
    assert "shorter than the header" in _refusal(frame[:10])
    assert "not a declora" in _refusal(b"XXXX" + frame[4:])
    assert "header says" in _refusal(frame[:-4])  # truncated in transit
    assert "header says" in _refusal(frame + b"\0")
    assert "claims sender 3" in _refusal(frame, sender=2)
    assert "round 7 step 0, not round 8 step 0" in _refusal(frame, round_=8)
    assert "round 7 step 0, not round 7 step 1" in _refusal(frame, step=1)
    assert "another run" in _refusal(frame, run=b"run-0002")
    assert "dtype code" in _refusal(frame, dtype=torch.bfloat16)


def test_checksum_catches_a_flipped_byte():
    frame = bytearray(wire.seal(payload(), 3, AT, torch.float32))
    frame[wire.HEADER.size + 20] ^= 0x01
    assert "checksum" in _refusal(bytes(frame))


def test_hmac_binds_payload_sender_and_round():
    body = payload()
    frame = wire.seal(body, 3, AT, torch.float32, KEY)
    assert "HMAC tag does not match" in _refusal(frame, key=b"x" * 32)  # a process without the key
    tampered = bytearray(frame)
    tampered[wire.HEADER.size + 5] ^= 0x01
    assert "HMAC" in _refusal(bytes(tampered), key=KEY)
    # rewriting the sender or round in the header (to replay elsewhere) breaks the tag
    head = list(wire.HEADER.unpack_from(frame))
    head[5] = 8  # round
    forged = wire.HEADER.pack(*head) + frame[wire.HEADER.size :]
    assert "HMAC" in _refusal(forged, key=KEY, round_=8)
    head = list(wire.HEADER.unpack_from(frame))
    head[8] = b"run-0002"  # the run id: a frame recorded in an earlier run, relabelled
    relabelled = wire.HEADER.pack(*head) + frame[wire.HEADER.size :]
    assert "HMAC" in _refusal(relabelled, key=KEY, run=b"run-0002")
    # a genuine message replayed in a later round, step or run is refused by its stamp
    assert "replayed" in _refusal(frame, key=KEY, round_=8)
    assert "replayed" in _refusal(frame, key=KEY, step=2)
    assert "another run" in _refusal(frame, key=KEY, run=b"run-0002")


def test_key_and_no_key_do_not_mix():
    assert "no HMAC tag" in _refusal(wire.seal(payload(), 3, AT, torch.float32), key=KEY)
    assert "has no security.key_file" in _refusal(wire.seal(payload(), 3, AT, torch.float32, KEY))


@pytest.mark.parametrize(
    "bad, reason",
    [
        ([0.0] * 9 + [float("nan")], "1 non-finite values"),
        ([float("inf")] * 2 + [0.0] * 8, "2 non-finite values"),
    ],
)
def test_content_refuses_non_finite_values(bad, reason):
    with pytest.raises(wire.Refused, match=reason):
        wire.check_payload(payload("none", bad), SIZES)


def test_content_refuses_a_wrong_length_and_a_nan_scale():
    with pytest.raises(wire.Refused, match="expected"):
        wire.check_payload(payload()[:-4], SIZES)
    with pytest.raises(wire.Refused, match="values, expected 12"):
        wire.check_payload(payload(), [6, 6])
    quantized = bytearray(payload("quantize"))
    quantized[16:20] = struct.pack("<f", np.nan)  # the first float32 scale after the header
    with pytest.raises(wire.Refused, match="non-finite"):
        wire.check_payload(bytes(quantized), SIZES)


@pytest.mark.parametrize("key", [None, KEY])
def test_control_message_round_trips_and_binds_kind_edge_and_stamp(key):
    msg = wire.seal_control("length", 12345, 2, 5, AT, key)
    assert len(msg) == wire.CONTROL_SIZE
    assert wire.open_control(msg, "length", 2, 5, AT, key) == 12345
    bad = {
        "kind": lambda: wire.open_control(msg, "ack", 2, 5, AT, key),
        "addressed to node 5": lambda: wire.open_control(msg, "length", 2, 4, AT, key),
        "claims sender 2": lambda: wire.open_control(msg, "length", 1, 5, AT, key),
        "round 7 step 0, not round 8": lambda: wire.open_control(
            msg, "length", 2, 5, wire.Stamp(RUN, 8, 0), key
        ),
        "another run": lambda: wire.open_control(msg, "length", 2, 5, wire.Stamp(b"x" * 8), key),
        "bytes, expected": lambda: wire.open_control(msg[:-1], "length", 2, 5, AT, key),
    }
    for reason, call in bad.items():
        with pytest.raises(wire.Refused, match=reason):
            call()


def test_a_control_message_with_a_wrong_or_no_tag_is_refused():
    msg = bytearray(wire.seal_control("verdict", 1, 2, 5, AT, KEY))
    with pytest.raises(wire.Refused, match="HMAC"):
        wire.open_control(bytes(msg), "verdict", 2, 5, AT, b"x" * 32)
    msg[-40] ^= 1  # the value, under the tag
    with pytest.raises(wire.Refused, match="HMAC"):
        wire.open_control(bytes(msg), "verdict", 2, 5, AT, KEY)
    with pytest.raises(wire.Refused, match="HMAC"):  # an untagged one where a key is set
        wire.open_control(wire.seal_control("verdict", 1, 2, 5, AT), "verdict", 2, 5, AT, KEY)
