"""A node's local steps: its own tensors move, the shared module does not, and the result does
not depend on which other nodes trained before it."""

from __future__ import annotations

import pytest
import torch

from declora.algorithms.methods import METHODS
from declora.config import load_config
from declora.harness import session
from declora.learning.train import make_schedule, train_steps


@pytest.fixture(scope="module")
def setup(tiny_model_dir, tiny_csv, tmp_path_factory):
    from tests.helpers import tiny_args

    args = tiny_args(tiny_model_dir, tiny_csv, tmp_path_factory.mktemp("t") / "o")
    return session.prepare(load_config(None, args))


def test_train_steps_move_only_the_nodes_own_tensors(setup):
    frozen = {k: v.clone() for k, v in setup.model.state_dict().items()}
    nodes = session.party_for(setup, METHODS["dec-lora"]).nodes
    before = {k: v.clone() for k, v in nodes[1].state().items()}
    train_steps(setup.model, nodes[0], 3, setup.collate)
    for k, v in setup.model.state_dict().items():
        assert torch.equal(v, frozen[k]), k  # the shared base (and its own LoRA copy) is untouched
    assert all(torch.equal(nodes[1].state()[k], before[k]) for k in before)
    moved = [k for k, v in nodes[0].state().items() if not torch.equal(v, setup.init[k])]
    assert any(".lora_B." in k for k in moved) and any("classifier" in k for k in moved)


def test_training_order_does_not_change_a_nodes_result(setup):
    a = session.party_for(setup, METHODS["local"]).nodes
    b = session.party_for(setup, METHODS["local"]).nodes
    for node in a:  # forwards order
        train_steps(setup.model, node, 2, setup.collate)
    for node in reversed(b):  # backwards order, dropout RNG drawn per node
        train_steps(setup.model, node, 2, setup.collate)
    for x, y in zip(a, b, strict=True):
        for k in x.params:
            torch.testing.assert_close(x.params[k], y.params[k], rtol=0, atol=0)


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [
        ("constant", [0.5, 1.0, 1.0, 1.0, 1.0]),
        ("linear", [0.5, 1.0, 0.75, 0.5, 0.25]),
        ("cosine", [0.5, 1.0, 0.8535534, 0.5, 0.1464466]),
    ],
)
def test_schedules(schedule, expected):
    cfg = load_config(None, [f"schedule={schedule}", "warmup=0.2", "lr=1.0"])
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched = make_schedule(opt, cfg, total_steps=5)
    seen = []
    for _ in range(5):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx(expected)
