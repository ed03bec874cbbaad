"""The fused supernet's depthwise weight gradients (nasir/search/supernet.py, `dw_weight_grad_route`) against
the stock nn.Conv2d's autograd gradients, in float64 (so 1e-10 relative leaves no room for a wrong tap).

Every (kernel, dilation, stride, size) case runs, sizes not divisible by the dilation included, in both
layouts and at batch 1; double backward (a Hessian-vector product) against the stock conv's; the weight
gradient skipped when only the input's is asked for (the alpha-only backward).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import TINY_SPACE, spec_of
from torch import nn

from nasir.search import supernet as sn

CASES = [(k, d, s) for k in (3, 5) for d in (1, 2, 3) for s in (1, 2)]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _pair(C: int, k: int, d: int, s: int, seed: int = 0) -> tuple[nn.Conv2d, nn.Conv2d]:
    """A stock depthwise conv and the same one swapped for the fused supernet's (fast_weight_grad)."""
    torch.manual_seed(seed)
    stock = nn.Conv2d(C, C, k, s, d * (k - 1) // 2, d, groups=C, bias=False).double()
    fast = nn.Conv2d(C, C, k, s, d * (k - 1) // 2, d, groups=C, bias=False).double()
    fast.load_state_dict(stock.state_dict())
    sn.use_fast_dilated_depthwise(nn.Sequential(fast), fast_weight_grad=True)  # swaps children
    return stock, fast


def _input(n: int, C: int, h: int, w: int, channels_last: bool, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, C, h, w, generator=g, dtype=torch.float64)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize(("k", "d", "s"), CASES)
def test_gradients_equal_the_stock_convs(k, d, s, channels_last):
    seen = set()
    for n, C, (h, w) in [(3, 4, (8, 8)), (1, 2, (9, 11)), (2, 8, (12, 12)), (2, 3, (10, 9))]:
        stock, fast = _pair(C, k, d, s)
        swapped = type(fast) is sn.DilatedDepthwiseConv2d
        # the swap covers exactly the dilated convs and, with fusion, the 5x5 ones
        assert swapped == (d > 1 or k == 5)
        x0 = _input(n, C, h, w, channels_last).requires_grad_()
        x1 = x0.detach().clone().requires_grad_()
        r = torch.randn(stock(x0).shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
        (stock(x0) * r).sum().backward()
        (fast(x1) * r).sum().backward()
        assert _rel(x1.grad, x0.grad) < 1e-10
        assert _rel(fast.weight.grad, stock.weight.grad) < 1e-10
        if swapped:
            seen.add(sn.dw_weight_grad_route(k, d, d * (k - 1) // 2, (h, w), s))
    if s == 1 and (k, d) == (3, 2):  # both routes of a dilated 3x3: parity split (even sizes), folded (odd)
        assert seen == {"parity", "folded"}
    if s == 2 or k == 5:
        assert seen == ({"folded"} if d > 1 or k == 5 else set())


@pytest.mark.parametrize(("k", "d"), [(5, 1), (3, 2), (5, 2), (3, 3)])
def test_each_route_equals_a_per_tap_sum(k, d):
    """The routes on their own against the weight gradient written out tap by tap (independent of any conv)."""
    p = d * (k - 1) // 2
    for channels_last in (True, False):
        x = _input(2, 3, 12, 12, channels_last, seed=3)
        g = _input(2, 3, 12, 12, channels_last, seed=4)
        xp = F.pad(x, (p, p, p, p))
        want = torch.empty(3, 1, k, k, dtype=torch.float64)
        for i in range(k):
            for j in range(k):
                want[:, 0, i, j] = (xp[:, :, i * d : i * d + 12, j * d : j * d + 12] * g).sum((0, 2, 3))
        got = {"folded": sn._folded_weight_grad(x, g, k, p, d), "native": sn._native_weight_grad(x, g, k, p, d)}
        if k == 3 and d > 1:
            got["parity"] = sn._parity_weight_grad(x, g, k, d)
        for route, gw in got.items():
            assert _rel(gw, want) < 1e-10, route


def test_the_static_rule():
    """A fixed table, no autotuning: the same choice in every run (docs/performance.md)."""
    assert sn.dw_weight_grad_route(3, 1, 1, (32, 32)) == "native"
    for size in [(32, 32), (16, 16), (8, 8)]:
        assert sn.dw_weight_grad_route(3, 2, 2, size) == "parity"
        assert sn.dw_weight_grad_route(5, 1, 2, size) == "folded"
        assert sn.dw_weight_grad_route(5, 2, 4, size) == "folded"
    assert sn.dw_weight_grad_route(3, 2, 2, (9, 8)) == "folded"  # parity classes of unequal size
    assert sn.dw_weight_grad_route(3, 2, 1, (8, 8)) == "folded"  # not the "same" padding
    assert sn.dw_weight_grad_route(3, 2, 2, (8, 8), 2) == "folded"  # stride 2
    assert sn.dw_weight_grad_route(3, 1, 1, (8, 8), 2) == "native"


@pytest.mark.parametrize(("k", "d", "s"), [(5, 1, 1), (3, 2, 1), (5, 2, 1), (5, 1, 2), (3, 2, 2)])
@pytest.mark.parametrize("channels_last", [True, False])
def test_double_backward_matches_the_stock_conv(k, d, s, channels_last):
    """A Hessian-vector product through the backward: d/d(x, w) of <grad(loss), v> for a loss non-linear in the output."""
    stock, fast = _pair(3, k, d, s)
    v = torch.Generator().manual_seed(5)
    vx = torch.randn(2, 3, 8, 8, generator=v, dtype=torch.float64)
    vw = torch.randn(3, 1, k, k, generator=v, dtype=torch.float64)
    res = []
    for conv in (stock, fast):
        x = _input(2, 3, 8, 8, channels_last).requires_grad_()
        y = conv(x)
        loss = (y * y.tanh()).sum()
        gx, gw = torch.autograd.grad(loss, (x, conv.weight), create_graph=True)
        hx, hw = torch.autograd.grad((gx * vx).sum() + (gw * vw).sum(), (x, conv.weight))
        res.append((hx, hw))
    assert res[1][0].norm() > 0 and res[1][1].norm() > 0
    assert _rel(res[1][0], res[0][0]) < 1e-10
    assert _rel(res[1][1], res[0][1]) < 1e-10


def test_no_weight_gradient_when_only_the_input_gradient_is_asked_for(monkeypatch):
    calls = []
    real = sn._fast_weight_grad
    monkeypatch.setattr(sn, "_fast_weight_grad", lambda *a: calls.append(1) or real(*a))
    _, fast = _pair(2, 5, 2, 1)
    x = _input(1, 2, 8, 8, True).requires_grad_()
    torch.autograd.grad(fast(x).sum(), x)
    assert calls == []
    torch.autograd.grad(fast(x).sum(), fast.weight)
    assert calls == [1]


def test_the_fused_supernet_swaps_its_5x5_convs_and_the_unfused_one_does_not():
    spec = spec_of(TINY_SPACE)
    for fuse in (False, True):
        convs = [m for m in sn.build_supernet(spec, seed=0, fuse=fuse).modules()
                 if isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels]  # fmt: skip
        kinds = {(m.kernel_size[0], m.dilation[0], m.stride[0]) for m in convs}
        assert {(5, 1, 1), (5, 1, 2), (3, 1, 1), (3, 2, 1), (5, 2, 2)} <= kinds
        for m in convs:
            k, d, s = m.kernel_size[0], m.dilation[0], m.stride[0]
            swapped = d > 1 or (fuse and k == 5)
            assert (type(m) is sn.DilatedDepthwiseConv2d) == swapped, (fuse, k, d, s)
            assert (type(m) is nn.Conv2d) == (not swapped)
            if swapped:
                assert m.fast_weight_grad == fuse


@pytest.mark.parametrize("s", [1, 2, 3])
@pytest.mark.parametrize(("k", "d", "p"), [(5, 1, 0), (5, 2, 1), (3, 2, 1), (3, 3, 0), (5, 2, 4)])
def test_the_folded_route_with_any_padding_and_stride_equals_the_stock_conv(k, d, p, s):
    """Not only the "same" padding at stride 1: the folded form holds for any padding and stride."""
    for channels_last in (True, False):
        for h, w_ in ((11, 12), (13, 10)):
            x = _input(2, 3, h, w_, channels_last, seed=6).requires_grad_()
            w = torch.randn(3, 1, k, k, dtype=torch.float64, generator=torch.Generator().manual_seed(7)).requires_grad_()
            y = F.conv2d(x, w, None, s, p, d, 3)
            g = torch.randn(y.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
            (want,) = torch.autograd.grad(y, w, g)
            assert sn.dw_weight_grad_route(k, d, p, (h, w_), s) == "folded"
            assert _rel(sn._fast_weight_grad(x.detach(), g, k, p, d, s), want) < 1e-10
