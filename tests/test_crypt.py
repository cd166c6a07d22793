"""Encrypted links (security.encrypt): a captured frame shows nothing of its payload, and a
frame under another key, from another run, round or step, moved to another edge, altered, or
protected otherwise than the receiver requires is refused with a reason."""

from __future__ import annotations

import os

import pytest
import torch

from declora.config import load_config
from declora.protocol import crypt, wire
from declora.protocol.handshake import fingerprint
from declora.protocol.keys import Keys, read_key

KEY = Keys(b"s" * 32)  # the keys a key file holding this secret gives
RUN = b"run-0001"
AT = wire.Stamp(RUN, 7, 1)  # round 7, gossip step 1
F32 = torch.float32


def _payload() -> bytes:
    return torch.linspace(-1, 1, 4096).numpy().tobytes()  # an adapter's float32 bytes


def _sealed(to: int = 2, key: bytes = KEY, stamp=AT, sender: int = 3) -> bytes:
    return wire.seal(_payload(), sender, stamp, F32, key, to)


def _refused(frame: bytes, key=KEY, sender=3, stamp=AT, to=2) -> str:
    with pytest.raises(wire.Refused) as err:
        wire.open_frame(frame, sender, stamp, F32, key, to)
    return str(err.value)


def test_an_encrypted_frame_round_trips_and_hides_its_payload():
    plain, frame = _payload(), _sealed()
    assert wire.open_frame(frame, 3, AT, F32, KEY, 2) == plain
    assert len(frame) == wire.HEADER.size + len(plain) + crypt.TAG_BYTES
    body = frame[wire.HEADER.size :]
    assert plain not in frame
    # not one 16-byte run of the payload appears anywhere in what crosses the wire
    assert not any(plain[i : i + 16] in frame for i in range(0, len(plain) - 16, 16))
    # the same payload to two receivers, or in two steps, gives unrelated ciphertexts
    other = _sealed(to=4)[wire.HEADER.size :]
    assert sum(a == b for a, b in zip(body, other)) < len(body) // 100


def test_a_wrong_key_is_refused():
    assert "AES-GCM tag does not match" in _refused(_sealed(key=Keys(b"t" * 32)))


@pytest.mark.parametrize(
    "stamp",
    [wire.Stamp(RUN, 6, 1), wire.Stamp(RUN, 7, 0), wire.Stamp(b"run-0002", 7, 1)],
    ids=["replayed from round 6", "from another gossip step", "from another run"],
)
def test_a_replayed_frame_is_refused(stamp):
    assert "AES-GCM tag does not match" in _refused(_sealed(stamp=stamp))


def test_a_frame_moved_to_another_edge_is_refused():
    frame = _sealed(to=2)
    assert "AES-GCM tag does not match" in _refused(frame, to=4)  # node 4 receives 3 -> 2
    # and one whose header claims another sender (a copy sent as if from node 5)
    assert "AES-GCM tag does not match" in _refused(frame, sender=5)


@pytest.mark.parametrize("where", [9, 13, 30, wire.HEADER.size + 5, -1])
def test_a_flipped_byte_in_header_payload_or_tag_is_refused(where):
    frame = bytearray(_sealed())
    frame[where] ^= 0x10
    reason = _refused(bytes(frame))
    assert "AES-GCM tag" in reason or "message claims" in reason or "bytes" in reason, reason


def test_protection_must_match_what_the_receiver_requires():
    plain = wire.seal(_payload(), 3, AT, F32, KEY)  # HMAC only
    assert "not encrypted" in _refused(plain)
    assert "does not use security.encrypt" in _refused(_sealed(), to=None)
    both = bytearray(_sealed())
    both[6] |= wire.TAGGED
    assert "both an HMAC tag and encryption" in _refused(bytes(both))


def test_each_run_has_its_own_key_and_nonces_differ_per_field():
    assert crypt.cipher(KEY, RUN) is crypt.cipher(KEY, RUN)  # cached per (secret, run)
    a = crypt.cipher(KEY, RUN).encrypt(bytes(12), b"x" * 32, b"")
    b = crypt.cipher(KEY, b"run-0002").encrypt(bytes(12), b"x" * 32, b"")
    assert a != b
    fields = [(3, 2, 7, 1, "gossip"), (2, 3, 7, 1, "gossip"), (3, 2, 8, 1, "gossip"),
              (3, 2, 7, 2, "gossip"), (3, 2, 7, 1, "gather")]  # fmt: skip
    assert len({crypt.nonce(*f) for f in fields}) == len(fields)


def test_a_new_key_file_at_a_restart_is_the_same_config_under_a_new_key(tmp_path):
    """Key rotation: the key file's path and content are not part of the shared config
    (whether encryption is on is); what was sealed under the old key is refused (checkpoints
    too: tests/test_checkpoint.py)."""
    old, new = tmp_path / "old.key", tmp_path / "new.key"
    for path in (old, new):
        path.write_bytes(os.urandom(32).hex().encode())
        path.chmod(0o600)
    on = ["security.encrypt=true"]
    a = load_config(None, [f"security.key_file={old}", *on])
    b = load_config(None, [f"security.key_file={new}", *on])
    assert fingerprint(a) == fingerprint(b)
    assert fingerprint(a) != fingerprint(load_config(None, [f"security.key_file={old}"]))
    stamp = wire.Stamp(RUN, 3, 0)
    frame = wire.seal(_payload(), 1, stamp, F32, read_key(old), 0)
    with pytest.raises(wire.Refused):  # a message sealed under the old key is not accepted
        wire.open_frame(frame, 1, stamp, F32, read_key(new), 0)
