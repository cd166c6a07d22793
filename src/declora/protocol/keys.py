"""The shared secret of ``security.key_file``, read once and checked, and the keys derived
from it.

The file holds 32 random bytes written as base64 or hex (``head -c 32 /dev/urandom | base64
> key && chmod 600 key``), readable by its owner only. Anything shorter, not 32 bytes once
decoded, or 32 bytes with few distinct values (a typed password, a repeated character) is
refused: HKDF stretches nothing, so a guessable secret would let anyone who captured one tag
guess it offline.

Three keys are derived with HKDF-SHA256, one label each, so that no key serves two purposes:
the HMAC-SHA256 key of every tag (frames, control messages, the start-up offers, the gathers),
the secret each run's AES-256-GCM key is derived from (:func:`declora.protocol.crypt.cipher`,
salted with the run id), and the key of the site's checkpoint HMACs.

What a key shared by every site cannot give: any site can read any edge's messages and forge
any site's. A deployment that must tell sites apart runs the links through per-site
identities today (WireGuard or a VPN between the sites, or mTLS); per-site keys inside
declora (X25519 per run) are the next step.
"""

from __future__ import annotations

import base64
import binascii
import os
import stat
from pathlib import Path

from declora.config import ConfigError

SECRET_BYTES = 32
MIN_DISTINCT = 12  # 32 random bytes have about 30 distinct values; 12 or fewer: chosen
MAKE = "head -c 32 /dev/urandom | base64 > {path} && chmod 600 {path}"
LABELS = {
    "mac": b"declora v3 message authentication (HMAC-SHA256)",
    "encrypt": b"declora v3 message encryption (AES-256-GCM, per run)",
    "checkpoint": b"declora v3 checkpoint authentication (HMAC-SHA256)",
}


class Keys(bytes):
    """The keys of one secret: the bytes themselves are the HMAC key of every tag (so every
    ``sign`` / ``verify`` takes a Keys as it is); ``encrypt`` and ``checkpoint`` are the
    others (see the module docstring)."""

    encrypt: bytes
    checkpoint: bytes

    def __new__(cls, secret: bytes) -> Keys:
        keys = super().__new__(cls, _hkdf(secret, LABELS["mac"]))
        keys.encrypt = _hkdf(secret, LABELS["encrypt"])
        keys.checkpoint = _hkdf(secret, LABELS["checkpoint"])
        return keys


def _hkdf(secret: bytes, label: bytes) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=label).derive(secret)


def decode(text: bytes) -> bytes | None:
    """The 32 bytes a key file's text writes as hex or base64, or None."""
    text = text.strip()
    try:
        raw = binascii.unhexlify(text) if len(text) == 2 * SECRET_BYTES else None
    except binascii.Error:
        raw = None
    if raw is None:
        try:
            raw = base64.b64decode(text, validate=True)
        except binascii.Error:
            return None
    return raw if len(raw) == SECRET_BYTES else None


def read_key(path: str | Path) -> Keys:
    """The keys of ``security.key_file``; a missing, exposed or weak file is one
    ConfigError line that says how to make a good one."""
    file = Path(path)
    try:
        found = file.is_file()
        mode = stat.S_IMODE(os.stat(file).st_mode) if found else 0
        text = file.read_bytes() if found and not mode & 0o077 else b""
    except OSError as err:  # a name too long, a file this user cannot read
        raise ConfigError(f"security.key_file={path}: cannot read ({err.strerror})") from None
    if not found:
        raise ConfigError(f"security.key_file={path}: file not found")
    if mode & 0o077:
        raise ConfigError(
            f"security.key_file={path} can be read by group or others (mode {mode:04o}): "
            f"run chmod 600 {path}"
        )
    raw = decode(text)
    make = MAKE.format(path=path)
    if raw is None:
        raise ConfigError(
            f"security.key_file={path}: the secret must be {SECRET_BYTES} random bytes "
            f"written as base64 or hex (make one: {make})"
        )
    if len(set(raw)) <= MIN_DISTINCT:
        raise ConfigError(
            f"security.key_file={path}: its {SECRET_BYTES} bytes hold {len(set(raw))} distinct "
            f"values, not random ones (make one: {make})"
        )
    return Keys(raw)
