"""DP-SGD: the accountant agrees with Opacus's published figures, per-example gradients are
exact, clipping bounds each row, the noise has the stated size, and bad settings are refused
in one line before anything is written."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch
from torch.func import functional_call

from declora.algorithms.methods import METHODS
from declora.config import ConfigError, load_config
from declora.harness import session
from declora.learning import dpsgd, privacy
from declora.learning.dataset import Sampler
from declora.learning.secret import Secret
from declora.learning.tasks import task_for
from tests.helpers import load_benchmark, records, run_sim, tiny_args, tiny_llama_args

# ------------------------------------------------------------------------- accounting


# The figures of Opacus 1.6.0's own tests (opacus/tests/accountants_test.py): sigma 1.5,
# sample rate 0.04, 90 epochs (2,249 or 2,250 steps), delta 1e-5.


def test_rdp_epsilon_matches_opacus_published_example():
    assert privacy.epsilon(1.5, 0.04, int(90 / 0.04), 1e-5) == pytest.approx(7.32911117143)


def test_prv_epsilon_matches_opacus_published_example():
    got = privacy.epsilon(1.5, 0.04, int(90 // 0.04), 1e-5, "prv")
    assert got == pytest.approx(6.777395712150674, abs=1e-7)


@pytest.mark.parametrize(("steps", "noise"), [(int(90 / 0.04), 1.416), (2000, 1.3562)])
def test_noise_for_a_target_matches_opacus_published_example(steps, noise):
    got = privacy.noise_for(8.0, 0.04, steps, 1e-5, "rdp")
    assert got == pytest.approx(noise, abs=5e-5)
    assert privacy.epsilon(got, 0.04, steps, 1e-5) <= 8.0


def test_prv_is_at_most_rdp_and_epsilon_grows_with_steps():
    rdp = privacy.epsilon(1.0, 0.01, 1000, 1e-5, "rdp")
    prv = privacy.epsilon(1.0, 0.01, 1000, 1e-5, "prv")
    assert 0 < prv <= rdp
    seq = [privacy.epsilon(1.0, 0.01, s, 1e-5) for s in (0, 10, 100, 1000)]
    assert seq[0] == 0 and seq == sorted(seq)
    assert privacy.epsilon(0.0, 0.01, 10, 1e-5) == math.inf


def _cfg(*extra):
    # every method at the top-level rounds and batch (the built-in dec-lora plays 2 subrounds)
    return load_config(None, ["batch_size=16", "rounds=50", "local_steps=2", "subrounds=1", *extra])


def test_budget_meets_the_target_and_a_cap_limits_the_steps():
    b = privacy.budget(_cfg("privacy.epsilon=3"), 0, rows=800, steps=100)
    assert b.rate == 16 / 800 and b.limit == 100
    assert 2.98 <= b.spent(100) <= 3.0
    capped = privacy.budget(_cfg("privacy.epsilon=1", "privacy.noise_multiplier=0.8"), 0, 800, 100)
    assert capped.limit < 100
    assert capped.spent(capped.limit) <= 1.0 < capped.spent(capped.limit + 1)


def test_every_node_stops_at_the_same_round_under_a_cap():
    cfg = _cfg("nodes=3", "privacy.epsilon=2", "privacy.noise_multiplier=1.2")
    plan = privacy.plan(cfg, [300, 900, 2000], {"dec-lora": False, "centralized": True})
    limits = {b.limit for b in plan["dec-lora"].values()}
    assert len(limits) == 1 and limits.pop() % cfg.local_steps == 0
    assert all(b.spent(b.limit) <= 2 for b in plan["dec-lora"].values())
    assert 0 < plan["dec-lora"][0].limit < 100  # the smallest site sets where every node stops
    assert plan["centralized"][0].rate == 16 / 3200


@pytest.mark.parametrize(
    ("extra", "rows", "message"),
    [
        (["privacy.epsilon=3", "privacy.delta=0.01"], 800, "must be below 1/rows of every site"),
        (["privacy.epsilon=0.001"], 800, "cannot be met at node 0"),
        (["privacy.noise_multiplier=1"], 16, "not more than batch_size=16"),
        (["privacy.epsilon=0.1", "privacy.noise_multiplier=0.5"], 800, "after 0 of 50 rounds"),
    ],
)
def test_settings_that_cannot_run_are_refused(extra, rows, message):
    with pytest.raises(ConfigError, match=message):
        privacy.plan(_cfg(*extra), [rows], {"dec-lora": False})


@pytest.mark.parametrize("target", ["1e4", "1e16", "1e30", "1e300"])
def test_a_target_that_almost_no_noise_meets_is_refused_at_once(target):
    """Opacus's search for the noise bisects forever above what any noise gives (from about
    1e16 here); a target that noise below privacy.MIN_NOISE meets protects nothing."""
    import signal

    def hang(*_):
        raise TimeoutError(f"privacy.epsilon={target}: no answer within 20 s")

    signal.signal(signal.SIGALRM, hang)
    signal.alarm(20)
    try:
        with pytest.raises(
            ConfigError, match=re.escape(f"privacy.epsilon={float(target):g} is met by")
        ):
            privacy.plan(_cfg(f"privacy.epsilon={target}"), [800], {"dec-lora": False})
    finally:
        signal.alarm(0)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("privacy.epsilon=0", "privacy.epsilon: Input should be greater than 0"),
        ("privacy.epsilon=-2", "privacy.epsilon: Input should be greater than 0"),
        ("privacy.clip=0", "privacy.clip: Input should be greater than 0"),
        ("privacy.delta=0", "privacy.delta: Input should be greater than 0"),
        ("privacy.delta=1.5", "privacy.delta: Input should be less than 1"),
        ("security.encrypt=true", "encrypt=true needs key_file"),
    ],
)
def test_bad_values_are_one_line_config_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_poisson_sampler_takes_each_row_with_probability_batch_over_rows():
    s = Sampler(400, 16, seed=(0, 1), secret=Secret.fresh())
    sizes = [len(s.next()) for _ in range(2000)]
    assert abs(np.mean(sizes) - 16) < 0.3 and min(sizes) < 10 < 22 < max(sizes)
    state = s.state_dict()
    a = s.next()
    s.load_state_dict(state)
    assert np.array_equal(a, s.next())


# ------------------------------------------------------------------ per-example gradients


@pytest.fixture(scope="module")
def tiny(tiny_model_dir, tiny_csv, tmp_path_factory):
    args = tiny_args(tiny_model_dir, tiny_csv, tmp_path_factory.mktemp("p") / "o")
    return session.prepare(load_config(None, [*args, "lora.dropout=0"]))


def _one_by_one(s, params, batch, losses):
    """Each row's gradient from its own forward and backward (the slow, obvious way)."""
    out = []
    for r in range(len(batch["input_ids"])):
        row = {k: v[r : r + 1] for k, v in batch.items()}
        loss = losses(functional_call(s.model, params, args=(), kwargs=row), row).sum()
        names = [k for k, v in params.items() if v.requires_grad]
        grads = torch.autograd.grad(loss, [params[k] for k in names])
        out.append(dict(zip(names, grads)))
    return out


def _check_exact(s, rows):
    node = session.party_for(s, METHODS["local"]).nodes[0]
    with torch.no_grad():  # a trained-looking adapter: B != 0, so A gets gradients too
        for v in node.params.values():
            v.add_(0.05 * torch.randn_like(v))
    batch = s.collate(node.data, np.arange(rows))
    losses = task_for(s.cfg).example_losses
    s.model.eval()  # the base's own dropout off: both ways see the same network
    got, per_row = dpsgd.example_grads(s.model, node.params, batch, losses)
    want = _one_by_one(s, node.params, batch, losses)
    assert per_row.shape == (rows,)
    for r in range(rows):
        for k, g in want[r].items():
            torch.testing.assert_close(got[k][r], g, rtol=1e-4, atol=1e-6)
    return got


def test_per_example_gradients_equal_one_row_at_a_time(tiny):
    got = _check_exact(tiny, 6)
    assert any(".lora_A." in k for k in got) and any("classifier" in k for k in got)


def test_per_example_gradients_on_a_causal_lm(tiny_llama_dir, tiny_csv, tmp_path):
    args = tiny_llama_args(tiny_llama_dir, tiny_csv, tmp_path / "o")
    s = session.prepare(load_config(None, [*args, "lora.dropout=0"]))
    _check_exact(s, 4)


def test_with_noise_zero_every_clipped_row_has_norm_at_most_clip(tiny):
    node = session.party_for(tiny, METHODS["local"]).nodes[0]
    batch = tiny.collate(node.data, np.arange(12))
    grads, _ = dpsgd.example_grads(
        tiny.model, node.params, batch, task_for(tiny.cfg).example_losses
    )
    norms = torch.stack([g.reshape(12, -1).norm(dim=1) for g in grads.values()]).norm(dim=0)
    clip = float(norms.median())  # half the rows are clipped, half are not
    scaled = {
        k: g * (clip / (norms + 1e-6)).clamp(max=1).view(-1, *[1] * (g.dim() - 1))
        for k, g in grads.items()
    }
    after = torch.stack([g.reshape(12, -1).norm(dim=1) for g in scaled.values()]).norm(dim=0)
    assert (after <= clip * (1 + 1e-5)).all() and (norms > clip).any()
    summed = dpsgd.clip_and_sum(grads, clip)
    for k in grads:
        torch.testing.assert_close(summed[k], scaled[k].sum(0))
    budget = privacy.Budget(0.0, clip, 0.1, 1, 1e-5, "rdp", 1)
    dpsgd.private_grads(
        tiny.model, node.params, batch, task_for(tiny.cfg).example_losses, budget, 8.0, None
    )
    for k, v in node.params.items():
        if v.requires_grad:
            torch.testing.assert_close(v.grad, summed[k] / 8.0)


def test_noise_has_std_noise_times_clip_over_the_expected_batch(tiny):
    node = session.party_for(tiny, METHODS["local"]).nodes[0]
    budget = privacy.Budget(1.5, 2.0, 0.1, 1, 1e-5, "rdp", 1)
    secret = Secret.fresh()  # the site's own keystream, a step's draws each time
    draws = []
    for step in range(20):  # no row sampled: noise alone
        noise = lambda n, step=step: secret.normal(step, n)  # noqa: E731
        dpsgd.private_grads(tiny.model, node.params, None, None, budget, 10.0, noise)
        draws += [v.grad.reshape(-1).clone() for v in node.params.values() if v.requires_grad]
    noise = torch.cat(draws)
    assert abs(float(noise.mean())) < 0.01
    assert float(noise.std()) == pytest.approx(1.5 * 2.0 / 10.0, rel=0.02)


# ------------------------------------------------------------------------ whole runs


@pytest.mark.slow
def test_a_private_run_reports_epsilon_per_node_and_in_the_summary(
    tiny_model_dir, tiny_csv, tmp_path, capsys
):
    out = tmp_path / "o"
    args = tiny_args(tiny_model_dir, tiny_csv, out)
    run_sim([*args, "privacy.epsilon=4", "privacy.delta=1e-4", "methods=[dec-lora,centralized]"])
    recs = records(out)
    last = [r for r in recs if r["method"] == "dec-lora"][-1]
    assert len(last["epsilon_nodes"]) == 4 and 3.9 < last["epsilon"] <= 4.0
    assert last["epsilon"] == max(last["epsilon_nodes"])
    assert all(r["train_loss"] is None for r in recs)  # the training loss stays on the site
    first = [r for r in recs if r["method"] == "dec-lora"][0]
    assert first["epsilon"] < last["epsilon"]  # spent so far, growing
    summary = json.loads((out / "summary.json").read_text())
    for m in ("dec-lora", "centralized"):
        assert 3.9 < summary["methods"][m]["epsilon"] <= 4.0
        assert summary["methods"][m]["delta"] == 1e-4
    table = capsys.readouterr().out
    assert "wall s epsilon" in table and "privacy spent at delta 0.0001" in table, table


@pytest.mark.slow
def test_a_run_stops_rather_than_exceed_its_epsilon(tiny_model_dir, tiny_csv, tmp_path, capsys):
    from declora.cli import main

    out = tmp_path / "o"
    args = tiny_args(tiny_model_dir, tiny_csv, out)
    cap = ["privacy.noise_multiplier=1.0", "privacy.epsilon=3", "privacy.delta=1e-4"]
    assert main(["run", *args, *cap, "methods=[dec-lora]"]) == 3
    err = capsys.readouterr().err
    assert "would spend more than privacy.epsilon=3" in err, err
    recs = records(out)
    assert recs[-1]["round"] < 6 and recs[-1]["epsilon"] <= 3.0
    assert "stopped" in json.loads((out / "summary.json").read_text())


def test_an_unreachable_target_is_refused_before_anything_is_written(
    tiny_model_dir, tiny_csv, tmp_path, capsys
):
    from declora.cli import main

    out = tmp_path / "o"
    code = main(["run", *tiny_args(tiny_model_dir, tiny_csv, out), "privacy.epsilon=0.01"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "cannot be met at node" in err[0], err
    assert not out.exists()


def test_launch_refuses_an_unreachable_target_before_torchrun(
    tiny_model_dir, tiny_csv, tmp_path, capsys
):
    from declora.cli import main

    out = tmp_path / "o"
    args = [*tiny_args(tiny_model_dir, tiny_csv, out), "methods=[dec-lora]"]
    assert main(["launch", *args, "privacy.epsilon=3", "privacy.delta=0.05"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "must be below 1/rows of every site" in err[0], err
    assert not out.exists()


def test_the_privacy_benchmark_runs_on_todays_api_and_keeps_the_rows_it_does_not_rerun(
    tiny_model_dir, tiny_csv, tmp_path, monkeypatch
):
    """benchmarks/privacy.py end to end on the tiny model (it broke silently twice: when keys
    became derived secrets, and when final_figures moved to harness.summary, the second after
    50 minutes of runs), and a one-method run keeps the other method's rows."""
    bench = load_benchmark("privacy")
    monkeypatch.chdir(tmp_path)  # its runs go to runs/privacy/
    args = [a for a in tiny_args(tiny_model_dir, tiny_csv, tmp_path / "o") if "out=" not in a]
    (got,) = bench.run_setting(3, [1.0], [*args, "rounds=2"], ("dec-lora",))
    assert got["method"] == "dec-lora" and 0 < got["epsilon"] <= 3 and 0 <= got["test"] <= 1
    # extend=true: an earlier best that validation does not beat keeps its test figure (the
    # test rows are not read again), and the grid is the union of both (the new run's figure
    # differs from the first's: DP noise comes from each node's secret, not the seed)
    earlier = {**got, "val": 1.0, "test": 0.123, "tried": {"9": 1.0}, "kept": True}
    (again,) = bench.run_setting(3, [1.0], [*args, "rounds=2"], ("dec-lora",), [earlier])
    assert again["test"] == 0.123 and "kept" not in again
    assert list(again["tried"]) == ["9", *got["tried"]] and again["tried"]["9"] == 1.0
    cost = bench.encryption_cost(reps=1)
    clear = cost["clear"]["bytes"]
    assert clear > 4 * 74_498 and cost["hmac"]["bytes"] == clear + 32  # the SHA-256 tag
    assert cost["aes-gcm"]["bytes"] == clear + 16  # the GCM tag
    row = {
        "setting": 3,
        "test": 0.6,
        "node_min": None,
        "epsilon": 3.0,
        "noise": [0.6],
        "lr": 0.001,
        "tried": {"0.001": 0.6},
        "s_per_sample": 0.01,
    }
    rows = [{**row, "method": "dec-lora"}, {**row, "method": "centralized", "kept": True}]
    text = bench.markdown(rows, cost, "python benchmarks/privacy.py", load_config(None), 1.0)
    assert "| centralized (kept) |" in text and "| dec-lora |" in text
    assert "1 method rows in" in text and "(kept): not run by this command" in text
    # the job as each method plays it: the built-in dec-lora's 2 subrounds and 8-bit messages
    assert "dec-lora: 140 rounds of 3 gossip steps, 1 step x batch 8, messages 8-bit" in text
    assert "centralized: 70 rounds of 8 steps (nodes x steps) x batch 16" in text


def test_the_privacy_benchmark_refuses_to_build_on_a_table_that_is_not_there(tmp_path):
    """extend=true, or one method (keeping the other's rows), reads the table's JSON: without
    it, one line and nothing written, before any run starts."""
    bench = load_benchmark("privacy")
    table = tmp_path / "missing.md"
    for own in ("extend=true", "methods=[centralized]"):
        with pytest.raises(SystemExit, match="which is not there") as stop:
            bench.main([own, f"table={table}"])
        assert "\n" not in str(stop.value)
    assert list(tmp_path.iterdir()) == []
