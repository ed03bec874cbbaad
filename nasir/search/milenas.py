"""MiLeNAS mixed-level optimisation, as stretchable cells use it, and the three-way data split.

Stretchable-cells Eq. 18 (after MiLeNAS, He et al. 2020): the architecture variables (alpha, and
beta for stretchable cells) descend the gradient of L_train + lambda' * L_val, first order, at the
current weights w; the weights descend L_train as usual. With topology variables the data is split
three ways, weights / alpha / beta ("split them into three sets D_tr, D_val_alpha and D_val_beta with
equal size", stretchable-cells, results on ImageNet).

How the runtime plugs these in, per step:
    split = three_way_split(len(dataset), seed)                 # once
    g_alpha = mixed_level_grads(L_train(w), L_val_alpha(w), alphas, lam)
    g_beta  = mixed_level_grads(L_train(w), L_val_beta(w) + 10 * passive_aggressive(...), betas, lam)
    (Eq. 15: the beta loss carries the passive-aggressive regulariser, lambda = 10)
    for p, g in zip(alphas, g_alpha): p.grad = g;  alpha_optimizer.step()
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch


def mixed_level_grads(loss_train: torch.Tensor, loss_val: torch.Tensor, arch_params: Sequence[torch.Tensor],
                      lam: float = 1.0, retain_graph: bool = False) -> tuple[torch.Tensor, ...]:  # fmt: skip
    """grad of (L_train + lam * L_val) w.r.t. `arch_params` (Eq. 18, stretchable-cells), first order.

    Uses torch.autograd.grad, so no .grad buffer (of weights or architecture) is touched; parameters
    that neither loss depends on get zeros. `lam` is lambda'; neither paper's text fixes its value
    here, and 1 (an equal mix) is the default. `retain_graph=True` keeps the graphs for a weight step
    that reuses L_train.
    """
    params = list(arch_params)
    grads = torch.autograd.grad(loss_train + lam * loss_val, params, retain_graph=retain_graph, allow_unused=True)
    return tuple(torch.zeros_like(p) if g is None else g for p, g in zip(params, grads))


class Split(NamedTuple):
    weights: list[int]
    alpha: list[int]
    beta: list[int]


def three_way_split(n: int, seed: int, fractions: tuple[float, float, float] = (1 / 3, 1 / 3, 1 / 3)) -> Split:
    """Disjoint sample indices for the weights, alpha and beta, covering range(n); the same for the same seed.

    A seeded permutation cut into floor(n * f_weights), floor(n * f_alpha) and the rest (the beta
    set takes the remainder); each part sorted.
    """
    if any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-9:
        raise ValueError(f"split fractions must be non-negative and sum to 1, got {fractions}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    a = int(n * fractions[0])
    b = a + int(n * fractions[1])
    return Split(sorted(perm[:a]), sorted(perm[a:b]), sorted(perm[b:]))
