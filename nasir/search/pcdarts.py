"""PC-DARTS (Xu et al. 2019/2020; cited by all three papers): partial channels and edge normalisation.

Partial channels: only 1/K of the channels of x_i pass through the mixed op, the rest bypass it, and
a channel shuffle mixes the two parts so that the next edge samples other channels; the mixed op is
built for C/K channels, so search memory drops about K-fold. Edge normalisation: each node weighs
its input edges by a softmax over one extra variable per edge (gamma), which steadies the topology
that partial channels make noisy, and the derivation multiplies the op scores by those weights.

How the runtime plugs these in:
    op_e = PartialMixedOp(MixedOp(C // K, stride), k=K, stride=stride)  # its own mixed op, C/K channels
    w = edge_normalization(cell, gamma)          # gamma: one variable per alpha row, init 1e-3 * randn
    x_j = sum over in-edges e of w[e] * op_e(x_src, softmax(alpha[e.alpha]))
    Derive({kind: normalized_scores(cell, softmax(alpha), gamma).tolist()})
"""

from __future__ import annotations

import torch
from torch import nn

from nasir import ir


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet's shuffle, as PC-DARTS uses it: [g0c0, g0c1, ..., g1c0, ...] -> [g0c0, g1c0, ..., g0c1, ...]."""
    b, c, h, w = x.shape
    if c % groups:
        raise ValueError(f"channel_shuffle: {c} channels do not split into {groups} groups")
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class PartialMixedOp(nn.Module):
    """A mixed op that sees the first C/K channels; the other channels bypass it; then a shuffle in K groups.

    `op` is the mixed op built for C/K channels at `stride`; extra forward arguments (e.g. the
    softmax weights) go to it unchanged. At stride 2 the bypassed channels are max-pooled 2x2, as
    the PC-DARTS reference code does (`nn.MaxPool2d(2, 2)`); so at stride 2 the input's height and
    width must be even for the two parts to match. K = 1 is the plain mixed op.
    """

    def __init__(self, op: nn.Module, k: int, stride: int = 1):
        super().__init__()
        if k < 1 or stride not in (1, 2):
            raise ValueError(f"PartialMixedOp needs K >= 1 and stride 1 or 2, got K = {k}, stride = {stride}")
        self.op = op
        self.k = k
        self.stride = stride
        self.bypass_pool = nn.MaxPool2d(2, 2) if stride == 2 else None

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        c = x.shape[1]
        if c % self.k:
            raise ValueError(f"PartialMixedOp: {c} channels are not divisible by K = {self.k}")
        part = c // self.k
        y = self.op(x[:, :part], *args, **kwargs)
        if self.k == 1:
            return y
        rest = x[:, part:]
        if self.bypass_pool is not None:
            rest = self.bypass_pool(rest)
        out = channel_shuffle(torch.cat([y, rest], dim=1), self.k)
        if x.is_contiguous(memory_format=torch.channels_last):
            # Keep the supernet in one layout: the shuffle's reshape returns NCHW, and the next ops
            # would otherwise run (and convert back) in the slower contiguous layout.
            out = out.contiguous(memory_format=torch.channels_last)
        return out


def edge_normalization(cell: ir.Cell, gamma: torch.Tensor) -> torch.Tensor:
    """The weight of every edge of `cell.edges`: a softmax of gamma over each node's searchable input edges.

    `gamma` has one entry per alpha row (read through `Edge.alpha`); fixed edges weigh 1.
    """
    if cell.alpha_rows is None or gamma.shape != (len(cell.alpha_rows),):
        n = None if cell.alpha_rows is None else len(cell.alpha_rows)
        raise ValueError(f"cell '{cell.name}': gamma must have one entry per alpha row ({n}), got {tuple(gamma.shape)}")
    weights: list[torch.Tensor | None] = [None] * len(cell.edges)
    for j in cell.node_names:
        idx = [k for k, e in enumerate(cell.edges) if e.dst == j and e.alpha is not None]
        if idx:
            rows = torch.tensor([cell.edges[k].alpha for k in idx], device=gamma.device)
            for k, w in zip(idx, torch.softmax(gamma[rows], dim=0)):
                weights[k] = w
    one = gamma.new_ones(())
    return torch.stack([one if w is None else w for w in weights])


def normalized_scores(cell: ir.Cell, scores: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """Scores [alpha rows, ops] times the edge weight of each row's edge, what PC-DARTS derives from."""
    w = edge_normalization(cell, gamma)
    row_weight = {e.alpha: w[k] for k, e in enumerate(cell.edges) if e.alpha is not None}
    return scores * torch.stack([row_weight[r] for r in range(scores.shape[0])])[:, None]
