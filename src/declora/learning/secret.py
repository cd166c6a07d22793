"""Randomness that protects a site: its DP-SGD noise and its Poisson sample.

Both are drawn from a ChaCha20 keystream (``cryptography``, OpenSSL's implementation) under a
32-byte key that the site draws from ``os.urandom`` when it starts a run and keeps only in
its own checkpoint. Nothing of the key is in the shared config, so a neighbour that knows
every setting, the public base model and every message a site sent cannot replay its
noise, nor tell which rows a step drew: the guarantee's two secrets stay secret. The
keystream of step s is found by the key and s alone (the nonce holds the purpose and the
step), so a site that resumes from its checkpoint draws the very same noise and sample for a
step it takes again: it never releases one step twice with two noises.

The Gaussian is made as Opacus's ``secure_mode`` makes it: each value is the sum of four
standard normals (Box-Muller on 53-bit uniforms, in float64), halved. A single
floating-point Gaussian sample leaks through the gaps of its representation (Holohan and
Braghin, "Secure Random Sampling in Differential Privacy", 2021); the sum closes them.

``privacy.reproducible=true`` derives the key from the shared seed instead, so that two runs
(and the two runtimes) draw the same: for research and the tests only. Anyone with the config
can then subtract the noise, and the run says so.
"""

from __future__ import annotations

import hashlib
import os
import struct

import numpy as np

KEY_BYTES = 32
PURPOSES = {"sample": 1, "noise": 2}
TWO_53 = float(2**53)


class Secret:
    """A site's keystream: ``uniform`` and ``normal`` draws for one step and purpose."""

    def __init__(self, key: bytes, reproducible: bool = False):
        if len(key) != KEY_BYTES:
            raise ValueError(f"a site's secret key has {KEY_BYTES} bytes, not {len(key)}")
        self.key, self.reproducible = bytes(key), reproducible

    @classmethod
    def fresh(cls) -> Secret:
        """A new key from the operating system's CSPRNG (every start of every run)."""
        return cls(os.urandom(KEY_BYTES))

    @classmethod
    def from_seed(cls, seed: int, stream: int) -> Secret:
        """``privacy.reproducible``: a key anyone with the config can compute."""
        data = b"declora reproducible DP randomness" + struct.pack("<QQ", seed, stream)
        return cls(hashlib.sha256(data).digest(), reproducible=True)

    def _stream(self, purpose: str, step: int, n_bytes: int) -> bytes:
        """``n_bytes`` of ChaCha20 keystream for (purpose, step), counter from 0."""
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

        nonce = struct.pack("<IIQ", 0, PURPOSES[purpose], step)  # counter, purpose, step
        encryptor = Cipher(algorithms.ChaCha20(self.key, nonce), mode=None).encryptor()
        return encryptor.update(bytes(n_bytes))

    def uniform(self, purpose: str, step: int, n: int) -> np.ndarray:
        """(n,) float64 uniforms in (0, 1), 53 bits each."""
        words = np.frombuffer(self._stream(purpose, step, 8 * n), dtype="<u8")
        return ((words >> np.uint64(11)).astype(np.float64) + 0.5) / TWO_53

    def normal(self, step: int, n: int) -> np.ndarray:
        """(n,) float64 standard normals for DP noise: four Box-Muller draws summed, halved."""
        u = self.uniform("noise", step, 8 * n).reshape(4, 2, n)  # (draw, pair, value)
        z = np.sqrt(-2.0 * np.log(u[:, 0])) * np.cos(2.0 * np.pi * u[:, 1])  # (4, n)
        return z.sum(axis=0) / 2.0
