"""What a run shows while its rounds run: a progress bar (the simulator, tuning), one line per
evaluated round (rank 0 of a launch), or nothing (the other processes)."""

from __future__ import annotations

from typing import Protocol

from tqdm.auto import tqdm

from declora.harness.report import headline


class Progress(Protocol):
    """What a runtime shows while rounds run."""

    def round_done(self, t: int) -> None: ...

    def evaluated(self, record: dict) -> None: ...


class Quiet:
    """Shows nothing (the processes that do not evaluate)."""

    def round_done(self, t: int) -> None:
        pass

    def evaluated(self, record: dict) -> None:
        pass


class Bar:
    """A progress bar over one method's rounds, showing the latest evaluation of what the
    method's headline reports (the nodes' own adapters for ``local``)."""

    def __init__(self, method: str, rounds: int, leave: bool = True):
        self.method = method
        self.bar = tqdm(total=rounds, desc=f"{method:>11}", unit="round", leave=leave)

    def round_done(self, t: int) -> None:
        self.bar.update(1)

    def evaluated(self, record: dict) -> None:
        shown = headline(self.method, record)
        self.bar.set_postfix(acc=f"{shown['accuracy']:.3f}", loss=f"{shown['loss']:.3f}")


class Lines:
    """Rank 0's progress: one line per evaluated round."""

    def __init__(self, rounds: int, echo):
        self.rounds, self.echo = rounds, echo

    def round_done(self, t: int) -> None:
        pass

    def evaluated(self, rec: dict) -> None:
        self.echo(
            f"round {rec['round']}/{self.rounds}: accuracy {rec['accuracy']:.4f}, "
            f"loss {rec['loss']:.4f}, {rec['bytes_sent'] / 1e6:.2f} MB sent per node"
        )
