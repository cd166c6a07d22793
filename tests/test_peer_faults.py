"""One faulty peer among 4 processes on loopback (gloo), one launch per fault (issue 11).

Each run trains 2 rounds, then gossips 3 finishing rounds with a key set; the fault hits a
finishing round. Every honest process must finish, or fail within ``peer_timeout`` with a line
naming the faulty node. After a finished run, the network average of the nodes' adapters is the
same at the end as after training (1e-6): in gossip-only rounds that holds exactly when every
round's effective W (the ring's W with each dropped edge's weight on the diagonal, as both
ends of the edge agreed) is doubly stochastic, whatever was refused.
"""

from __future__ import annotations

import re
import time

import pytest
import torch
from safetensors.torch import load_file

from declora.harness import checkpoint
from tests.helpers import tiny_args, write_key
from tests.test_dist import faulty_launch

TRAIN, FINISH = 2, 3


def network_average(out, round_: int) -> dict[str, torch.Tensor]:
    """Mean over the 4 nodes of each adapter tensor, from their checkpoints of ``round_``."""
    states = []
    for i in range(4):
        path = checkpoint.node_dir(out / "checkpoints", i) / f"round_{round_:06d}.safetensors"
        states.append({k: v for k, v in load_file(path).items() if k.startswith("adapter.")})
    return {k: torch.stack([s[k].double() for s in states]).mean(0) for k in states[0]}


def assert_average_kept(out) -> None:
    before, after = network_average(out, TRAIN), network_average(out, TRAIN + FINISH)
    for k in before:
        torch.testing.assert_close(after[k], before[k], rtol=0, atol=1e-6, msg=k)


@pytest.fixture
def args(tiny_model_dir, tiny_csv, tmp_path):
    key = write_key(tmp_path / "key")
    return [
        *tiny_args(tiny_model_dir, tiny_csv, tmp_path / "dist"),
        "methods=[dec-lora]",
        f"rounds={TRAIN}",
        f"finish_rounds={FINISH}",
        "eval_every=5",
        "lr=0.05",
        "checkpoint_every=1",
        "peer_timeout=10",
        f"security.key_file={key}",
    ]


REFUSED = {  # fault spec -> what each of the faulty node's two neighbours says
    "oversize=1@3": "announced a frame of",
    "forge=2@3": "HMAC tag does not match",
    "nan=3@4": "1 non-finite values",
    "flip=0@3": "HMAC tag does not match",
    "replay=1@4": "message is from another run",
}


@pytest.mark.multiprocess
@pytest.mark.parametrize("spec", list(REFUSED))
def test_a_bad_frame_is_refused_by_both_neighbours_and_the_average_is_kept(args, tmp_path, spec):
    proc = faulty_launch(args, spec)
    assert proc.returncode == 0, proc.stderr[-3000:]
    node, round_ = (int(x) for x in re.findall(r"\d+", spec.split("=")[1]))
    lines = [x for x in proc.stderr.splitlines() if "refused the message" in x]
    assert len(lines) == 2, lines  # the ring: two neighbours, and no one else
    assert all(f"from node {node} at round {round_}: {REFUSED[spec]}" in x for x in lines), lines
    own_log = tmp_path / "dist" / f"node_{(node + 1) % 4}" / "log.txt"  # a neighbour's own log
    assert f"refused the message from node {node} at round {round_}" in own_log.read_text()
    assert_average_kept(tmp_path / "dist")


@pytest.mark.multiprocess
@pytest.mark.parametrize("spec", ["crash=1@4", "corrupt=1@4"])
def test_a_crash_resumes_from_the_newest_intact_round_and_the_average_is_kept(args, tmp_path, spec):
    proc = faulty_launch(args, spec, max_restarts=1)
    assert proc.returncode == 0, proc.stderr[-3000:]
    if spec.startswith("corrupt"):  # node 1's round 3 is refused: every node resumes after 2
        assert "node 1: checkpoint of round 3 refused: checksum mismatch" in proc.stderr
        assert "resuming after round 2 " in proc.stdout, proc.stdout
    else:
        assert "resuming after round 3 " in proc.stdout, proc.stdout
    assert_average_kept(tmp_path / "dist")


START = {  # fault spec -> what the other nodes say about node 3 before any round
    "wrongkey=3@0": "node 3's start-up message fails its HMAC",
    "otherconfig=3@0": "node 3 runs another config (first difference: lr;",
}


@pytest.mark.multiprocess
@pytest.mark.parametrize("spec", list(START))
def test_a_node_with_another_key_or_config_stops_every_process_at_start_naming_it(
    args, tmp_path, spec
):
    proc = faulty_launch(args, spec)
    assert proc.returncode != 0
    for honest in (0, 1, 2):
        assert f"declora: node {honest}: {START[spec]}" in proc.stderr, proc.stderr[-3000:]
    if spec.startswith("wrongkey"):
        assert "declora: node 3: the start-up message of every other node" in proc.stderr
    assert not (tmp_path / "dist" / "metrics.jsonl").exists()  # no round was played


@pytest.mark.multiprocess
def test_a_hanging_peer_fails_its_neighbours_within_peer_timeout_naming_it(args):
    began = time.monotonic()
    proc = faulty_launch([*args, "peer_timeout=3"], "delay=2@3")
    assert proc.returncode != 0
    for honest in (1, 3):  # node 2's neighbours
        assert re.search(
            rf"^declora: node {honest}: round 3: node 2 did not answer within 3 s",
            proc.stderr,
            re.M,
        ), proc.stderr[-3000:]
    assert time.monotonic() - began < 120  # start-up and two rounds, then 3 s, not 3 x 3 s


@pytest.mark.multiprocess
def test_a_slow_evaluation_does_not_count_against_peer_timeout(args, tmp_path):
    """Rank 0 evaluates for 3 x peer_timeout while its neighbours wait to exchange: they wait
    for its word that it has evaluated, not for peer_timeout."""
    proc = faulty_launch([*args, "peer_timeout=3", "eval_every=1"], "sloweval=0@2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "did not answer" not in proc.stderr
