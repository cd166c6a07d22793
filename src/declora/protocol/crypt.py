"""AES-256-GCM for adapter messages (``security.encrypt``), from the ``cryptography`` package.

- **Key**: HKDF-SHA256 of the encryption secret derived from ``security.key_file``
  (:class:`declora.protocol.keys.Keys`, apart from the HMAC key), salted with the run id
  (fresh at every start: all processes' random nonces, hashed; random in the simulator), so
  each run, and each restart, has its own key.
- **Nonce** (12 bytes, never reused under one key): sender (2 bytes), receiver (2), round (4),
  gossip step (2) and purpose (2: a gossip frame or the gather to node 0). A node seals each
  (receiver, round, step) once; nodes are at most 10,000, so the fields fit.
- **Associated data**: the frame's header (run id, sender, round, step, length, checksum), so
  none of it can be altered either.

A frame replayed from another round or run, sent to another receiver or sealed under another
secret fails the tag and is refused. What stays visible on the wire: who talks to whom, when,
and how long each message is (the same for every honest node in a round).
"""

from __future__ import annotations

import struct
from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where used: a run without encryption does not need the package
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

TAG_BYTES = 16  # AES-GCM's tag, appended to the ciphertext
NONCE = struct.Struct("<HHIHH")  # sender, receiver, round, step, purpose
PURPOSES = {"gossip": 1, "gather": 2}
INFO = b"declora v2 adapter messages, AES-256-GCM"


class Undecryptable(ValueError):
    """The tag does not match: another key or run, another edge or round, or altered bytes."""


@lru_cache(maxsize=8)
def cipher(keys: bytes, run: bytes) -> AESGCM:
    """The run's AES-256-GCM key, derived from the keys' encryption secret and the run id."""
    secret = getattr(keys, "encrypt", None)
    if secret is None:
        raise TypeError("crypt.cipher takes the Keys of a secret (declora.protocol.keys.Keys)")
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=run, info=INFO).derive(secret)
    return AESGCM(key)


def nonce(sender: int, receiver: int, round_: int, step: int, purpose: str) -> bytes:
    return NONCE.pack(sender, receiver, round_, step, PURPOSES[purpose])


def encrypt(aes: AESGCM, where: bytes, plain: bytes, associated: bytes) -> bytes:
    """Ciphertext + 16-byte tag of ``plain`` under nonce ``where``."""
    return aes.encrypt(where, plain, associated)


def decrypt(aes: AESGCM, where: bytes, sealed: bytes, associated: bytes) -> bytes:
    from cryptography.exceptions import InvalidTag

    try:
        return aes.decrypt(where, sealed, associated)
    except InvalidTag:
        raise Undecryptable(
            "AES-GCM tag does not match (another key or run, a frame replayed or moved from "
            "another edge or round, or altered)"
        ) from None
