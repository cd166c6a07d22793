"""A node's own state and its local training steps, written out (no hidden Trainer).

The frozen base model exists once; a node owns only its adapter tensors, its optimizer (whose
moments never leave the node), its data sampler and its RNG stream. ``torch.func.functional_call``
runs the shared module with the node's tensors in place of the model's own.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from declora.algorithms.tensors import State, is_lora, is_lora_a
from declora.config import Config
from declora.learning import dpsgd
from declora.learning.adapters import autocast
from declora.learning.dataset import Dataset, Sampler
from declora.learning.devices import CPU, to_device
from declora.learning.privacy import Budget
from declora.learning.secret import Secret

Collate = Callable[[Dataset, np.ndarray], dict[str, torch.Tensor]]  # the task's, pad id bound


class Stopped(RuntimeError):
    """The run stops at a round; what ran until then is kept (``declora run`` exits 3)."""


class BudgetSpent(Stopped):
    """One more DP-SGD step would spend more than ``privacy.epsilon``."""


def make_optimizer(params: State, cfg: Config) -> torch.optim.Optimizer:
    """SGD or AdamW; the task head (randomly initialised, unlike LoRA's pretrained base) may
    learn faster: ``lr x head_lr_scale``. Frozen tensors (no grad) are left out."""
    head = [v for k, v in params.items() if not is_lora(k) and v.requires_grad]
    lora = [v for k, v in params.items() if is_lora(k) and v.requires_grad]
    groups = [{"params": lora}, {"params": head, "lr": cfg.lr * cfg.head_lr_scale}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


MOMENT = "exp_avg_sq."  # second_moment=mixed: the key prefix of a moment in what a node mixes


def moment_template(init: State) -> State:
    """What a node mixes under ``second_moment=mixed``: the adapter, then a second moment per
    tensor, zero as AdamW's starts (``exchanged_keys`` drops A's under frozen_a, as A's own)."""
    return {**init, **{MOMENT + k: torch.zeros_like(v) for k, v in init.items()}}


def allocate_state(params: State, optimizer: torch.optim.Optimizer) -> None:
    """Allocate a node's long-lived buffers (grads, Adam moments) now, before any training.

    Left to the first step, they land between that step's activation buffers and pin the heap
    (glibc cannot give the memory back), which made a 10-node simulation peak 14% above a
    centralized run. The zeros are exactly what the first step would have created.
    """
    for p in params.values():
        if p.requires_grad:
            p.grad = torch.zeros_like(p)
            if isinstance(optimizer, torch.optim.AdamW):  # AdamW's own layout of its state
                optimizer.state[p] = {
                    "step": torch.tensor(0.0),
                    "exp_avg": torch.zeros_like(p),
                    "exp_avg_sq": torch.zeros_like(p),
                }


def make_schedule(optimizer: torch.optim.Optimizer, cfg: Config, total_steps: int):
    """Linear warm-up over ``warmup`` of the steps, then constant, linear or cosine decay."""
    warm = int(cfg.warmup * total_steps)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / (warm + 1)
        done = (step - warm) / max(1, total_steps - warm)
        if cfg.schedule == "linear":
            return max(0.0, 1.0 - done)
        if cfg.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, done)))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@dataclass
class Node:
    """One site: its rows, its adapter tensors (leaves with grad) and its optimizer."""

    node_id: int
    data: Dataset
    params: State
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    sampler: Sampler
    rng_state: torch.Tensor  # this node's torch RNG (dropout), so runs do not depend on order
    budget: Budget | None = None  # DP-SGD (privacy.*): Poisson batches, clipped, noised
    last_loss: float = float("nan")
    last_grad_norm: float = float("nan")
    diverged: bool = False  # a step's loss was not finite
    scaler: torch.amp.GradScaler | None = None  # precision=fp16: the node's loss scale
    cuda_rng: torch.Tensor | None = None  # on a GPU, the node's CUDA RNG (dropout there)
    precision: str = "fp32"  # config precision: autocast of its forward and backward
    scale: float = 1.0  # weighting=rows: each optimizer update times n n_i / sum(n)
    secret: Secret | None = None  # DP-SGD: the site's own key for its noise and sample
    released: int = 0  # DP-SGD: steps this site has released (its record outlives restarts)
    moments: bool = False  # second_moment=mixed: AdamW's exp_avg_sq is mixed with the adapter
    gradients: bool = False  # exchange=gradients: it mixes each step's gradient, not its adapter

    @property
    def epsilon(self) -> float:
        """Privacy spent so far at the run's delta (NaN without DP): every step is a DP step;
        counted from the steps taken (checkpoints keep them) or, when more, the steps this
        site has released (a record written before each send, which a crash between a send
        and the next checkpoint does not lose)."""
        if not self.budget:
            return math.nan
        return self.budget.spent(max(self.scheduler.last_epoch, self.released))

    @classmethod
    def create(
        cls,
        node_id: int,
        data: Dataset,
        init: State,
        cfg: Config,
        stream: int,
        total_steps: int | None = None,
        budget: Budget | None = None,
        device: torch.device = CPU,
        scale: float = 1.0,
    ) -> Node:
        """A node starting from ``init``; ``total_steps`` (default rounds x local_steps) sets the
        length of its learning-rate schedule. Under ``consensus=frozen_a`` the LoRA A tensors get
        no grad and no optimizer slot: A stays the seeded initial one (every method, so the
        centralized baseline is the same frozen-A LoRA). Its tensors and optimizer state live
        on ``device``; ``init`` may be anywhere."""
        if len(data) == 0:
            raise ValueError(f"node {node_id} holds no training rows")
        frozen_a = cfg.consensus == "frozen_a"
        params = {
            k: v.to(device, copy=True).requires_grad_(not (frozen_a and is_lora_a(k)))
            for k, v in init.items()
        }
        seed = cfg.seed * 100_003 + stream
        gen = torch.Generator().manual_seed(seed)
        secret = None if budget is None else _secret(cfg, stream)
        optimizer = make_optimizer(params, cfg)
        allocate_state(params, optimizer)
        total = total_steps or cfg.rounds * cfg.local_steps
        return cls(
            node_id=node_id,
            data=data,
            params=params,
            optimizer=optimizer,
            scheduler=make_schedule(optimizer, cfg, total),
            sampler=Sampler(len(data), cfg.batch_size, (cfg.seed, stream), secret),
            rng_state=gen.get_state(),
            budget=budget,
            scaler=torch.amp.GradScaler(device.type) if cfg.precision == "fp16" else None,
            cuda_rng=cuda_stream(seed, device),
            precision=cfg.precision,
            scale=scale,
            secret=secret,
        )

    @property
    def device(self) -> torch.device:
        return next(iter(self.params.values())).device

    def state(self) -> State:
        """The adapter tensors as this node would send them: detached, on the CPU (a view on
        the CPU, a copy from a GPU)."""
        return {k: v.detach().cpu() for k, v in self.params.items()}

    def shared(self) -> State:
        """What this node mixes with its neighbours: its adapter and, under
        ``second_moment=mixed``, its AdamW second-moment estimates (``MOMENT + name``, one
        per trainable tensor); under ``exchange=gradients`` instead its step's gradient, as
        :func:`train_steps` left it for mixing."""
        if self.gradients:
            return {k: p.grad.detach().cpu() for k, p in self.params.items()}
        state = self.state()
        if self.moments:
            for k, p in self.params.items():
                if p.requires_grad:
                    state[MOMENT + k] = self.optimizer.state[p]["exp_avg_sq"].detach().cpu()
        return state

    @torch.no_grad()
    def set_shared(self, state: State) -> None:
        """Overwrite what :meth:`shared` gives, in place."""
        if self.gradients:
            for k, p in self.params.items():
                p.grad.copy_(state[k])
            return
        self.set_state(state)
        if self.moments:
            for k, p in self.params.items():
                if p.requires_grad:
                    self.optimizer.state[p]["exp_avg_sq"].copy_(state[MOMENT + k])

    def apply_grads(self) -> None:
        """One optimizer step on the gradients set (skipped under fp16 when the scaled
        gradients overflowed), then the schedule; keeps the gradient norm for monitoring."""
        grads = [p.grad for p in self.params.values() if p.grad is not None]
        self.last_grad_norm = float(
            torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))
        )
        before = self._before_update()
        if self.scaler is None:
            self.optimizer.step()
        else:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        self._scale_update(before)
        self.scheduler.step()

    @torch.no_grad()
    def scale_grads(self) -> None:
        """The gradients times ``scale``, once, before they are mixed (``exchange=gradients``)."""
        if self.scale != 1.0:
            for p in self.params.values():
                if p.grad is not None:
                    p.grad.mul_(self.scale)

    def _before_update(self) -> list[torch.Tensor] | None:
        """The trainable tensors before a step, when the step's update is to be scaled (not
        under ``exchange=gradients``: the gradient it sent was scaled)."""
        if self.scale == 1.0 or self.gradients:
            return None
        return [p.detach().clone() for p in self.params.values() if p.requires_grad]

    @torch.no_grad()
    def _scale_update(self, before: list[torch.Tensor] | None) -> None:
        """x <- before + scale (x - before): the optimizer's own update, times ``scale``."""
        if before is None:
            return
        trainable = [p for p in self.params.values() if p.requires_grad]
        for p, b in zip(trainable, before, strict=True):
            p.copy_(b + self.scale * (p - b))

    def record(self, losses: list[float]) -> float:
        """The losses of a round's steps (those that drew rows): their mean, and whether one
        was not finite."""
        self.diverged = not all(math.isfinite(v) for v in losses)
        self.last_loss = sum(losses) / len(losses) if losses else math.nan
        return self.last_loss

    @torch.no_grad()
    def set_state(self, state: State) -> None:
        """Overwrite the adapter in place, so the optimizer keeps pointing at the same tensors."""
        for k, v in self.params.items():
            v.copy_(state[k])


def train_steps(
    model: nn.Module,
    node: Node,
    steps: int,
    collate: Collate,
    losses: dpsgd.Losses | None = None,
    apply: bool = True,
) -> float:
    """Run ``steps`` optimizer steps on the node's own data; returns the mean training loss.
    With a DP budget each step is a DP-SGD step (``losses``: the task's per-row losses).
    ``apply=False`` (``exchange=gradients``, one step): the gradients are set and left for
    the round to mix; :meth:`Node.apply_grads` takes the step afterwards."""
    model.train()
    seen = []
    with own_streams(node):
        for _ in range(steps):
            rows = node.sampler.next()
            batch = to_device(collate(node.data, rows), node.device) if len(rows) else None
            with autocast(node.device, node.precision):
                if node.budget is None:
                    loss = _step(model, node, batch)
                else:
                    loss = _private_step(model, node, batch, losses)
            if apply:
                node.apply_grads()
            else:  # weighting=rows: the average of what the nodes send is the pooled gradient
                node.scale_grads()
            if len(rows):
                seen.append(loss)
    return node.record(seen)


def cuda_stream(seed: int, device: torch.device) -> torch.Tensor | None:
    """A node's own CUDA RNG state, seeded from its stream (None on the CPU)."""
    if device.type != "cuda":
        return None
    return torch.Generator(device=device).manual_seed(seed).get_state()


@contextlib.contextmanager
def own_streams(node: Node):
    """Draw dropout from the node's own RNG streams (the CPU's, and its GPU's when it trains
    on one), so that runs do not depend on the order nodes train in; put the global ones back."""
    saved = torch.get_rng_state()
    torch.set_rng_state(node.rng_state)
    gpu = node.device if node.cuda_rng is not None else None
    saved_gpu = torch.cuda.get_rng_state(gpu) if gpu else None
    if gpu:
        torch.cuda.set_rng_state(node.cuda_rng, gpu)
    try:
        yield
    finally:
        node.rng_state = torch.get_rng_state()
        torch.set_rng_state(saved)
        if gpu:
            node.cuda_rng = torch.cuda.get_rng_state(gpu)
            torch.cuda.set_rng_state(saved_gpu, gpu)


class _ForwardBackward(nn.Module):
    """The model's forward and its backward in one call, so that both run while
    ``functional_call`` has the node's tensors in place: gradient checkpointing recomputes
    the forward inside the backward, and must see the node's tensors there too."""

    def __init__(self, model: nn.Module, scaler):
        super().__init__()
        self.model, self.scaler = model, scaler

    def forward(self, **batch) -> torch.Tensor:
        loss = self.model(**batch).loss
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()
        return loss.detach()


def _step(model: nn.Module, node: Node, batch: dict) -> float:
    """Set the node's gradients for one step on ``batch`` (unscaled under fp16)."""
    node.optimizer.zero_grad(set_to_none=False)  # keep allocate_state's buffers
    both = _ForwardBackward(model, node.scaler)
    params = {f"model.{k}": v for k, v in node.params.items()}
    loss = functional_call(both, params, args=(), kwargs=batch)
    if node.scaler is not None:
        node.scaler.unscale_(node.optimizer)
    return loss.item()


def _private_step(model: nn.Module, node: Node, batch: dict | None, losses) -> float:
    """Set the node's gradients for one DP-SGD step on ``batch`` (None: no row was drawn;
    refused past the budget)."""
    b, done = node.budget, node.scheduler.last_epoch
    if done >= b.limit:
        raise BudgetSpent(
            f"node {node.node_id}: one more DP-SGD step would spend more than "
            f"privacy.epsilon={b.target:g} (epsilon {b.spent(done):.3g} after {done} steps)"
        )
    noise = lambda n: node.secret.normal(done, n)  # noqa: E731 (step done's own noise)
    return dpsgd.private_grads(model, node.params, batch, losses, b, b.rate * len(node.data), noise)


def _secret(cfg: Config, stream: int) -> Secret:
    """A DP node's key: fresh from the OS, or (``privacy.reproducible``) from the seed."""
    if cfg.privacy.reproducible:
        return Secret.from_seed(cfg.seed, stream)
    return Secret.fresh()
