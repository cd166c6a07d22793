"""A transport for the tests that drops, corrupts, forges, delays or crashes, around a real one
(the simulator's or the point-to-point one): the fault hooks live here, not in the package.

``spec`` is comma-separated ``ACTION=NODE@ROUND``; ACTION, applied to NODE's frame of ROUND:

- ``drop``: zeros of a header's length go out instead of the frame (its neighbours refuse it);
- ``oversize``: the frame with more bytes after it than any honest frame has (its neighbours
  refuse the announced length, so the bytes never move);
- ``nan`` / ``short``: the payload holds a NaN / is 4 bytes short, sealed again so that only
  the content checks catch it;
- ``flip``: one payload byte flipped after sealing (the checksum or the HMAC catches it);
- ``forge``: sealed with a wrong key;
- ``replay``: sealed under another run id, as a frame recorded in an earlier run would be;
- ``delay``: the node sleeps ``delay_s`` seconds before sending;
- ``crash``: the process exits before sending, once (a marker file in ``marker_dir``);
- ``corrupt``: as ``crash``, after flipping a byte of the node's newest checkpoint;
- ``kill``: the process sends itself SIGKILL before sending (no restart: a dead peer);
- ``sloweval``: the evaluating process (``NODE`` 0) takes ``delay_s`` seconds more to evaluate
  that round, as a large test set would.
"""

from __future__ import annotations

import hashlib
import os
import signal
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from declora.harness import checkpoint
from declora.protocol import wire
from declora.protocol.gossip import Outgoing, Step

WRONG_KEY = hashlib.sha256(b"another site's key file").digest()  # 32 random-looking bytes
DTYPE_OF = {code: dtype for dtype, code in wire.DTYPES.items()}


def parse(spec: str) -> dict[tuple[int, int], str]:
    """{(node, round): action} from ``"nan=1@2, crash=3@4"``."""
    actions = {}
    for item in filter(None, (x.strip() for x in spec.split(","))):
        name, _, at = item.partition("=")
        node, _, round_ = at.partition("@")
        actions[(int(node), int(round_))] = name.strip()
    return actions


def reseal(frame: bytes, key: bytes | None, change, run: bytes | None = None) -> bytes:
    """The frame with its payload passed through ``change``, sealed again with ``key`` (and
    under ``run`` instead of its own run id)."""
    _, _, code, _, sender, round_, step, _, own, length, _ = wire.HEADER.unpack_from(frame)
    payload = frame[wire.HEADER.size : wire.HEADER.size + length]
    stamp = wire.Stamp(own if run is None else run, round_, step)
    return wire.seal(change(payload), sender, stamp, DTYPE_OF[code], key)


class FaultyTransport:
    """Misbehaves as ``spec`` says, then hands the frames to ``inner``."""

    def __init__(self, inner, spec: str, key=None, marker_dir: Path | None = None, delay_s=0.0):
        self.inner, self.actions, self.key = inner, parse(spec), key
        self.marker_dir, self.delay_s = marker_dir, delay_s

    def swap(self, outbox: dict[int, Outgoing], step: Step):
        outbox, round_ = dict(outbox), step.stamp.round
        for i, out in list(outbox.items()):
            action = self.actions.get((i, round_)) if step.stamp.step == 0 else None
            if action not in (None, "sloweval"):  # sloweval acts in gather
                frame = self.misbehave(action, i, round_, out.frame, step.limit)
                outbox[i] = replace(out, frame=frame)
        return self.inner.swap(outbox, step)

    def tell(self, values, kind, step, hear=None):
        return self.inner.tell(values, kind, step, hear)

    def gather(self, held, round_):
        got = self.inner.gather(held, round_)
        if got is not None and self.actions.get((0, round_)) == "sloweval":
            time.sleep(self.delay_s)
        return got

    def gather_vectors(self, held, round_, finite=None):
        return self.inner.gather_vectors(held, round_, finite)

    def after_evaluation(self, round_):
        return self.inner.after_evaluation(round_)

    def misbehave(self, action: str, i: int, round_: int, frame: bytes, limit: int) -> bytes:
        nan = np.float32("nan").tobytes()
        if action == "drop":
            return bytes(wire.HEADER.size)
        if action == "oversize":
            return frame + bytes(limit)
        if action == "replay":
            return reseal(frame, self.key, lambda p: p, run=b"earlier!")
        if action == "nan":
            return reseal(frame, self.key, lambda p: p[:-4] + nan)
        if action == "short":
            return reseal(frame, self.key, lambda p: p[:-4])
        if action == "forge":
            return reseal(frame, WRONG_KEY, lambda p: p)
        if action == "flip":
            flipped = bytearray(frame)
            flipped[wire.HEADER.size + (len(frame) - wire.HEADER.size) // 3] ^= 0xFF
            return bytes(flipped)
        if action == "delay":
            time.sleep(self.delay_s)
            return frame
        if action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if action in ("crash", "corrupt"):
            marker = self.marker_dir / f".crashed_node{i}_round{round_}"
            if not marker.exists():
                marker.touch()
                if action == "corrupt":
                    damage_newest_checkpoint(self.marker_dir / "checkpoints", i)
                os._exit(1)
            return frame
        raise ValueError(f"unknown fault {action!r}")


def damage_newest_checkpoint(root: Path, node: int) -> Path:
    """Flip one byte in the middle of node's newest checkpoint file."""
    newest = checkpoint.rounds(root, node)[-1]
    path = checkpoint.node_dir(root, node) / f"round_{newest:06d}.safetensors"
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    return path
