"""Why a distributed run stopped, as each honest node tells it.

A node whose exchange fails names the peer and the cause it saw: the peer closed its
connection (its process stopped, or its machine is unreachable), or it did not answer within
``peer_timeout``. Before it stops, it writes that line to the rendezvous store (``stop/<rank>``;
torchrun's agent keeps the store, so it outlives the workers). A node that then sees an
honest neighbour close its connection reads that neighbour's line and tells the real cause
(the node that died first) instead of blaming the neighbour. A process that torchrun stops
(SIGTERM: another process of its machine ended) says so in one line, with the cause the store
holds. Every store access is best effort: a store that is gone leaves the node's own view.
"""

from __future__ import annotations

import contextlib
import re
import signal
import sys
import threading

from declora.protocol.wire import PeerError

STOPPING = threading.Event()  # this process is stopping on a PeerError: SIGTERM waits for it
KEY = "stop/{}"


def reason(err: BaseException) -> str:
    """The first sentence of a backend error, without gloo's [file:line] prefix."""
    text = str(err).strip()
    line = text.splitlines()[0] if text else type(err).__name__
    line = re.sub(r"^\[[^\]]*\]\s*", "", line)
    return line.split(". ")[0].rstrip(".")


def closed(err: BaseException) -> bool:
    """Whether the error is a connection the peer closed or reset (not a timeout)."""
    text = str(err).lower()
    return "timed out" not in text and ("closed" in text or "reset" in text or "broken" in text)


def seen(err: BaseException, peer: int | None, peers: list[int], round_: int, timeout: float):
    """What this node saw: the peer (or the peers of the round) and the cause."""
    who = f"node {peer}" if peer is not None else f"one of nodes {sorted(set(peers))}"
    if closed(err):
        return (
            f"round {round_}: {who} closed its connection (its process stopped, or its "
            f"machine is unreachable): {reason(err)}"
        )
    return (
        f"round {round_}: {who} did not answer within {timeout:g} s (peer_timeout): {reason(err)}"
    )


class Stops:
    """The run's stop lines in the rendezvous ``store`` (None: this node's view alone)."""

    def __init__(self, store, rank: int, world: int):
        self.store, self.rank, self.world = store, rank, world

    def read(self, node: int) -> str | None:
        if self.store is None:
            return None
        try:
            if not self.store.check([KEY.format(node)]):
                return None
            return self.store.get(KEY.format(node)).decode(errors="replace")
        except Exception:  # noqa: BLE001 (the store is gone: this node's own view)
            return None

    def first(self) -> str | None:
        """A stop line any node wrote (the run's cause), or None."""
        return next((x for x in map(self.read, range(self.world)) if x), None)

    def fail(self, err: BaseException, peer, peers, round_: int, timeout: float) -> PeerError:
        """The PeerError this node stops with, its line written for the others first: the
        line of the peer that closed its connection, where that peer wrote one (it stopped
        on the real cause), else what this node saw."""
        STOPPING.set()
        mine = seen(err, peer, peers, round_, timeout)
        theirs = self.read(peer) if peer is not None and closed(err) else None
        line = f"round {round_}: node {peer} stopped: {theirs}" if theirs else mine
        root = theirs or mine
        if self.store is not None:
            with contextlib.suppress(Exception):  # best effort, as above
                self.store.set(KEY.format(self.rank), root)
        return PeerError(line)

    def on_sigterm(self, local: list[int]) -> None:
        """SIGTERM (torchrun stops the other processes of a machine when one ends) becomes a
        PeerError line naming the cause, unless this process is stopping already."""

        def stop(signum, frame) -> None:
            if STOPPING.is_set() or sys.exc_info()[1] is not None:  # its own line is on the way
                return
            STOPPING.set()
            others = [n for n in local if n != self.rank]
            cause = self.first()
            raise PeerError(
                f"torchrun stopped this process (SIGTERM) after another process of this "
                f"machine (node {', '.join(map(str, others)) or '?'}) stopped"
                + (f"; {cause}" if cause else "")
            )

        signal.signal(signal.SIGTERM, stop)
