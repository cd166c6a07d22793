"""One message on the wire: a fixed header, the payload, and an optional HMAC-SHA256 tag.

Layout (little-endian)::

    offset  size  field
    0       4     magic b"DLRW"
    4       1     version (1)
    5       1     dtype of the adapter the payload encodes (code in DTYPES)
    6       2     flags: bit 0 = a 32-byte HMAC-SHA256 tag follows the payload
    8       4     sender node id
    12      4     round
    16      8     payload length in bytes
    24      4     CRC-32 of the payload
    28      n     payload: Exchange.outgoing's bytes (format in declora.compress)
    28+n    32    HMAC-SHA256(key, header + payload), when flagged

The tag covers the header, so it binds the payload to its sender and its round: a process
without the key can neither inject a message nor replay one from another round or node.
The receiver trusts nothing: :func:`open_frame` checks the framing, sender, round, dtype,
length, checksum and tag, then :func:`check_payload` decodes the payload (never unpickles) and
refuses non-finite values. Each check raises :class:`Refused` with a one-line reason.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

import torch

from declora import compress
from declora.config import ConfigError

MAGIC = b"DLRW"
VERSION = 1
HEADER = struct.Struct("<4sBBHIIQI")  # magic, version, dtype, flags, sender, round, length, crc
TAG_SIZE = 32
TAGGED = 1
DTYPES = {torch.float32: 1, torch.float16: 2, torch.bfloat16: 3, torch.float64: 4}
MIN_KEY_BYTES = 16


class Refused(ValueError):
    """A received message that fails a check; the message is the reason, for the log."""


def read_key(path: str | Path) -> bytes:
    """The shared secret in ``security.key_file`` (surrounding whitespace stripped)."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"security.key_file={path}: file not found")
    key = file.read_bytes().strip()
    if len(key) < MIN_KEY_BYTES:
        raise ConfigError(
            f"security.key_file={path}: the secret must hold at least {MIN_KEY_BYTES} bytes "
            "(e.g. head -c 32 /dev/urandom | base64 > key)"
        )
    return key


def _tag(key: bytes, data: bytes | memoryview) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


def seal(
    payload: bytes, sender: int, round_: int, dtype: torch.dtype, key: bytes | None = None
) -> bytes:
    """Frame ``payload`` for sending; with ``key``, append the HMAC-SHA256 tag."""
    head = HEADER.pack(
        MAGIC,
        VERSION,
        DTYPES[dtype],
        TAGGED if key else 0,
        sender,
        round_,
        len(payload),
        zlib.crc32(payload),
    )
    frame = head + payload
    return frame + _tag(key, frame) if key else frame


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
    round_: int,
    dtype: torch.dtype,
    key: bytes | None = None,
) -> bytes:
    """The payload of a frame from node ``sender`` for round ``round_``; raises :class:`Refused`."""
    frame = memoryview(frame)
    if len(frame) < HEADER.size:
        raise Refused(f"frame of {len(frame)} bytes is shorter than the header")
    magic, version, code, flags, who, rnd, length, crc = HEADER.unpack_from(frame)
    if magic != MAGIC or version != VERSION:
        raise Refused(f"not a declora v{VERSION} frame (magic {bytes(magic)!r}, version {version})")
    tagged = bool(flags & TAGGED)
    if key and not tagged:
        raise Refused("no HMAC tag (this node requires one: security.key_file)")
    if tagged and not key:
        raise Refused("HMAC-tagged, but this node has no security.key_file")
    expected = HEADER.size + length + (TAG_SIZE if tagged else 0)
    if len(frame) != expected:
        raise Refused(f"frame has {len(frame)} bytes, its header says {expected}")
    if tagged:
        body, tag = frame[: HEADER.size + length], frame[HEADER.size + length :]
        if not hmac.compare_digest(_tag(key, body), bytes(tag)):
            raise Refused("HMAC tag does not match (wrong key, or the message was altered)")
    if who != sender:
        raise Refused(f"frame claims sender {who}")
    if rnd != round_:
        raise Refused(f"frame is for round {rnd}, not {round_} (replayed or out of step)")
    if code != DTYPES[dtype]:
        raise Refused(f"dtype code {code}, expected {DTYPES[dtype]} ({dtype})")
    payload = frame[HEADER.size : HEADER.size + length]
    if zlib.crc32(payload) != crc:
        raise Refused("checksum mismatch (the message was corrupted)")
    return payload.tobytes()


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
