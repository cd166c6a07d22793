"""Consensus rules on adapter states, and the consensus distances the theory talks about.

Pure functions on ``dict[str, Tensor]``: no process group, no device logic. Every node mixes
its own row (:func:`mix_row`, :func:`product_row`), in whichever runtime it runs.

The consensus rules (config ``consensus``; this is the one place they are explained):

- ``ab`` (the paper): A, B and the head are each replaced by sum_j W_ij x_j. Averaging the
  factors is not averaging the products: mean_j B_j times mean_j A_j differs from
  mean_j B_j A_j, and ``consensus_ab`` (:func:`consensus_distances`) measures what that costs.
- ``frozen_a``: A is the same seeded tensor on every node and is never trained; B and the head
  are mixed and sent (half the bytes). Exact in product space, since
  sum_j W_ij B_j A = (sum_j W_ij B_j) A.
- ``product``: A, B and the head are sent; every adapted module's products B_j A_j are mixed
  and refactored to rank r by a truncated SVD (:func:`refactor`), A keeping the node's own
  size, then turned to the factors nearest the node's own (:func:`align`) so that the
  optimizer's moments, which never leave the node, keep pointing along roughly the same basis.
  Nodes agree on products, not factors, so the network's adapter is the factors of the mean
  product (:func:`network_average`).
"""

from __future__ import annotations

import numpy as np
import torch

from declora.algorithms.tensors import State, is_lora, is_lora_a, is_lora_b, lora_pairs

RULES = ("ab", "frozen_a", "product")  # config.Rule reads this


def mix_row(own: State, own_weight: float, received: dict[int, tuple[float, State]]) -> State:
    """One node's update: W_ii * own + sum over neighbours j of W_ij * state_j.

    Sums in float64 in a fixed order (self, then neighbours by id), so it is the same sum on
    every runtime and matches the matrix form W @ X to float tolerance.
    """
    out = {}
    for key, value in own.items():
        acc = value.double() * own_weight
        for j in sorted(received):
            weight, state = received[j]
            acc = acc + state[key].double() * weight
        out[key] = acc.to(value.dtype)
    return out


def exchanged_keys(state: State, rule: str) -> list[str]:
    """Keys a node sends under consensus ``rule`` (in state order): everything, except A under
    ``frozen_a`` (every node holds the same seeded A and never trains it)."""
    if rule not in RULES:
        raise ValueError(f"unknown consensus rule {rule!r} (choose from {RULES})")
    return [k for k in state if not (rule == "frozen_a" and is_lora_a(k))]


def refactor(
    P: torch.Tensor, rank: int, a_scale: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank-``rank`` factors of ``P`` (d_out, d_in) by a truncated SVD, in float64.

    P = U S V^T; B is (d_out, r) like PEFT's lora_B.weight and A is (r, d_in) like
    lora_A.weight, and B @ A is the best rank-r approximation of P (Eckart-Young).

    Without ``a_scale`` both factors get sqrt(S) (balanced): B = U_r sqrt(S_r), A = sqrt(S_r)
    V_r^T; directions with a zero singular value come back as zero rows of A / columns of B.
    With ``a_scale`` = c, A = c V_r^T (orthogonal rows of norm c, as LoRA's random A nearly has)
    and B = U_r S_r / c: the product's size goes to B. LoRA needs that asymmetry: its B starts
    at 0, and balanced factors of a small product make A small too, where both gradients
    (each proportional to the other factor) vanish.
    """
    U, S, Vh = torch.linalg.svd(P.double(), full_matrices=False)  # U (d_out, k), Vh (k, d_in)
    k = min(rank, S.numel())
    B = torch.zeros(P.shape[0], rank, dtype=torch.float64)
    A = torch.zeros(rank, P.shape[1], dtype=torch.float64)
    if a_scale is None:
        root = S[:k].sqrt()
        B[:, :k] = U[:, :k] * root
        A[:k] = root[:, None] * Vh[:k]
    else:
        B[:, :k] = U[:, :k] * (S[:k] / a_scale)
        A[:k] = a_scale * Vh[:k]
    return B, A


def align(B: torch.Tensor, A: torch.Tensor, B_old: torch.Tensor, A_old: torch.Tensor):
    """The factors (B R, R^T A) of the same product B A nearest to (B_old, A_old).

    Any orthogonal R gives the same product; the one minimising ||B R - B_old||^2 +
    ||R^T A - A_old||^2 is the polar factor of M = B^T B_old + A A_old^T (orthogonal
    Procrustes). Without it the SVD's gauge (signs, order, rotations within equal singular
    values) jumps from round to round, and the optimizer's moments, which stay with the node,
    point along the old basis.
    """
    U, _, Vh = torch.linalg.svd(B.T @ B_old + A @ A_old.T)
    R = U @ Vh
    return B @ R, R.T @ A


def product_row(own: State, own_weight: float, received: dict[int, tuple[float, State]]) -> State:
    """``product`` rule for one node: every adapted module's B_i, A_i become rank-r factors of
    P_i = W_ii B_i A_i + sum_j W_ij B_j A_j (float64, self then neighbours by id): the truncated
    SVD's, with A of the node's own size (:func:`refactor` with ``a_scale``) and turned
    (:func:`align`) to lie nearest the node's own B_i, A_i. The head is mixed as in
    :func:`mix_row`. Shapes and dtypes of A and B are kept."""
    out = mix_row({k: v for k, v in own.items() if not is_lora(k)}, own_weight, received)
    for ka, kb in lora_pairs(own):
        P = own_weight * (own[kb].double() @ own[ka].double())  # (d_out, d_in)
        for j in sorted(received):
            weight, state = received[j]
            P = P + weight * (state[kb].double() @ state[ka].double())
        rank, A_own = own[ka].shape[0], own[ka].double()
        if not torch.any(P):  # every B is 0 (LoRA's start): nothing to mix, keep A
            B, A = torch.zeros_like(own[kb], dtype=torch.float64), A_own
        else:
            scale = float(A_own.norm()) / rank**0.5  # keep the node's size of A
            B, A = align(*refactor(P, rank, scale), own[kb].double(), A_own)
        out[ka], out[kb] = A.to(own[ka].dtype), B.to(own[kb].dtype)
    return {k: out[k] for k in own}  # the node's key order


def average(states: list[State]) -> State:
    """Network average of every tensor (the adapter the paper evaluates)."""
    return {k: torch.stack([s[k] for s in states]).mean(0) for k in states[0]}


def network_average(states: list[State], rule: str = "ab") -> State:
    """The adapter that stands for the whole network: the plain mean of every tensor, except
    under ``product``, whose nodes agree on their products B_i A_i and not on the factors
    (their A's may differ by any rotation): there it is the rank-r factors of the mean product,
    as :func:`product_row` with equal weights would give node 0."""
    if rule != "product" or len(states) == 1:
        return average(states)
    n = len(states)
    return product_row(states[0], 1.0 / n, {j: (1.0 / n, states[j]) for j in range(1, n)})


def _relative_spread(per_node: list[list[torch.Tensor]]) -> float:
    """mean_i ||x_i - mean_j x_j||_F / ||mean_j x_j||_F, the norm taken over all listed tensors."""
    n_parts = len(per_node[0])
    means = [torch.stack([node[p] for node in per_node]).mean(0) for p in range(n_parts)]
    denom = float(torch.sqrt(sum((m.double() ** 2).sum() for m in means)))
    if denom == 0.0:
        return float("nan")
    dists = [
        float(torch.sqrt(sum(((node[p] - means[p]).double() ** 2).sum() for p in range(n_parts))))
        for node in per_node
    ]
    return float(np.mean(dists)) / denom


def consensus_distances(states: list[State]) -> dict[str, float]:
    """Relative spread of A, of B and of the products B @ A over nodes (0 = full agreement).

    ``consensus_ab`` is mean_i ||B_i A_i - mean_j B_j A_j||_F / ||mean_j B_j A_j||_F, summed over
    every adapted module. NaN where the mean is zero (B starts at zero).
    """
    if len(states) < 2:
        return {"consensus_a": 0.0, "consensus_b": 0.0, "consensus_ab": 0.0}
    pairs = lora_pairs(states[0])
    a = [[s[k] for k in s if is_lora_a(k)] for s in states]
    b = [[s[k] for k in s if is_lora_b(k)] for s in states]
    ab = [[s[kb] @ s[ka] for ka, kb in pairs] for s in states]  # each (d_out, d_in)
    return {
        "consensus_a": _relative_spread(a),
        "consensus_b": _relative_spread(b),
        "consensus_ab": _relative_spread(ab),
    }
