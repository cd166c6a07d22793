"""DP-SGD against a neighbour who knows the shared config: a site's noise and sample come
from its own secret key, so the neighbour cannot replay them; a restart replays the same
noise, and a record written before every send keeps epsilon from undercounting and refuses a
second, different release; bf16 clipping stays within the bound; checkpoints are private
and signed; a start-up reason tells what is wrong without a row's content."""

from __future__ import annotations

import os
import stat
from dataclasses import replace

import numpy as np
import pytest
import torch

from declora.algorithms.methods import METHODS
from declora.config import load_config
from declora.harness import checkpoint, session
from declora.harness.outputs import REPRODUCIBLE, describe_privacy
from declora.harness.releases import ReleaseRefused, Releases
from declora.learning import dpsgd, privacy
from declora.learning.adapters import autocast
from declora.learning.secret import Secret
from declora.learning.sources import DataError
from declora.learning.tasks import task_for
from declora.learning.train import Node, train_steps
from declora.protocol import handshake, wire
from declora.protocol.keys import Keys
from tests.helpers import tiny_args

DP = ["privacy.noise_multiplier=1.0", "privacy.delta=1e-4", "optimizer=sgd", "lr=0.05"]
DP += ["head_lr_scale=1.0", "lora.dropout=0", "per_method={}"]


@pytest.fixture(scope="module")
def dp(tiny_model_dir, tiny_csv, tmp_path_factory):
    """The tiny run under DP-SGD with plain SGD, so a step's update is -lr x its gradient."""
    args = tiny_args(tiny_model_dir, tiny_csv, tmp_path_factory.mktemp("dp") / "o")
    return session.prepare(load_config(None, [*args, *DP]))


def private_node(s, cfg=None) -> Node:
    """Node 1 of the tiny run, with its DP budget (a key of its own, unless reproducible)."""
    s = s if cfg is None else replace(s, cfg=cfg)
    return session.party_for(s, METHODS["dec-lora"]).nodes[1]


def test_two_runs_of_one_config_draw_different_noise_and_samples(dp):
    a, b = private_node(dp), private_node(dp)
    assert a.secret.key != b.secret.key
    assert not np.array_equal(a.secret.normal(0, 50), b.secret.normal(0, 50))
    assert not np.array_equal(a.sampler.next(), b.sampler.next())


def test_the_reproducible_opt_out_draws_the_same_and_says_so(dp):
    cfg = dp.cfg.model_copy(
        update={"privacy": dp.cfg.privacy.model_copy(update={"reproducible": True})}
    )
    a, b = private_node(dp, cfg), private_node(dp, cfg)
    assert a.secret.key == b.secret.key
    assert np.array_equal(a.sampler.next(), b.sampler.next())
    assert REPRODUCIBLE in describe_privacy(replace(dp, cfg=cfg))
    assert "NO privacy guarantee" in REPRODUCIBLE


def test_the_secret_gaussian_is_a_standard_normal():
    z = Secret.fresh().normal(3, 200_000)
    assert abs(z.mean()) < 0.01 and z.std() == pytest.approx(1.0, rel=0.01)
    assert abs(float(np.mean(z**4)) - 3.0) < 0.1  # the kurtosis of a Gaussian


def _one_step(s, node, monkeypatch) -> tuple[dict, dict, torch.Tensor]:
    """Node's first DP-SGD step; (the adapter before, after, its true clipped sum, flat, as
    the step computed it)."""
    sums = []
    real = dpsgd.clip_and_sum
    monkeypatch.setattr(dpsgd, "clip_and_sum", lambda g, c: sums.append(real(g, c)) or sums[-1])
    before = {k: v.detach().clone() for k, v in node.params.items()}
    train_steps(s.model, node, 1, s.collate, task_for(s.cfg).example_losses)
    return before, node.state(), torch.cat([v.reshape(-1) for v in sums[0].values()])


def _attack(s, node, before, after, replayed: np.ndarray) -> torch.Tensor:
    """A neighbour's guess of the clipped sum from one payload (plain SGD: after = before -
    lr (sum + noise) / B), subtracting the noise it ``replayed``."""
    b, lr = node.budget, s.cfg.lr
    expected = b.rate * len(node.data)
    keys = [k for k, v in node.params.items() if v.requires_grad]
    step = torch.cat([(before[k] - after[k]).reshape(-1) for k in keys]).double()
    return step * expected / lr - torch.from_numpy(replayed) * b.noise * b.clip


def test_a_neighbour_who_knows_the_config_cannot_remove_the_noise(dp, monkeypatch):
    """The neighbour rebuilds node 1 from the config and replays its randomness. With the
    shared-seed opt-out this recovers the clipped sum (the attack works); with the site's
    secret its best guess is off by about the noise's whole size."""
    errors, of_sum = {}, {}
    for reproducible in (True, False):
        cfg = dp.cfg.model_copy(
            update={"privacy": dp.cfg.privacy.model_copy(update={"reproducible": reproducible})}
        )
        node = private_node(dp, cfg)
        before, after, true_sum = _one_step(replace(dp, cfg=cfg), node, monkeypatch)
        n = true_sum.numel()
        guess = private_node(dp, cfg).secret.normal(0, n)  # the neighbour's own rebuild
        got = _attack(dp, node, before, after, guess)
        noise_norm = (
            node.budget.noise * node.budget.clip * float(np.linalg.norm(node.secret.normal(0, n)))
        )
        miss = float((got - true_sum.double()).norm())
        errors[reproducible], of_sum[reproducible] = (
            miss / noise_norm,
            miss / float(true_sum.norm()),
        )
    print(f"attack error / noise norm: shared seed {errors[True]:.2e}, secret {errors[False]:.3f}")
    print(f"attack error / clipped sum: shared seed {of_sum[True]:.2e}, secret {of_sum[False]:.1f}")
    assert errors[True] < 1e-4  # the seed gives the noise away: the attack is real
    assert errors[False] > 0.5  # the secret keeps it: the guess is off by the noise itself


def test_a_restart_draws_the_same_noise_and_sample_from_the_checkpointed_key(dp, tmp_path):
    node = private_node(dp)
    checkpoint.save(tmp_path, node, 1, {})
    again = private_node(dp)  # a restarted process: a fresh key, until the checkpoint loads
    assert again.secret.key != node.secret.key
    checkpoint.load(tmp_path, again, 1)
    assert again.secret.key == node.secret.key and again.sampler.secret is again.secret
    assert np.array_equal(again.secret.normal(5, 100), node.secret.normal(5, 100))
    assert np.array_equal(again.sampler.next(), node.sampler.next())


def test_the_release_record_counts_steps_refuses_a_different_replay_and_survives(dp, tmp_path):
    node = private_node(dp)
    record = Releases(tmp_path / "node_1", node)
    node.scheduler.last_epoch = 3  # three DP steps taken when round 1 is sent
    record(1, 1, 0, b"round one")
    assert node.released == 3 and node.epsilon == node.budget.spent(3)
    assert stat.S_IMODE(os.stat(record.path).st_mode) == 0o600
    # a crash after the send, before any checkpoint: the restarted node still counts them
    restarted = private_node(dp)
    assert restarted.scheduler.last_epoch == 0
    again = Releases(tmp_path / "node_1", restarted)
    assert restarted.released == 3 and restarted.epsilon == restarted.budget.spent(3)
    again(1, 1, 0, b"round one")  # the same bytes again: nothing new is released
    with pytest.raises(ReleaseRefused, match="round 1, played again after a restart"):
        again(1, 1, 0, b"round one, other")
    with record.path.open("a") as f:  # a crash mid-write leaves a cut last line: dropped
        f.write('{"round": 2, "st')
    assert Releases(tmp_path / "node_1", private_node(dp)).sent == {(1, 0): again.sent[(1, 0)]}


def test_bf16_clipping_keeps_every_row_within_the_bound(dp):
    node = private_node(dp)
    batch = dp.collate(node.data, np.arange(12))
    with autocast(torch.device("cpu"), "bf16"):
        grads, _ = dpsgd.example_grads(
            dp.model, node.params, batch, task_for(dp.cfg).example_losses
        )
    assert all(g.dtype == torch.float32 for g in grads.values())
    norms = torch.stack([g.reshape(12, -1).norm(dim=1) for g in grads.values()]).norm(dim=0)
    clip = float(norms.median())
    factor = (clip / (norms + 1e-6)).clamp(max=1.0)
    clipped = torch.stack(
        [
            (g * factor.view(-1, *[1] * (g.dim() - 1))).reshape(12, -1).norm(dim=1)
            for g in grads.values()
        ]
    ).norm(dim=0)
    print(f"bf16: largest clipped row norm / C = {float(clipped.max() / clip):.8f}")
    assert float(clipped.max() / clip) <= 1 + 1e-6


def test_checkpoints_are_private_signed_and_refused_under_another_key(dp, tmp_path):
    node, keys = private_node(dp), Keys(os.urandom(32))
    path = checkpoint.save(tmp_path, node, 2, {}, key=keys.checkpoint)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    shapes = checkpoint.Store.shapes_of(dp.init)
    assert checkpoint.verify(tmp_path, 1, 2, "", shapes, keys.checkpoint) == ""
    other = Keys(os.urandom(32)).checkpoint
    assert "HMAC does not match" in checkpoint.verify(tmp_path, 1, 2, "", shapes, other)
    assert "key file" in checkpoint.verify(tmp_path, 1, 2, "", shapes, None)
    plain = checkpoint.save(tmp_path / "plain", node, 2, {})  # a SHA-256, as anyone can write
    assert "HMAC" in checkpoint.verify(plain.parents[1], 1, 2, "", shapes, keys.checkpoint)


def test_a_start_up_reason_names_the_file_and_line_but_no_row_content():
    err = DataError(
        "site_3.csv:7: label 'John Doe, 1962' is not in data.labels [a, b]",
        "site_3.csv:7: a label that is not in data.labels [a, b]",
    )
    assert "John" in str(err) and "John" not in err.public
    cfg = load_config(None, ["nodes=2"])
    key = Keys(os.urandom(32))
    offers = [
        handshake.offer(cfg, bytes(16), [], 0, key, err.public),
        handshake.offer(cfg, bytes([1]) * 16, [], 1, key, ""),
    ]
    with pytest.raises(wire.PeerError, match="node 0 could not start: site_3.csv:7: a label"):
        handshake.agree(cfg, offers, 1, key, warn=print)
    forged = bytearray(offers[0])
    reason_at = len(forged) - wire.TAG_SIZE - handshake.REASON_BYTES
    forged[reason_at : reason_at + 5] = b"STOP!"  # someone on the path rewrites the reason
    with pytest.raises(wire.PeerError, match="fails its HMAC tag"):
        handshake.agree(cfg, [bytes(forged), offers[1]], 1, key, warn=print)


def test_the_budget_counts_released_steps_beyond_the_checkpointed_ones():
    b = privacy.Budget(1.0, 1.0, 0.05, 100, 1e-5, "rdp", 100)
    assert b.spent(10) < b.spent(12)
