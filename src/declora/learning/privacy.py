"""How much privacy a node's DP-SGD spends, and the noise that keeps it within a target.

The unit of privacy is one training row of one site. Node i runs DP-SGD on its own rows: each
step samples every row independently with probability ``q = batch_size / rows_i`` (Poisson
sampling), clips each row's gradient to ``privacy.clip`` and adds Gaussian noise of std
``noise_multiplier x clip`` to the sum (:mod:`declora.learning.dpsgd`). What it sends (adapters to its
neighbours) is then post-processing of those noisy steps, and what it receives depends on other
sites' rows only, so the privacy of its rows is that of its own steps, composed: the subsampled
Gaussian mechanism, ``steps`` times, accounted by Opacus (RDP by default, PRV on request).

The accounting is Opacus's, not ours: its accountants are maintained, tested against the
published analyses (Mironov et al. 2019 for RDP, Gopi et al. 2021 for PRV) and used widely.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, replace
from functools import lru_cache

from declora.config import Config, ConfigError

MAX_NOISE = 50.0  # a target that needs more noise than this cannot train anything useful
# a target that less noise than this meets protects nothing (and Opacus's bisection for it may
# never end: from about epsilon 1e16 it does not)
MIN_NOISE = 0.1


@lru_cache(maxsize=4096)
def epsilon(noise: float, rate: float, steps: int, delta: float, accountant: str = "rdp") -> float:
    """Epsilon at ``delta`` after ``steps`` subsampled Gaussian steps (0 steps: 0; no noise: inf)."""
    if steps <= 0:
        return 0.0
    if noise <= 0:
        return math.inf
    from opacus.accountants.utils import create_accountant

    acc = create_accountant(mechanism=accountant)
    acc.history = [(noise, rate, steps)]
    with warnings.catch_warnings():  # "optimal order is the largest alpha": a loose bound
        warnings.simplefilter("ignore", UserWarning)  # at huge noise, never the one used
        return float(acc.get_epsilon(delta=delta))


@lru_cache(maxsize=4096)
def noise_for(target: float, rate: float, steps: int, delta: float, accountant: str) -> float:
    """The smallest noise multiplier (to 0.01 in epsilon) that keeps ``steps`` steps within
    ``target``; ``inf`` when even ``MAX_NOISE`` does not, 0 when less than ``MIN_NOISE``
    does (no search then)."""
    if epsilon(MAX_NOISE, rate, steps, delta, accountant) > target:
        return math.inf
    if epsilon(MIN_NOISE, rate, steps, delta, accountant) <= target:
        return 0.0
    from opacus.accountants.utils import get_noise_multiplier

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return float(
            get_noise_multiplier(
                target_epsilon=target,
                target_delta=delta,
                sample_rate=rate,
                steps=steps,
                accountant=accountant,
            )
        )


@dataclass(frozen=True)
class Budget:
    """One node's DP-SGD for a run: its noise, clip, sampling rate and steps."""

    noise: float
    clip: float
    rate: float  # Poisson sampling probability of each row: batch_size / rows
    steps: int  # the steps the run plans
    delta: float
    accountant: str
    limit: int  # steps that fit the target epsilon (= steps without a target)
    target: float | None = None  # privacy.epsilon

    def spent(self, steps: int) -> float:
        """Epsilon at the run's delta after ``steps`` steps."""
        return epsilon(self.noise, self.rate, steps, self.delta, self.accountant)


def budget(cfg: Config, node: int | str, rows: int, steps: int) -> Budget:
    """Node ``node``'s budget for ``steps`` DP-SGD steps on ``rows`` rows; a setting that
    cannot run raises ConfigError (one line, before anything is written)."""
    p = cfg.privacy
    if rows <= cfg.batch_size:
        raise ConfigError(
            f"privacy: node {node} holds {rows} rows, not more than batch_size={cfg.batch_size} "
            "(DP-SGD samples each row with probability batch_size / rows)"
        )
    if p.delta >= 1 / rows:
        raise ConfigError(
            f"privacy.delta={p.delta:g} must be below 1/rows of every site: node {node} holds "
            f"{rows} rows (1/{rows} = {1 / rows:.3g})"
        )
    rate = cfg.batch_size / rows
    noise = p.noise_multiplier
    if noise is None:
        noise = noise_for(p.epsilon, rate, steps, p.delta, p.accountant)
        if math.isinf(noise):
            raise ConfigError(
                f"privacy.epsilon={p.epsilon:g} cannot be met at node {node} ({steps} steps at "
                f"sampling rate {rate:.3g}) with noise_multiplier up to {MAX_NOISE:g}: raise "
                "privacy.epsilon, or lower rounds, local_steps or batch_size"
            )
        if noise == 0:
            floor = epsilon(MIN_NOISE, rate, steps, p.delta, p.accountant)
            raise ConfigError(
                f"privacy.epsilon={p.epsilon:g} is met by a noise multiplier below "
                f"{MIN_NOISE:g} at node {node} (which spends epsilon {floor:.3g} in {steps} "
                "steps): such noise protects nothing; lower privacy.epsilon, or give "
                "privacy.noise_multiplier"
            )
    b = Budget(noise, p.clip, rate, steps, p.delta, p.accountant, steps, p.epsilon)
    if p.epsilon is not None and b.spent(steps) > p.epsilon:
        return replace(b, limit=_steps_within(b, p.epsilon))
    return b


def _steps_within(b: Budget, target: float) -> int:
    """The most steps whose epsilon stays within ``target`` (bisection: epsilon grows with steps)."""
    lo, hi = 0, b.steps  # spent(lo) <= target < spent(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if b.spent(mid) <= target else (lo, mid)
    return lo


def plan(
    cfg: Config, node_rows: list[int], methods: dict[str, bool]
) -> dict[str, dict[int, Budget]]:
    """Every budget the run will use, by method (``methods``: name -> whether it pools the
    rows), computed (and checked) before anything is written, each at the method's own
    rounds and batch size (``per_method`` subrounds): a method whose nodes train, each node
    with rows here (rounds x local_steps steps on its own rows), and a pooled one (the
    centralized model: nodes x local_steps steps a round on all rows, key 0). Empty without
    DP.

    With both a noise multiplier and a target epsilon, a node whose budget runs out before the
    last round makes the whole network stop at the last round that fits every node (a node
    cannot train on while its neighbours wait)."""
    if not cfg.privacy.enabled:
        return {}
    out = {}
    for name, pooled in methods.items():
        own = cfg.for_method(name)
        steps = own.rounds * own.local_steps
        if pooled:
            one = budget(own, "(pooled)", sum(node_rows), steps * own.nodes)
            out[name] = _stop_together({0: one}, own.nodes * own.local_steps, True)
        else:
            nodes = {i: budget(own, i, n, steps) for i, n in enumerate(node_rows) if n}
            out[name] = _stop_together(nodes, own.local_steps, all(node_rows))
    return out


def _stop_together(budgets: dict[int, Budget], per_round: int, known: bool) -> dict:
    """Every budget limited to the same whole number of rounds: the fewest any node affords.
    ``known``: every node's rows are known here (not a launch process with per-site files)."""
    fewest = min(b.limit for b in budgets.values()) // per_round
    if fewest * per_round >= next(iter(budgets.values())).steps:
        return budgets
    i, b = min(budgets.items(), key=lambda kv: kv[1].limit)
    if fewest == 0 or not known:
        raise ConfigError(
            f"privacy: node {i} reaches privacy.epsilon={b.target:g} after {fewest} of "
            f"{b.steps // per_round} rounds at noise_multiplier={b.noise:g}: lower rounds or "
            "raise the noise"
        )
    return {j: replace(v, limit=fewest * per_round) for j, v in budgets.items()}
