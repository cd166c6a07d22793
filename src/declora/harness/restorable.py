"""What a checkpoint may restore into a node: every value of the kind, shape and range that
the node's own state has. A digest (a SHA-256 without a key file) says a file is whole, not
that its values are sane: whoever can write the file can write its digest too. So each value
is checked against the node it would be restored into (a fresh one of the same run) before
any of it is used; a value out of range is a reason to refuse the file, by name, like damage.
"""

from __future__ import annotations

import math
import re

import numpy as np
import torch

from declora.learning.secret import KEY_BYTES
from declora.learning.train import Node

EXCHANGE = re.compile(r"exchange\.((public|heard)\.\d+|anchor|c)")  # what exchanges keep


def check(meta: dict, tensors: dict[str, torch.Tensor], node: Node) -> str:
    """Why the checkpoint's ``meta`` and ``tensors`` cannot be restored into ``node`` (""
    if they can)."""
    for part in (_adapter, _optimizer, _schedule, _sampler, _rest):
        why = part(meta, tensors, node)
        if why:
            return why
    return ""


def _finite(name: str, t: torch.Tensor) -> str:
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        return f"{name} is not finite"
    return ""


def _adapter(meta: dict, tensors: dict[str, torch.Tensor], node: Node) -> str:
    for k, v in node.params.items():
        got = tensors.get(f"adapter.{k}")
        if got is None or got.shape != v.shape or got.dtype != v.dtype:
            return f"adapter tensor {k} is missing or of another shape or type"
        why = _finite(f"adapter tensor {k}", got)
        if why:
            return why
    return ""


def _optimizer(meta: dict, tensors: dict[str, torch.Tensor], node: Node) -> str:
    """Every optimizer slot the node has, of its shape and finite; no other; param groups
    with the node's keys and sane numbers."""
    own = node.optimizer.state_dict()
    want = {
        f"optim.{i}.{name}": v for i, slots in own["state"].items() for name, v in slots.items()
    }
    got = {k for k in tensors if k.startswith("optim.")}
    if got != set(want):
        extra = sorted(got ^ set(want))[0]
        return f"optimizer state {extra} is not this run's (its slots differ)"
    for k, v in want.items():
        t = tensors[k]
        if t.shape != torch.as_tensor(v).shape:
            return f"optimizer state {k} is of another shape"
        if _finite(k, t):
            return f"optimizer state {_finite(k, t)}"
    groups = meta.get("param_groups")
    if not isinstance(groups, list) or len(groups) != len(own["param_groups"]):
        return "param_groups are not this run's"
    for mine, theirs in zip(own["param_groups"], groups):
        if not isinstance(theirs, dict) or set(theirs) != set(mine) or not _like(mine, theirs):
            return "param_groups hold other keys, or values out of range"
    return ""


def _like(mine, theirs) -> bool:
    """Whether ``theirs`` has the kind of ``mine`` (numbers finite and not negative)."""
    if isinstance(mine, bool) or mine is None:
        return theirs == mine if mine is None else isinstance(theirs, bool)
    if isinstance(mine, int | float):
        return (
            isinstance(theirs, int | float)
            and not isinstance(theirs, bool)
            and math.isfinite(theirs)
            and theirs >= 0
        )
    if isinstance(mine, list | tuple):
        return (
            isinstance(theirs, list | tuple)
            and len(theirs) == len(mine)
            and all(_like(a, b) for a, b in zip(mine, theirs))
        )
    if isinstance(mine, dict):
        return (
            isinstance(theirs, dict)
            and set(theirs) == set(mine)
            and all(_like(mine[k], theirs[k]) for k in mine)
        )
    return isinstance(theirs, type(mine))


def _schedule(meta: dict, tensors: dict[str, torch.Tensor], node: Node) -> str:
    """The learning-rate schedule's state: the node's own keys (LambdaLR sets each as an
    attribute) with values of their kind."""
    own = node.scheduler.state_dict()
    theirs = meta.get("scheduler")
    if not isinstance(theirs, dict) or set(theirs) != set(own) or not _like(own, theirs):
        return "scheduler state holds other keys, or values out of range"
    return ""


def _sampler(meta: dict, tensors: dict[str, torch.Tensor], node: Node) -> str:
    """The data sampler: an order that is a permutation of the node's rows, a position
    within them (a step count with a secret), a generator state numpy takes."""
    n = node.sampler.n
    order = tensors.get("sampler.order")
    if order is None or order.dtype != torch.int64 or order.shape != (n,):
        return f"sampler order is not a permutation of the node's {n} rows"
    if not np.array_equal(np.sort(order.numpy()), np.arange(n)):
        return f"sampler order is not a permutation of the node's {n} rows"
    pos = meta.get("sampler_pos")
    top = 2**53 if node.sampler.secret is not None else n
    if type(pos) is not int or not 0 <= pos <= top:
        return f"sampler position {pos!r} is outside 0..{top}"
    try:
        np.random.default_rng().bit_generator.state = meta.get("sampler_rng")
    except (TypeError, ValueError, KeyError):
        return "sampler generator state is not one numpy takes"
    return ""


def _rest(meta: dict, tensors: dict[str, torch.Tensor], node: Node) -> str:
    """RNG states, the site's secret key, the last loss and gradient norm, the counters and
    the exchange's own state."""
    for name, own in (("rng", node.rng_state), ("rng_cuda", node.cuda_rng)):
        t = tensors.get(name)
        if own is not None and t is not None and (t.dtype != own.dtype or t.shape != own.shape):
            return f"{name} (an RNG state) is of another size"
    if tensors.get("rng") is None:
        return "rng (an RNG state) is missing"
    secret = tensors.get("secret")
    if secret is not None and (secret.dtype != torch.uint8 or secret.shape != (KEY_BYTES,)):
        return f"secret is not {KEY_BYTES} bytes"
    for key in ("last_loss", "last_grad_norm"):
        value = meta.get(key)
        if value is not None and type(value) not in (int, float):  # NaN: not yet trained
            return f"{key} is not a number"
    if not _counters(meta.get("counters")):
        return "counters are not counts"
    for k, t in tensors.items():
        if k.startswith("exchange.") and (
            not EXCHANGE.fullmatch(k) or t.dim() != 1 or _finite(k, t)
        ):
            return f"exchange state {k} is not one an exchange keeps"
    return ""


def _counters(c) -> bool:
    """Counters as runner.save_checkpoints writes them: numbers (or None), none negative."""
    if not isinstance(c, dict):
        return False
    return all(
        v is None or (type(v) in (int, float) and (math.isinf(v) or v >= 0)) for v in c.values()
    )
