"""PC-DARTS pieces: the exact shuffle order, partial channels against the plain mixed op, edge normalisation."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import spec_of
from torch import nn

from nasir import ops
from nasir.passes.mixed_ops import MixedOps
from nasir.pipeline import PassManager
from nasir.search.pcdarts import PartialMixedOp, channel_shuffle, edge_normalization, normalized_scores
from nasir.targets import blocks  # noqa: F401 - registers the built-in ops' builders (nasir.ops names them only)

CANDIDATES = ("max_pool_3x3", "skip_connect", "sep_conv_3x3", "dil_conv_3x3")


class Mixed(nn.Module):
    """A plain DARTS mixed op over registry ops: sum_o w_o * o(x)."""

    def __init__(self, C: int, stride: int):
        super().__init__()
        self.ops = nn.ModuleList(ops.REGISTRY[o].build(C, stride, affine=False) for o in CANDIDATES)

    def forward(self, x, weights):
        return sum(w * op(x) for w, op in zip(weights, self.ops))


def labelled(C: int, h: int = 2, w: int = 2) -> torch.Tensor:
    return torch.arange(C, dtype=torch.float32)[None, :, None, None].expand(2, C, h, w).clone()


def test_channel_shuffle_interleaves_the_groups_in_the_exact_order():
    assert channel_shuffle(labelled(6), 2)[0, :, 0, 0].tolist() == [0, 3, 1, 4, 2, 5]
    assert channel_shuffle(labelled(6), 3)[0, :, 0, 0].tolist() == [0, 2, 4, 1, 3, 5]
    assert channel_shuffle(labelled(8), 4)[0, :, 0, 0].tolist() == [0, 2, 4, 6, 1, 3, 5, 7]
    perm = channel_shuffle(labelled(12), 4)[1, :, 1, 1].tolist()
    assert sorted(perm) == list(range(12))
    assert torch.equal(channel_shuffle(labelled(5), 1), labelled(5))
    with pytest.raises(ValueError):
        channel_shuffle(labelled(6), 4)


@pytest.mark.parametrize("stride", [1, 2])
def test_partial_mixed_op_with_k_1_is_the_plain_mixed_op(stride):
    torch.manual_seed(0)
    mixed = Mixed(8, stride).eval()
    x = torch.randn(2, 8, 8, 8)
    w = torch.softmax(torch.randn(len(CANDIDATES)), 0)
    assert torch.equal(PartialMixedOp(mixed, k=1, stride=stride)(x, w), mixed(x, w))


@pytest.mark.parametrize("stride,hw", [(1, 8), (2, 4)])
def test_partial_mixed_op_output_shapes(stride, hw):
    torch.manual_seed(0)
    op = PartialMixedOp(Mixed(16 // 4, stride), k=4, stride=stride)
    w = torch.softmax(torch.randn(len(CANDIDATES)), 0)
    y = op(torch.randn(3, 16, 8, 8), w)
    assert y.shape == (3, 16, hw, hw)
    y.sum().backward()
    assert all(p.grad is not None for p in op.parameters())


class Zero(nn.Module):
    def __init__(self, stride):
        super().__init__()
        self.stride = stride

    def forward(self, x):
        return torch.zeros_like(x[:, :, :: self.stride, :: self.stride])


@pytest.mark.parametrize("stride", [1, 2])
def test_bypassed_channels_pass_unchanged_or_max_pooled_then_shuffle(stride):
    # K = 4, C = 8: channels 0-1 go through the op (here zero), 2-7 bypass; shuffle in 4 groups of 2.
    x = torch.randn(1, 8, 4, 4)
    y = PartialMixedOp(Zero(stride), k=4, stride=stride)(x)
    rest = x[:, 2:] if stride == 1 else nn.functional.max_pool2d(x[:, 2:], 2, 2)
    # Before the shuffle the channels are [0, 0, x2..x7]; the shuffle order is [0, 2, 4, 6, 1, 3, 5, 7].
    unshuffled = torch.cat([torch.zeros_like(rest[:, :2]), rest], dim=1)
    assert torch.equal(y, unshuffled[:, [0, 2, 4, 6, 1, 3, 5, 7]])


def searched():
    text = """
opset darts = {none, max_pool_3x3, skip_connect, sep_conv_3x3}
cell c {
  inputs a, b
  nodes n0..n2
  edges a -> n0 : skip_connect
  edges b -> n0 : choice(darts)
  edges * -> n1 : choice(darts)
  edges * -> n2 : choice(darts)
  output concat(n0..n2)
}
"""
    return PassManager([MixedOps()]).apply(spec_of(text)).cell("c")


def test_edge_normalization_is_a_softmax_over_each_nodes_input_edges():
    c = searched()
    # Edges: a->n0 (fixed), b->n0 [row 0], a,b,n0->n1 [rows 1-3], a,b,n0,n1->n2 [rows 4-7].
    gamma = torch.tensor([0.3, 1.0, 2.0, 3.0, 0.0, 0.0, 0.0, math.log(5.0)], requires_grad=True)
    w = edge_normalization(c, gamma)
    z = math.e + math.e**2 + math.e**3
    want = [1.0, 1.0, math.e / z, math.e**2 / z, math.e**3 / z, 1 / 8, 1 / 8, 1 / 8, 5 / 8]
    assert w.tolist() == pytest.approx(want)
    (w * torch.arange(9.0)).sum().backward()
    assert gamma.grad[0] == 0 and gamma.grad[1:].abs().min() > 0  # a lone searchable edge always weighs 1
    scores = torch.ones(8, 4)
    assert normalized_scores(c, scores, gamma.detach())[:, 0].tolist() == pytest.approx(want[1:])


def test_edge_normalization_rejects_a_gamma_of_the_wrong_size():
    with pytest.raises(ValueError, match="one entry per alpha row"):
        edge_normalization(searched(), torch.zeros(9))
