"""The round written once (declora.protocol.rounds): messages, refusals and counters with a stand-in
transport, the memory transport, and the simulator under a transport that misbehaves."""

from __future__ import annotations

import json
import math
import os
from dataclasses import replace

import numpy as np
import pytest
import torch

from declora.algorithms.consensus import mix_row
from declora.algorithms.methods import METHODS
from declora.config import CompressionConfig, load_config
from declora.learning.dataset import Dataset
from declora.learning.train import Node
from declora.protocol import wire
from declora.protocol.exchange import Exchange
from declora.protocol.gossip import Link, Outgoing, Step
from declora.protocol.keys import Keys, read_key
from declora.protocol.rounds import Counters, NodeCounters, Party, communicate
from declora.runtimes.sim import MemoryTransport, run
from tests.faulty import FaultyTransport, parse
from tests.helpers import tiny_args, write_key

W3 = np.array([[0.5, 0.25, 0.25], [0.25, 0.75, 0.0], [0.25, 0.0, 0.75]])


def tiny_party(values: list[float], held: list[int], method="dec-lora", key=None) -> Party:
    """Nodes ``held`` of a network whose node i starts with every entry at ``values[i]``."""
    cfg = load_config(None, ["optimizer=sgd", "batch_size=2", "rounds=1"])
    data = Dataset([[1, 2]], np.array([0]), ["a", "b"])
    nodes, exchanges = [], []
    for i in held:
        init = {"lora_A": torch.full((2, 3), values[i]), "head": torch.full((2,), values[i])}
        nodes.append(Node.create(i, data, init, cfg, stream=i))
        exchanges.append(Exchange(i, init))
    return Party(
        method=METHODS[method],
        model=None,
        collate=None,
        nodes=nodes,
        exchanges=exchanges,
        steps=1,
        batch_size=2,
        size=len(values),
        mixing=None,
        link=Link(key),
        warn=lambda line: None,
    )


def mix(party: Party, W, t: int, transport) -> Counters:
    """One gossip step of round t for the party; the held nodes' counters after it."""
    counters = party.counters()
    communicate(party, counters, W, t, transport)
    return counters


class StandIn:
    """Hands over pre-made frames instead of talking to processes; every peer accepts ours."""

    def __init__(self, frames: dict):
        self.frames = frames

    def swap(self, outbox, step):
        ((i, out),) = outbox.items()
        assert sorted(self.frames) == out.peers
        return {i: self.frames}

    def tell(self, values, kind, step, hear=None):
        hear = {i: list(row) for i, row in values.items()} if hear is None else hear
        return {i: dict.fromkeys(js, 1) for i, js in hear.items()}


def frame_from(j: int, value: float, round_: int, key=None, nan=False) -> bytes:
    state = {"lora_A": torch.full((2, 3), value), "head": torch.full((2,), value)}
    payload = Exchange(j, state).outgoing(state, round_)
    if nan:
        payload = payload[:-4] + np.float32("nan").tobytes()
    return wire.seal(payload, j, wire.Stamp(round=round_), torch.float32, key)


def test_a_node_mixes_accepted_messages_and_gives_refused_weight_to_itself():
    party = tiny_party([1.0, 4.0, 10.0], held=[0])
    lines = []
    party = replace(party, warn=lines.append)
    transport = StandIn({1: frame_from(1, 4.0, 3), 2: frame_from(2, 10.0, 3, nan=True)})
    counters = mix(party, W3, 3, transport)
    c = counters.nodes[0]
    assert c.refused == 1 and c.sent == 2 * c.payload > 0
    assert lines == [
        "declora: node 0 refused the message from node 2 at round 3: 1 non-finite values"
    ]
    init = {"lora_A": torch.ones(2, 3), "head": torch.ones(2)}
    expected = mix_row(init, 0.75, {1: (0.25, {k: 4 * v for k, v in init.items()})})
    for k, v in party.nodes[0].params.items():
        torch.testing.assert_close(v.detach(), expected[k])
        torch.testing.assert_close(v.detach(), torch.full_like(v, 1.75))


def test_unauthenticated_oversized_and_missing_messages_are_refused():
    key = b"s" * 32
    party = tiny_party([0.0, 8.0, 8.0], held=[0], key=key)
    lines = []
    party = replace(party, warn=lines.append)
    transport = StandIn({1: frame_from(1, 8.0, 2, key=key), 2: "announced a frame of 9e9 bytes"})
    counters = mix(party, W3, 2, transport)
    assert counters.nodes[0].refused == 1 and "node 2" in lines[0] and "9e9" in lines[0]
    assert torch.allclose(party.nodes[0].params["head"], torch.full((2,), 2.0))  # 0.75*0 + 0.25*8
    party = tiny_party([0.0, 8.0, 8.0], held=[0], key=key)
    party = replace(party, warn=lines.append)
    lines.clear()
    frames = {1: frame_from(1, 8.0, 2, key=b"x" * 32), 2: frame_from(2, 8.0, 2, key=key)}
    counters = mix(party, W3, 2, StandIn(frames))
    assert counters.nodes[0].refused == 1 and "node 1" in lines[0] and "HMAC" in lines[0]


def test_an_isolated_node_neither_sends_nor_mixes():
    party = tiny_party([0.0, 1.0, 2.0], held=[0, 1, 2])
    W = np.array([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])  # node 2 cut off
    counters = mix(party, W, 1, MemoryTransport())
    heads = [n.params["head"].detach() for n in party.nodes]
    assert torch.allclose(heads[0], torch.full((2,), 0.5))
    assert torch.equal(heads[2], torch.full((2,), 2.0))
    sent = [counters.nodes[i].sent for i in range(3)]
    assert sent[2] == 0 and sent[0] == sent[1] > 0


def test_a_server_counts_one_upload_per_node():
    W = np.full((3, 3), 1 / 3)
    gossip, server = (tiny_party([0.0, 3.0, 6.0], [0, 1, 2], m) for m in ("dec-lora", "fedavg"))
    sent = {}
    for party in (gossip, server):
        sent[party.method.name] = mix(party, W, 1, MemoryTransport())
        for n in party.nodes:
            assert torch.allclose(n.params["head"], torch.full((2,), 3.0))
    for i in range(3):
        assert sent["dec-lora"].nodes[i].sent == 2 * sent["fedavg"].nodes[i].sent > 0


def test_memory_transport_moves_what_both_ends_post_and_refuses_a_missing_post():
    t = MemoryTransport()
    got = t.post({0: {1: b"ab"}, 1: {0: b"c"}}, {0: {1: 1}, 1: {0: 2}}, 1)
    assert got == {0: {1: b"c"}, 1: {0: b"ab"}}
    with pytest.raises(RuntimeError, match="node 2 posted no 3 bytes to node 0"):
        t.post({0: {2: b"x"}}, {0: {2: 3}}, 1)


class OneSided(MemoryTransport):
    """Flips a byte of node ``bad``'s frame on its way to node ``victim`` only."""

    def __init__(self, bad: int, victim: int):
        self.bad, self.victim = bad, victim

    def post(self, outbox, expect, round_):
        frame = outbox.get(self.bad, {}).get(self.victim)
        if frame is not None and len(frame) != wire.CONTROL_SIZE:
            flipped = bytearray(frame)
            flipped[-1] ^= 0xFF
            outbox = {**outbox, self.bad: {**outbox[self.bad], self.victim: bytes(flipped)}}
        return super().post(outbox, expect, round_)


def heads(party) -> list[float]:
    return [float(n.params["head"][0].detach()) for n in party.nodes]


def test_a_one_sided_refusal_drops_the_edge_at_both_ends_and_keeps_the_average():
    """3 nodes, W = 1/3: node 0 refuses node 2's frame, so node 2 does not mix node 0's either:
    the mean of (0, 3, 9) stays 4 (it went to 3 when a refusal was one-sided)."""
    W = np.full((3, 3), 1 / 3)
    party = tiny_party([0.0, 3.0, 9.0], [0, 1, 2])
    lines = []
    party = replace(party, warn=lines.append)
    counters = mix(party, W, 1, OneSided(bad=2, victim=0))
    assert lines == [
        "declora: node 0 refused the message from node 2 at round 1: checksum mismatch "
        "(the message was corrupted)"
    ]
    got = heads(party)
    assert got == pytest.approx([1.0, 4.0, 7.0])  # node 0: (2*0+3)/3, node 2: (3+2*9)/3
    assert np.mean(got) == pytest.approx(4.0)
    assert [counters.nodes[i].refused for i in range(3)] == [1, 0, 0]


def test_an_oversized_announcement_is_refused_before_any_byte_moves():
    W = np.full((3, 3), 1 / 3)
    party = tiny_party([0.0, 3.0, 9.0], [0, 1, 2])
    lines = []
    party = replace(party, warn=lines.append)
    mix(party, W, 1, FaultyTransport(MemoryTransport(), "oversize=1@1"))
    assert len(lines) == 2 and all("from node 1" in x and "announced a frame" in x for x in lines)
    assert heads(party) == pytest.approx([3.0, 3.0, 6.0])  # 0 and 2 mix at 1/3; 1 stays alone
    assert np.mean(heads(party)) == pytest.approx(4.0)


def test_under_choco_a_refused_message_updates_no_public_copy_anywhere():
    W = np.full((3, 3), 1 / 3)
    party = tiny_party([0.0, 3.0, 9.0], [0, 1, 2])
    spec = CompressionConfig(scheme="choco", kind="quantize", bits=8, gamma=0.5)
    shared = {
        k: torch.zeros_like(v) for k, v in party.nodes[0].state().items()
    }  # copies start here
    party = replace(party, exchanges=[Exchange(n.node_id, shared, spec) for n in party.nodes])
    for t in (1, 2, 3):
        transport = OneSided(bad=2, victim=0) if t == 2 else MemoryTransport()
        mix(party, W, t, transport)
        for j in range(3):  # every holder of node j's copy holds the same copy
            copies = [ex.public[j] for ex in party.exchanges if j in ex.public]
            assert len(copies) == 3 and all(torch.equal(c, copies[0]) for c in copies), (t, j)
        assert np.mean(heads(party)) == pytest.approx(4.0, abs=1e-5)


def test_counters_round_trip_through_a_checkpoint_dict():
    c = Counters(samples=96, wall_s=1.5, nodes={3: NodeCounters(math.nan, 0.5, 100, 50, 2)})
    saved = json.loads(json.dumps(c.state_dict(3)))  # what the checkpoint's metadata holds
    back = Counters()
    back.load_state_dict(3, saved)
    assert back.samples == 96 and back.wall_s == 1.5
    got = back.nodes[3]
    assert math.isnan(got.loss) and (got.grad_norm, got.sent, got.payload, got.refused) == (
        0.5,
        100,
        50,
        2,
    )
    assert NodeCounters.from_vector(got.to_vector()).sent == 100


def test_fault_specs_parse():
    assert parse("crash=1@2, nan=3@4") == {(1, 2): "crash", (3, 4): "nan"}


def test_simulator_refuses_bad_frames_like_the_distributed_runtime(
    tiny_model_dir, tiny_csv, tmp_path
):
    """The same refusals as test_dist's 4 processes, in one process: the round is one code."""
    key = tmp_path / "key"
    write_key(key)
    args = [*tiny_args(tiny_model_dir, tiny_csv, tmp_path / "run"), "methods=[dec-lora]"]
    cfg = load_config(None, [*args, f"security.key_file={key}"])
    spec = "nan=1@2,short=1@3,forge=3@4,flip=2@5,drop=0@1"
    lines = []
    wrap = lambda t: FaultyTransport(t, spec, key=read_key(key))  # noqa: E731
    _, summary = run(cfg, echo=lines.append, wrap=wrap)
    assert summary["methods"]["dec-lora"]["messages_refused"] == 10
    assert np.isfinite(summary["methods"]["dec-lora"]["loss"])


def test_faulty_transport_refuses_unknown_faults():
    transport = FaultyTransport(MemoryTransport(), "melt=0@1")
    with pytest.raises(ValueError, match="unknown fault"):
        transport.swap({0: Outgoing([1], b"x"), 1: Outgoing([0], b"y")}, Step(wire.Stamp(round=1)))


def test_finishing_rounds_only_gossip_until_the_nodes_agree(tiny_model_dir, tiny_csv, tmp_path):
    """finish_rounds=25 on a ring of 4 (W = 1/3 on each edge, disagreement shrinks 3x a round):
    the same training, then every node ends holding the network average, which gossip keeps;
    the extra rounds cost bytes and no samples."""
    base = [
        *tiny_args(tiny_model_dir, tiny_csv, None),
        "methods=[dec-lora]",
        "export_adapters=false",
    ]
    summaries = {}
    for finish in (0, 25):
        out = tmp_path / f"finish{finish}"
        run(
            load_config(None, [*base, f"out={out}", f"finish_rounds={finish}"]), echo=lambda s: None
        )
        summaries[finish] = json.loads((out / "summary.json").read_text())["methods"]["dec-lora"]
    plain, finished = summaries[0], summaries[25]
    assert finished["samples_seen"] == plain["samples_seen"]
    assert finished["rounds"] == plain["rounds"] + 25
    assert finished["bytes_sent_per_node"] == plain["bytes_sent_per_node"] * (6 + 25) // 6
    assert finished["consensus_ab"] < 1e-6 < plain["consensus_ab"]
    # mixing with a doubly stochastic W keeps the mean of A and of B: the average is unchanged
    assert finished["average_adapter"]["loss"] == pytest.approx(
        plain["average_adapter"]["loss"], abs=1e-5
    )
    for key in ("accuracy", "loss"):
        nodes = [n[key] for n in finished["nodes"]]
        assert max(nodes) - min(nodes) < 1e-5
        assert finished[key] == pytest.approx(finished["average_adapter"][key], abs=1e-5)


def test_finishing_rounds_end_once_the_graph_has_averaged_exactly(
    tiny_model_dir, tiny_csv, tmp_path
):
    """On Base-2 (exact after its period) finish_rounds=25 stops at the fewest rounds whose
    matrices multiply to J: every node holds the same adapter, at a fraction of the bytes.
    Where exactness is not assured (faults, compression, tracking, the ring) all 25 stay."""
    from declora.algorithms.schedule import Schedule
    from declora.harness.session import finish_rounds_of
    from declora.jobs.estimate import estimate, format_estimate

    args = [
        *tiny_args(tiny_model_dir, tiny_csv, tmp_path / "base"),
        "methods=[dec-lora]",
        "export_adapters=false",
        "topology.kind=base",
        "finish_rounds=25",
    ]
    fewest = Schedule.varying("base", 4).exact_within(6, 25)
    assert finish_rounds_of(load_config(None, args), "dec-lora") == fewest < 25
    for other in ("faults.link_drop=0.3", "compression.kind=quantize", "correction=tracking"):
        assert finish_rounds_of(load_config(None, [*args, other]), "dec-lora") == 25, other
    ring = [*args[:-2], "finish_rounds=25"]
    assert finish_rounds_of(load_config(None, ring), "dec-lora") == 25
    est = estimate(load_config(None, args))
    assert est["finish_rounds"] == fewest and est["finish_rounds_configured"] == 25
    assert (
        f"(+ {fewest} gossip-only for Dec-LoRA: exact by then, of finish_rounds=25)"
        in (format_estimate(est).splitlines()[0])
    )
    run(load_config(None, args), echo=lambda s: None)
    done = json.loads((tmp_path / "base" / "summary.json").read_text())["methods"]["dec-lora"]
    assert done["rounds"] == 6 + fewest
    assert done["consensus_ab"] < 1e-6
    nodes = [n["loss"] for n in done["nodes"]]
    assert max(nodes) - min(nodes) < 1e-5


def test_gossip_steps_mix_more_for_more_bytes(tiny_model_dir, tiny_csv, tmp_path):
    """gossip_steps=3: three exchanges a round on the same W, so three times the bytes, the
    same samples, and nodes closer together than with one."""
    base = [
        *tiny_args(tiny_model_dir, tiny_csv, None),
        "methods=[dec-lora]",
        "export_adapters=false",
    ]
    got = {}
    for steps in (1, 3):
        out = tmp_path / f"g{steps}"
        run(load_config(None, [*base, f"out={out}", f"gossip_steps={steps}"]), echo=lambda s: None)
        got[steps] = json.loads((out / "summary.json").read_text())["methods"]["dec-lora"]
    assert got[3]["bytes_sent_per_node"] == 3 * got[1]["bytes_sent_per_node"]
    assert got[3]["samples_seen"] == got[1]["samples_seen"]
    assert got[3]["consensus_ab"] < got[1]["consensus_ab"]


class FlipVerdict(MemoryTransport):
    """Flips one bit of the tag of node ``bad``'s verdict messages, as anyone on the path
    could without the key."""

    def __init__(self, bad: int):
        self.bad = bad

    def post(self, outbox, expect, round_):
        sent = dict(outbox)
        for j, data in list(sent.get(self.bad, {}).items()):
            if len(data) == wire.CONTROL_SIZE and data[5] == wire.KINDS["verdict"]:
                flipped = bytearray(data)
                flipped[-1] ^= 0x01
                sent[self.bad] = {**sent[self.bad], j: bytes(flipped)}
        return super().post(sent, expect, round_)


def test_a_tampered_verdict_stops_the_round_naming_the_peer_and_moves_no_average():
    """Node 0's verdict to node 1, one bit of its tag flipped: before, node 1 dropped the
    edge while node 0 mixed (the mean of 0 and 1 went to 0.75, nothing logged); now the
    round stops at node 1 with one line naming node 0, before any node mixes."""
    key = Keys(os.urandom(32))
    party = replace(tiny_party([0.0, 1.0], [0, 1], key=key), warn=(lines := []).append)
    W = np.full((2, 2), 0.5)
    with pytest.raises(wire.PeerError, match="node 1 refused the verdict message from node 0"):
        mix(party, W, 1, FlipVerdict(bad=0))
    assert heads(party) == [0.0, 1.0]  # nobody mixed: the average is where it was
    assert len(lines) == 1 and "HMAC tag does not match" in lines[0]
