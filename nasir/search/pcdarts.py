"""PC-DARTS (Xu et al. 2019/2020; cited by all three papers): partial channels and edge normalisation.

Partial channels: only 1/K of the channels of x_i pass through the mixed op, the rest bypass it, and
a channel shuffle mixes the two parts so that the next edge samples other channels; the mixed op is
built for C/K channels, so search memory drops about K-fold. Edge normalisation: each node weighs
its input edges by a softmax over one extra variable per edge (gamma), which steadies the topology
that partial channels make noisy, and the derivation multiplies the op scores by those weights.
The edge weight multiplies the WHOLE partial-channel output, the mixed 1/K and the bypassed (K-1)/K
after the shuffle, as the authors' Cell.forward does (`weights2[j] * self._ops[j](h, weights[j])`,
docs/methods.md, "PC-DARTS"); folding it into the candidate weights would scale the mixed part only.
The authors' recipe also starts the architecture steps after a warm-up (runner `warmup`, 15 epochs).

How the runtime plugs these in:
    op_e = PartialMixedOp(MixedOp(C // K, stride), k=K, stride=stride)  # its own mixed op, C/K channels
    w = edge_normalization(cell, gamma)          # gamma: one variable per alpha row, init 1e-3 * randn
    x_j = sum over in-edges e of op_e(x_src, (softmax(alpha[e.alpha]), w[e]))   # = w[e] * op_e(x_src, ...)
    Derive({kind: normalized_scores(cell, softmax(alpha), gamma).tolist()})
"""

from __future__ import annotations

import functools

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

    `op` is the mixed op built for C/K channels at `stride`. `forward(x, weights)`: `weights` is the
    candidate weights, handed to `op` unchanged, or a pair (candidate weights, edge weight), and then
    the whole output (mixed and bypassed channels) is multiplied by the edge weight. At stride 2 the bypassed channels are max-pooled 2x2, as
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
        edge = None
        if args and isinstance(args[0], tuple):
            edge, args = args[0][1], (args[0][0], *args[1:])
        out = self._partial(x, *args, **kwargs)
        return out if edge is None else edge * out

    def _partial(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
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

    `gamma` has one entry per alpha row (read through `Edge.alpha`); fixed edges weigh 1. No host
    synchronisation and no host-to-device copy in the forward: the index tensors are built once per
    (cell, device) and cached; the rest is index_select, softmax and cat on gamma's device.
    """
    if cell.alpha_rows is None or gamma.shape != (len(cell.alpha_rows),):
        n = None if cell.alpha_rows is None else len(cell.alpha_rows)
        raise ValueError(f"cell '{cell.name}': gamma must have one entry per alpha row ({n}), got {tuple(gamma.shape)}")
    groups, n_fixed, order = _normalization_plan(cell, gamma.device)
    parts = [torch.softmax(gamma.index_select(0, rows), dim=0) for rows in groups]
    parts.append(gamma.new_ones(n_fixed))
    return torch.cat(parts).index_select(0, order)


@functools.lru_cache(maxsize=64)
def _normalization_plan(cell: ir.Cell, device: torch.device) -> tuple[list[torch.Tensor], int, torch.Tensor]:
    """Per node with searchable in-edges, the alpha rows of those edges; the count of other edges; and
    the permutation from [groups..., others] to `cell.edges` order. Device tensors, built once."""
    groups: list[list[int]] = []
    slots: list[int] = []  # cell.edges index of each position of the concatenation
    for j in cell.node_names:
        idx = [k for k, e in enumerate(cell.edges) if e.dst == j and e.alpha is not None]
        if idx:
            groups.append([cell.edges[k].alpha for k in idx])  # type: ignore[misc]
            slots.extend(idx)
    others = [k for k in range(len(cell.edges)) if k not in set(slots)]
    slots.extend(others)
    order = [0] * len(cell.edges)
    for pos, k in enumerate(slots):
        order[k] = pos
    as_tensor = functools.partial(torch.tensor, dtype=torch.long, device=device)
    return [as_tensor(g) for g in groups], len(others), as_tensor(order)


def normalized_scores(cell: ir.Cell, scores: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """Scores [alpha rows, ops] times the edge weight of each row's edge, what PC-DARTS derives from."""
    w = edge_normalization(cell, gamma)
    row_weight = {e.alpha: w[k] for k, e in enumerate(cell.edges) if e.alpha is not None}
    return scores * torch.stack([row_weight[r] for r in range(scores.shape[0])])[:, None]
