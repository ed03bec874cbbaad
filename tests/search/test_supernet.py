"""The supernet built from the IR against the reference counts and structures (docs/ops.md, docs/methods.md)."""

from __future__ import annotations

import pytest
import torch
from helpers import EXAMPLES, TINY_SPACE, spec_of
from torch import nn

from nasir.api import load
from nasir.diagnostics import DiagnosticError
from nasir.ops import DARTS_OPS
from nasir.search.supernet import FixedOp, MixedOp, build_supernet

TINY = TINY_SPACE


def _nb201_weights(C: int = 16, N: int = 5, classes: int = 10) -> int:
    """NAS-Bench-201's search supernet counted by hand (docs/ops.md, "NAS-Bench-201"); BNs in cells carry no weights."""
    stem = 3 * C * 9 + 2 * C
    cells = sum(N * 6 * (c * c + 9 * c * c) for c in (C, 2 * C, 4 * C))  # nor_conv_1x1 + nor_conv_3x3 per edge

    def residual(a: int, b: int) -> int:
        return 9 * a * b + 2 * b + 9 * b * b + 2 * b + a * b

    head = 2 * 4 * C + 4 * C * classes + classes
    return stem + cells + residual(C, 2 * C) + residual(2 * C, 4 * C) + head


def test_darts_space_gives_the_reference_supernet_counts():
    model = build_supernet(load(EXAMPLES / "darts.cell"), seed=0)
    # DARTS model_search.Network(C=16, num_classes=10, layers=8): 1,930,618 weights; 14 edges x 8 ops x 2 kinds.
    assert sum(p.numel() for p in model.weight_parameters()) == 1_930_618
    assert sum(a.numel() for a in model.arch_parameters()) == 224
    assert {k: tuple(a.shape) for k, a in model.alphas.items()} == {"normal": (14, 8), "reduce": (14, 8)}
    # 1e-3 * randn, as DARTS initialises them.
    std = torch.cat([a.detach().flatten() for a in model.arch_parameters()]).std().item()
    assert 5e-4 < std < 2e-3


def test_nb201_space_gives_the_hand_counted_supernet():
    model = build_supernet(load(EXAMPLES / "nb201.cell"), seed=0)
    assert sum(p.numel() for p in model.weight_parameters()) == _nb201_weights() == 1_686_106
    assert sum(a.numel() for a in model.arch_parameters()) == 30  # 6 edges x 5 ops, one cell kind
    pools = [m for m in model.modules() if isinstance(m, MixedOp)][0]._ops
    # NAS-Bench-201's search cells pool without BN; `none` is not computed.
    assert [type(m).__name__ for m in pools] == ["Identity", "ReLUConvBN", "ReLUConvBN", "AvgPool2d"]


def test_darts_cells_use_non_affine_bn_and_pool_then_bn():
    model = build_supernet(spec_of(TINY), seed=0)
    stem_bns = [m for m in model.net.stem.modules() if isinstance(m, nn.BatchNorm2d)]
    cell_bns = [m for c in model.net.cells for m in c.modules() if isinstance(m, nn.BatchNorm2d)]
    assert stem_bns and all(m.affine for m in stem_bns)
    assert cell_bns and not any(m.affine for m in cell_bns)
    op = model.net.cells[0]._ops[0]
    assert isinstance(op, MixedOp) and op.candidates == DARTS_OPS
    assert op.index == list(range(1, 8))  # `none` (index 0) is left out of the computation
    pool = op._ops[0]
    assert isinstance(pool, nn.Sequential) and isinstance(pool[0], nn.MaxPool2d)
    assert isinstance(pool[1], nn.BatchNorm2d) and not pool[1].affine


def test_mixed_op_is_the_softmax_weighted_sum_of_its_ops():
    model = build_supernet(spec_of(TINY), seed=0)
    op = model.net.cells[0]._ops[3]
    op.eval()  # running statistics: each op is a fixed function of x
    x = torch.randn(2, 4, 8, 8)
    w = torch.softmax(torch.randn(8), 0)
    want = sum(w[i] * m(x) for i, m in zip(range(1, 8), op._ops))
    torch.testing.assert_close(op(x, w), want)
    # All weight on `none`: the edge contributes exactly zero.
    assert torch.equal(op(x, torch.eye(8)[0]), torch.zeros(2, 4, 8, 8))


def test_alphas_are_shared_by_every_stacked_copy_of_a_cell_kind():
    model = build_supernet(spec_of(TINY), seed=0)
    assert model.net.cell_kinds == ["normal", "reduce", "reduce"]
    x = torch.randn(4, 1, 8, 8)
    model(x).sum().backward()
    # Both reduction cells read the one `reduce` tensor, so it receives gradient from both.
    g = model.alphas["reduce"].grad.clone()
    model.zero_grad()
    handle = model.net.cells[2].register_forward_pre_hook(lambda m, a: (a[0], a[1], [None if w is None else w.detach() for w in a[2]]))
    model(x).sum().backward()
    handle.remove()
    assert not torch.allclose(g, model.alphas["reduce"].grad)


def test_fixed_edges_inside_a_searched_cell_ignore_the_weights():
    edges = "edges * -> n0 : choice(darts)\n  edges * -> n1 : choice(darts)\n  edges * -> n2 : choice(darts)\n"
    text = TINY.replace("edges * -> n* : choice(darts)", edges + "  edges n2 -> n3 : skip_connect\n  edges c_k1 -> n3 : sep_conv_3x3")
    text = text.replace("keep 2 inputs per node", "")
    model = build_supernet(spec_of(text), seed=0)
    assert model.alphas["normal"].shape == (9, 8)
    fixed = [op for op in model.net.cells[0]._ops if isinstance(op, FixedOp)]
    assert len(fixed) == 2
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)


@pytest.mark.parametrize("fuse", [False, True])
def test_low_memory_recomputation_gives_the_same_values_gradients_and_bn_statistics(fuse):
    x = torch.randn(8, 1, 8, 8)
    y = torch.randint(0, 10, (8,))
    runs = []
    for low in (False, True):
        model = build_supernet(spec_of(TINY), seed=3, low_memory=low, fuse=fuse)
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        grads = [p.grad for p in list(model.weight_parameters()) + model.arch_parameters()]
        stats = [b.clone() for b in model.buffers()]
        runs.append((loss.detach(), grads, stats))
    (l0, g0, s0), (l1, g1, s1) = runs
    torch.testing.assert_close(l0, l1)
    for a, b in zip(g0, g1):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for a, b in zip(s0, s1):  # recomputation must not update the running statistics twice
        if fuse:  # a fused cell sums the recomputed edges in another order: equal up to rounding
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)  # a second update moves them by ~10 %
        else:
            assert torch.equal(a, b)


def test_channels_last_supernet_computes_the_same_function():
    x = torch.randn(4, 1, 8, 8)
    a = build_supernet(spec_of(TINY), seed=1)
    b = build_supernet(spec_of(TINY), seed=1, channels_last=True)
    assert b.net.stem[0].weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(a(x), b(x), rtol=1e-4, atol=1e-5)


def test_a_spec_without_choices_is_a_clear_error():
    with pytest.raises(DiagnosticError, match="no choices to search"):
        build_supernet(load(EXAMPLES / "darts_v2.cell"))
