"""What crosses a process boundary: frames (an adapter message), control messages (one number
on an edge), and the HMAC-SHA256 tags that authenticate both.

Frame layout (little-endian)::

    offset  size  field
    0       4     magic b"DLRW"
    4       1     version (2)
    5       1     dtype of the adapter the payload encodes (code in DTYPES)
    6       2     flags: bit 0 = a 32-byte HMAC-SHA256 tag follows the payload;
                  bit 1 = the payload is AES-256-GCM ciphertext + tag (declora.protocol.crypt)
    8       4     sender node id
    12      4     round
    16      2     gossip step within the round
    18      2     reserved (0)
    20      8     run id (agreed by every process at start)
    28      8     payload length in bytes
    36      4     CRC-32 of the payload (0 when encrypted: the GCM tag covers it)
    40      n     payload: Exchange.outgoing's bytes (format in declora.algorithms.compress)
    40+n    32    HMAC-SHA256(key, header + payload), when flagged (never with bit 1)

Encrypted (``security.encrypt``), the payload is sealed for one receiver: the nonce binds
sender, receiver, round and step, the key the run, and the header is the associated data.

A control message (:func:`seal_control`) is 68 bytes: magic b"DLRC", version, kind, sender,
receiver, round, step, run id, a signed 64-bit value, and a 32-byte tag (zeros without a key).
The round's phases use it for frame lengths, acknowledgements and verdicts
(:mod:`declora.protocol.gossip`).

A tag covers the header, so it binds the payload to its run, sender, round and step: a process
without the key can neither inject a message nor replay one from another run, round, step or
node. The receiver trusts nothing: :func:`open_frame` checks the framing, run, sender, round,
step, dtype, length, checksum and tag, then :func:`check_payload` decodes the payload (never
unpickles) and refuses non-finite values. Each check raises :class:`Refused` with a one-line
reason.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from declora.algorithms import compress
from declora.protocol import crypt

MAGIC = b"DLRW"
VERSION = 2
# magic, version, dtype, flags, sender, round, step, reserved, run, length, crc
HEADER = struct.Struct("<4sBBHIIHH8sQI")
TAG_SIZE = 32
TAGGED = 1
ENCRYPTED = 2
DTYPES = {torch.float32: 1, torch.float16: 2, torch.bfloat16: 3, torch.float64: 4}
RUN_BYTES = 8
NO_TAG = bytes(TAG_SIZE)

CONTROL_MAGIC = b"DLRC"
# magic, version, kind, reserved, sender, receiver, round, step, reserved, run, value
CONTROL = struct.Struct("<4sBBHIIIHH8sq")
CONTROL_SIZE = CONTROL.size + TAG_SIZE
KINDS = {"length": 1, "ack": 2, "verdict": 3, "commit": 4}


class Refused(ValueError):
    """A received message that fails a check; the message is the reason, for the log."""


class PeerError(RuntimeError):
    """A neighbour did not answer in time, broke its connection or sent what fails a check
    that cannot be refused per edge: the run stops; names the neighbour."""


@dataclass(frozen=True)
class Stamp:
    """Where a message belongs: the run, the round and the gossip step within it."""

    run: bytes = bytes(RUN_BYTES)
    round: int = 0
    step: int = 0


def sign(key: bytes, *parts: bytes | memoryview) -> bytes:
    """HMAC-SHA256 of the parts (each prefixed with its length, so parts cannot shift)."""
    mac = hmac.new(key, digestmod=hashlib.sha256)
    for part in parts:
        mac.update(struct.pack("<Q", len(part)))
        mac.update(part)
    return mac.digest()


def verify(key: bytes, tag: bytes | memoryview, *parts: bytes | memoryview) -> bool:
    return hmac.compare_digest(sign(key, *parts), bytes(tag))


def seal(
    payload: bytes,
    sender: int,
    stamp: Stamp,
    dtype: torch.dtype,
    key: bytes | None = None,
    to: int | None = None,
) -> bytes:
    """Frame ``payload`` for sending; with ``key``, append the HMAC-SHA256 tag; with ``key``
    and ``to`` (``security.encrypt``), encrypt it for node ``to`` instead (AES-256-GCM)."""
    sealed = to is not None and key is not None
    size = len(payload) + (crypt.TAG_BYTES if sealed else 0)
    flags = ENCRYPTED if sealed else TAGGED if key else 0
    head = HEADER.pack(
        MAGIC,
        VERSION,
        DTYPES[dtype],
        flags,
        sender,
        stamp.round,
        stamp.step,
        0,
        stamp.run,
        size,
        0 if sealed else zlib.crc32(payload),
    )
    if sealed:
        where = crypt.nonce(sender, to, stamp.round, stamp.step, "gossip")
        return head + crypt.encrypt(crypt.cipher(key, stamp.run), where, payload, head)
    frame = head + payload
    return frame + sign(key, frame) if key else frame


def max_frame_size(sizes: Sequence[int]) -> int:
    """Upper bound on an honest frame for an adapter of tensors of ``sizes`` values.

    Generous (8 bytes a value covers every compression kind, plus one scale a value); a peer
    that announces more is refused before any buffer is allocated.
    """
    n = sum(sizes)
    return HEADER.size + TAG_SIZE + compress.HEADER.size + 12 * n + 4 * len(sizes)


def open_frame(
    frame: bytes | memoryview,
    sender: int,
    stamp: Stamp,
    dtype: torch.dtype,
    key: bytes | None = None,
    to: int | None = None,
) -> bytes:
    """The payload of a frame from node ``sender`` for ``stamp`` (encrypted for node ``to``
    when ``to`` is given: this node requires ``security.encrypt``); raises :class:`Refused`."""
    frame = memoryview(frame)
    if len(frame) < HEADER.size:
        raise Refused(f"frame of {len(frame)} bytes is shorter than the header")
    magic, version, code, flags, who, rnd, step, _, run, length, crc = HEADER.unpack_from(frame)
    if magic != MAGIC or version != VERSION:
        raise Refused(f"not a declora v{VERSION} frame (magic {bytes(magic)!r}, version {version})")
    tagged, sealed = bool(flags & TAGGED), bool(flags & ENCRYPTED)
    _check_flags(tagged, sealed, key, to)
    expected = HEADER.size + length + (TAG_SIZE if tagged else 0)
    if len(frame) != expected:
        raise Refused(f"frame has {len(frame)} bytes, its header says {expected}")
    head, body = frame[: HEADER.size], frame[HEADER.size : HEADER.size + length]
    if tagged and not verify(key, frame[HEADER.size + length :], frame[: HEADER.size + length]):
        raise Refused("HMAC tag does not match (wrong key, or the message was altered)")
    if sealed:
        try:
            where = crypt.nonce(sender, to, stamp.round, stamp.step, "gossip")
            body = memoryview(crypt.decrypt(crypt.cipher(key, stamp.run), where, body, head))
        except crypt.Undecryptable as err:
            raise Refused(str(err)) from None
    _check_stamp(who, sender, run, rnd, step, stamp)
    if code != DTYPES[dtype]:
        raise Refused(f"dtype code {code}, expected {DTYPES[dtype]} ({dtype})")
    if not sealed and zlib.crc32(body) != crc:
        raise Refused("checksum mismatch (the message was corrupted)")
    return body.tobytes()


def _check_flags(tagged: bool, sealed: bool, key: bytes | None, to: int | None) -> None:
    """A frame must be protected exactly as this node requires."""
    if tagged and sealed:
        raise Refused("frame claims both an HMAC tag and encryption")
    if to is not None and not sealed:
        raise Refused("not encrypted (this node requires security.encrypt)")
    if sealed and to is None:
        raise Refused("encrypted, but this node does not use security.encrypt")
    if key and not (tagged or sealed):
        raise Refused("no HMAC tag (this node requires one: security.key_file)")
    if tagged and not key:
        raise Refused("HMAC-tagged, but this node has no security.key_file")


def _check_stamp(who: int, sender: int, run: bytes, rnd: int, step: int, stamp: Stamp) -> None:
    if who != sender:
        raise Refused(f"message claims sender {who}")
    if run != stamp.run:
        raise Refused(f"message is from another run ({run.hex()}, this run is {stamp.run.hex()})")
    if (rnd, step) != (stamp.round, stamp.step):
        raise Refused(
            f"message is for round {rnd} step {step}, not round {stamp.round} step {stamp.step} "
            "(replayed or out of step)"
        )


def check_payload(payload: bytes, sizes: Sequence[int]) -> None:
    """Decode the payload as a message of tensors of ``sizes`` values; refuse a bad one.

    Refuses a payload that does not parse (wrong length, header, indices) or that holds a
    NaN or infinity.
    """
    try:
        flat = compress.decompress(payload, list(sizes))
    except ValueError as err:
        raise Refused(str(err)) from None
    if not bool(torch.isfinite(flat).all()):
        bad = int((~torch.isfinite(flat)).sum())
        raise Refused(f"{bad} non-finite values")


def seal_control(
    kind: str, value: int, sender: int, receiver: int, stamp: Stamp, key: bytes | None = None
) -> bytes:
    """One number from ``sender`` to ``receiver`` (a frame length, an acknowledgement, a
    verdict), always ``CONTROL_SIZE`` bytes; tagged with ``key``."""
    body = CONTROL.pack(
        CONTROL_MAGIC,
        VERSION,
        KINDS[kind],
        0,
        sender,
        receiver,
        stamp.round,
        stamp.step,
        0,
        stamp.run,
        value,
    )
    return body + (sign(key, body) if key else NO_TAG)


def open_control(
    message: bytes | memoryview,
    kind: str,
    sender: int,
    receiver: int,
    stamp: Stamp,
    key: bytes | None = None,
) -> int:
    """The value of a control message from ``sender`` to ``receiver``; raises :class:`Refused`."""
    message = memoryview(message)
    if len(message) != CONTROL_SIZE:
        raise Refused(f"control message of {len(message)} bytes, expected {CONTROL_SIZE}")
    body, tag = message[: CONTROL.size], message[CONTROL.size :]
    magic, version, code, _, who, to, rnd, step, _, run, value = CONTROL.unpack_from(body)
    if magic != CONTROL_MAGIC or version != VERSION:
        raise Refused(f"not a declora v{VERSION} control message")
    if key and not verify(key, tag, body):
        raise Refused(f"the {kind} message's HMAC tag does not match (wrong key, or altered)")
    if code != KINDS[kind]:
        raise Refused(f"control message of kind {code}, expected {KINDS[kind]} ({kind})")
    if to != receiver:
        raise Refused(f"control message is addressed to node {to}")
    _check_stamp(who, sender, bytes(run), rnd, step, stamp)
    return value
