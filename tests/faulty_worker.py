"""``declora worker`` whose transport misbehaves as the tests ask (:mod:`tests.faulty`):

    python -m torch.distributed.run ... -m tests.faulty_worker SPEC [CONFIG] [key=value ...]

Run from the repository root, so that ``tests`` is importable.
"""

from __future__ import annotations

import sys
from pathlib import Path

from declora import cli, wire
from tests.faulty import FaultyTransport


def main(argv: list[str]) -> int:
    spec, items = argv[0], argv[1:]

    def wrap(transport, cfg):
        key = wire.read_key(cfg.security.key_file) if cfg.security.key_file else None
        delay = 3 * cfg.peer_timeout
        return FaultyTransport(transport, spec, key, marker_dir=Path(cfg.out), delay_s=delay)

    return cli.worker(items, wrap)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
