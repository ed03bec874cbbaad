"""Diagnostics of a running search (docs/runtime.md), on a fixed unaugmented batch of the architecture
data: SDARTS' largest Hessian eigenvalue of L_val w.r.t. alpha, and the naive selection's loss increase
when one op is removed (OStr-DARTS Fig. 4b). BatchNorm statistics are left as they were."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from nasir import device as dv
from nasir.search import smoothing
from nasir.search.architect import buffers_kept
from nasir.search.strength import removal_importance


def fixed_batch(search: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `batch_size` samples of the architecture data, unaugmented: the diagnostics' batch."""
    x, y = search.data.batch(search.a_idx[: search.opt.batch_size], train=False)
    return dv.to_device(x, search.device), dv.to_device(y, search.device)


def hessian_eigenvalue(search: Any) -> smoothing.Eigenvalue:
    """The largest eigenvalue of the Hessian of L_val w.r.t. alpha (SDARTS' diagnostic), train mode
    as in the search, on the fixed batch; BN statistics untouched; with a convergence flag."""
    x, y = fixed_batch(search)
    model = search.model
    g = torch.Generator().manual_seed(search.opt.seed)
    with buffers_kept(model):
        return smoothing.hessian_max_eigenvalue(lambda: F.cross_entropy(model(x), y), model.alpha_parameters(), generator=g)


def removal_scores(search: Any) -> dict[str, torch.Tensor]:
    """The naive criterion: L(supernet without op o on edge e) - L(supernet) on the fixed batch, train mode."""
    model = search.model
    x, y = fixed_batch(search)
    shapes = {k: tuple(a.shape) for k, a in model.alphas.items()}

    def set_mask(masks):
        model.op_mask = None if all(bool((m == 1).all()) for m in masks.values()) else dict(masks)

    with buffers_kept(model):
        return removal_importance(lambda: F.cross_entropy(model(x), y), set_mask, shapes)  # type: ignore[arg-type]
