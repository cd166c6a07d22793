"""``declora worker`` whose transport misbehaves as the tests ask (:mod:`tests.faulty`):

    python -m torch.distributed.run ... -m tests.faulty_worker SPEC [CONFIG] [key=value ...]

Besides the transport's faults, ``wrongkey=NODE@0`` gives that node's process another key
file and ``otherconfig=NODE@0`` another learning rate. Run from the repository root, so that ``tests`` is importable.
"""

from __future__ import annotations

import base64
import os
import sys
import tempfile
from pathlib import Path

from declora import cli
from declora.protocol.keys import read_key
from tests.faulty import WRONG_KEY, FaultyTransport, parse


def main(argv: list[str]) -> int:
    spec, items = argv[0], argv[1:]
    rank = int(os.environ.get("RANK", 0))
    if parse(spec).get((rank, 0)) == "wrongkey":
        with tempfile.NamedTemporaryFile("wb", suffix=".key", delete=False) as f:
            f.write(base64.b64encode(WRONG_KEY))  # the file is 0600 (tempfile's own mode)
        items = [*items, f"security.key_file={f.name}"]
    if parse(spec).get((rank, 0)) == "otherconfig":
        items = [*items, "lr=0.123"]
    spec = ",".join(x for x in spec.split(",") if not x.strip().endswith("@0"))

    def wrap(transport, cfg):
        key = read_key(cfg.security.key_file) if cfg.security.key_file else None
        delay = 3 * cfg.peer_timeout
        return FaultyTransport(transport, spec, key, marker_dir=Path(cfg.out), delay_s=delay)

    return cli.worker(items, wrap)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
