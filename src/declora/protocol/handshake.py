"""The start-up handshake of a distributed run: every process offers one message, every
process checks all of them, and they agree on the run id and the round to resume from.

An offer holds a random nonce, the fingerprint of the shared config (and 4 bytes of hash per
key, to name the first key on which two processes differ), the checkpoint rounds the node
holds intact, and why the node could not start (empty when it could), with an HMAC tag when a
key is set. Checking all offers (:func:`agree`): a wrong key or another config stops every
process at once with a line naming the node; the run id that every later message binds is the
hash of all nonces (a message recorded in an earlier run, or an earlier attempt, is refused);
the run resumes from the newest round that every node holds an intact checkpoint of, or says
why it starts over. The runtime moves the offers (one all_gather,
:func:`declora.runtimes.distributed.rendezvous.exchange_offers`).
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass

from declora.config import Config, dump_config
from declora.protocol import wire
from declora.protocol.wire import PeerError


class StartRefused(PeerError):
    """The nodes cannot start together (another key or config, or a node's own input): a
    configuration error of the run, refused before any round (exit 2, as a bad config)."""


NONCE_BYTES = 16
OFFER_SLOTS = 64  # checkpoint rounds a node offers at start (the newest ones)
REASON_BYTES = 240  # why a node could not start (its own data or config), told to every node
SITE_LOCAL = ("out", "device", "report_to")  # config keys each site may set for itself


def _shared(cfg: Config) -> Config:
    """The config every process must share: all of it but the site-local keys, the key
    file's path (whether there is a key counts; the secret itself never leaves) and, with
    per-site files, where each machine keeps its files and how they are encoded."""
    key = "set" if cfg.security.key_file else None
    site_files = {"path": "{node}", "encoding": "each site's own"}
    data = cfg.data.model_copy(update=site_files) if cfg.data.per_site else cfg.data
    return cfg.model_copy(
        update={
            **dict.fromkeys(SITE_LOCAL),
            "security": cfg.security.model_copy(update={"key_file": key}),
            "data": data,
        }
    )


def fingerprint(cfg: Config) -> str:
    """SHA-256 of the shared config (:func:`_shared`)."""
    return hashlib.sha256(dump_config(_shared(cfg)).encode()).hexdigest()


def key_digests(cfg: Config) -> tuple[list[str], bytes]:
    """The shared config's keys (a section's fields one by one) and 4 bytes of SHA-256 of each
    value: enough to name the first key on which two processes differ."""
    names, digest = [], b""
    for top, value in _shared(cfg).model_dump(mode="json").items():
        section = isinstance(value, dict) and top in Config.model_fields and top != "per_method"
        for name, v in value.items() if section else [(None, value)]:
            names.append(top if name is None else f"{top}.{name}")
            digest += hashlib.sha256(json.dumps(v, sort_keys=True).encode()).digest()[:4]
    return names, digest


@dataclass(frozen=True)
class Start:
    """What the processes agreed on before the first round."""

    run: bytes  # run id bound into every message of this start
    round: int  # the newest round every node holds an intact checkpoint of (0: afresh)
    rows: tuple[int, ...] = ()  # every node's training rows, as it offered them


def offer(
    cfg: Config,
    nonce: bytes,
    have: list[int],
    rank: int,
    key: bytes | None,
    failure: str,
    rows: int = 0,
) -> bytes:
    """Node ``rank``'s offer: ``nonce``, the config's fingerprint, the newest checkpoint
    rounds it holds (``have``), its training rows (``weighting=rows`` weighs each node by
    them) and why it could not start (``failure``), tagged with ``key``."""
    slots = (have[-OFFER_SLOTS:] + [-1] * OFFER_SLOTS)[:OFFER_SLOTS]
    print_ = bytes.fromhex(fingerprint(cfg)) + key_digests(cfg)[1]
    why = failure.encode()[:REASON_BYTES].ljust(REASON_BYTES, b"\0")
    body = nonce + print_ + struct.pack(f"<{OFFER_SLOTS}qq", *slots, rows) + why
    return body + (wire.sign(key, b"start", struct.pack("<I", rank), body) if key else wire.NO_TAG)


def _check_tags(offers: list[bytes], key: bytes, rank: int, size: int) -> None:
    """Every start-up offer's HMAC tag; a bad one names its node (or this node's key)."""
    bad = [
        j
        for j, o in enumerate(offers)
        if not wire.verify(key, o[size:], b"start", struct.pack("<I", j), o[:size])
    ]
    others = [j for j in range(len(offers)) if j != rank]
    if others and set(others) <= set(bad):
        raise StartRefused(
            "the start-up message of every other node fails its HMAC tag: this node's "
            "security.key_file differs from theirs"
        )
    if bad:
        raise StartRefused(
            f"node {bad[0]}'s start-up message fails its HMAC tag: it has another "
            "security.key_file (or an altered message); no round was played"
        )


def _check_configs(cfg: Config, offers: list[bytes], rank: int) -> int:
    """Every node's config fingerprint must equal this node's; a mismatch names the node and
    the first key on which they differ. Returns where the fingerprints end in an offer."""
    names, digests = key_digests(cfg)
    end = NONCE_BYTES + 32 + len(digests)
    prints = [o[NONCE_BYTES:end] for o in offers]
    differ = [j for j, fp in enumerate(prints) if fp != prints[rank]]
    if differ:
        theirs = prints[differ[0]][32:]
        first = next(
            (
                n
                for k, n in enumerate(names)
                if theirs[4 * k : 4 * k + 4] != digests[4 * k : 4 * k + 4]
            ),
            "?",
        )
        raise StartRefused(
            f"node {differ[0]} runs another config (first difference: {first}; only out=, "
            "device, security.key_file and, with per-site files, data.path and data.encoding "
            "may differ): start every node with the same config"
        )
    return end


def agree(cfg: Config, offers: list[bytes], rank: int, key: bytes | None, warn) -> Start:
    """What every process agrees on from every node's offer (in node order): refuses a wrong
    key or another config, naming the node, and stops every process with the reason of a
    node that could not start. With a key, every tag is checked before any offer is read:
    nobody on the path can stop the run with a reason of their choosing (without a key,
    anyone on the path can stop it anyway)."""
    size = len(offers[rank]) - wire.TAG_SIZE
    if key:
        _check_tags(offers, key, rank, size)
    for j, o in enumerate(offers):
        why = o[size - REASON_BYTES : size].rstrip(b"\0").decode(errors="replace")
        if why:  # printable only: a reason is shown on every site's terminal and log
            shown = "".join(c if c.isprintable() else "?" for c in why)
            raise StartRefused(f"node {j} could not start: {shown}")
    end = _check_configs(cfg, offers, rank)
    run = hashlib.sha256(b"".join(o[:NONCE_BYTES] for o in offers)).digest()[: wire.RUN_BYTES]
    lists = [struct.unpack_from(f"<{OFFER_SLOTS}q", o, end) for o in offers]
    rows = tuple(struct.unpack_from("<q", o, end + 8 * OFFER_SLOTS)[0] for o in offers)
    common = set.intersection(*(set(x) - {-1} for x in lists))
    if not common and any(x[0] != -1 for x in lists) and rank == 0:
        warn(
            "declora: no round is checkpointed intact on every node (a node's files are missing "
            "or refused, see above): starting over from round 0"
        )
    return Start(run, max(common, default=0), rows)
