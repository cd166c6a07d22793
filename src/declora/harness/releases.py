"""A site's record of what it has released under DP-SGD, kept beside its checkpoints.

Before a DP node's payload leaves it, one line is appended to
``<checkpoints>/node_<i>/released.jsonl`` and flushed to disk: the round, the gossip step,
the DP steps the node had taken and a SHA-256 of the payload. So the record is ahead of every
checkpoint: a crash between a send and the next checkpoint loses nothing of it, and epsilon
(:attr:`declora.learning.train.Node.epsilon`) counts the steps released, not only the steps
the checkpoint remembers.

A resumed node plays again the rounds after its checkpoint. Its noise and sample come from
its own key, kept in that checkpoint, so an identical replay sends the very same bytes: the
record finds the same digest and nothing new is released. A replay that would send other
bytes (the site's file, device or a neighbour's messages changed) would release a second
message under the same noise, which no accountant covers; it is refused by name
(:class:`ReleaseRefused`) before it leaves. A node whose checkpoint is lost starts with a new
key: every step it then takes is a new release, counted on top of the record.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from declora.learning.train import Node, Stopped

NAME = "released.jsonl"


class ReleaseRefused(Stopped):
    """A resumed DP node would send a message other than the one it sent before."""


class Releases:
    """Node ``node``'s record in ``folder`` (created 0700, the file 0600), read at start."""

    def __init__(self, folder: Path, node: Node):
        self.node = node
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.path = folder / NAME
        self.sent: dict[tuple[int, int], str] = {}
        for line in self._lines():
            self.sent[(line["round"], line["step"])] = line["digest"]
            node.released = max(node.released, int(line["steps"]))

    def _lines(self) -> list[dict]:
        """The record's lines; a last line cut by a crash mid-write is dropped."""
        if not self.path.is_file():
            return []
        lines = []
        for text in self.path.read_text().splitlines():
            try:
                lines.append(json.loads(text))
            except json.JSONDecodeError:
                break  # only the last line can be partial: it was never flushed whole
        return lines

    def __call__(self, i: int, t: int, step: int, payload) -> None:
        """Record node i's payload of round t, gossip step ``step``, before it leaves."""
        parts = [payload[j] for j in sorted(payload)] if isinstance(payload, dict) else [payload]
        digest = hashlib.sha256(b"".join(parts)).hexdigest()
        before = self.sent.get((t, step))
        if before is not None:
            if before != digest:
                raise ReleaseRefused(
                    f"node {i}: round {t}, played again after a restart, would send another "
                    "message than the one it sent before (its data file, device or a "
                    "neighbour's messages differ); it would release its DP noise twice. "
                    "Restore what changed, or start a new run (a new out=)"
                )
            return
        steps = self.node.scheduler.last_epoch
        line = json.dumps({"round": t, "step": step, "steps": steps, "digest": digest})
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, (line + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        self.sent[(t, step)] = digest
        self.node.released = max(self.node.released, steps)
