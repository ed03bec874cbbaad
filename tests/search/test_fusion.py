"""The fused supernet against the op-by-op one (the DARTS reference's mixed op), and its parts by hand.

Equality tests run in float64, so that "equal up to float rounding" is checked at 1e-5 relative with
no slack for float32 noise; the unfused path (fuse=False) is the reference: it sums
softmax(alpha)_o * o(x) candidate by candidate and edge by edge, as DARTS' model_search.py does.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import EXAMPLES, TINY_SPACE, spec_of
from torch import nn

from nasir.api import load
from nasir.passes.fuse import FuseOps, describe, fusion_groups
from nasir.search.supernet import FusedCell, MixedOp, build_supernet, default_channels_last, prepare, weighted_sum
from nasir.targets.blocks import scaled_batch_norm


def _spaces():
    return {
        "darts": (spec_of(TINY_SPACE), {}),
        "nb201": (load(EXAMPLES / "nb201.cell", overrides={"C": 4, "N": 1}), {}),
        "stretchable": (load(EXAMPLES / "stretchable.cell", overrides={"C": 4, "layers": 3}), {}),
        "pcdarts": (spec_of(TINY_SPACE), {"partial_channels": 2}),
    }


def _loss_and_grads(spec, fuse: bool, channels_last: bool, **kw):
    torch.set_default_dtype(torch.float64)
    try:
        model = build_supernet(spec, seed=0, fuse=fuse, channels_last=channels_last, **kw)
        model.train()
        g = torch.Generator().manual_seed(1)
        x = torch.randn(4, model.plan.input[0], 8, 8, generator=g)
        y = torch.randint(0, 10, (4,), generator=g)
        loss = F.cross_entropy(model(x), y)
        params = model.weight_parameters() + model.arch_parameters()
        grads = torch.autograd.grad(loss, params)
        return model, loss.detach(), grads, [b.clone() for b in model.buffers()]
    finally:
        torch.set_default_dtype(torch.float32)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm()) if b.norm() > 0 else float((a - b).norm())


@pytest.mark.parametrize("space", ["darts", "nb201", "stretchable", "pcdarts"])
@pytest.mark.parametrize("channels_last", [True, False])
def test_fused_loss_weight_and_architecture_gradients_equal_the_unfused_ones(space, channels_last):
    spec, kw = _spaces()[space]
    fused, l1, g1, b1 = _loss_and_grads(spec, True, channels_last, **kw)
    plain, l0, g0, b0 = _loss_and_grads(spec, False, channels_last, **kw)
    assert any(isinstance(m, FusedCell) for m in fused.modules())
    assert not any(isinstance(m, FusedCell) for m in plain.modules())
    assert abs(float(l1 - l0)) <= 1e-5 * abs(float(l0))
    n_arch = len(fused.arch_parameters())
    assert n_arch >= (2 if space in ("stretchable", "pcdarts") else 1)
    for a, b in zip(g1, g0):  # weights, then alphas (and betas / gammas)
        assert a.shape == b.shape and _rel(a, b) <= 1e-5
    assert all(float(g.norm()) > 0 for g in g0[-n_arch:])  # the architecture gradients are not trivially zero
    for a, b in zip(b1, b0):  # every BN's running statistics updated once, as unfused
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_fused_darts_supernet_in_eval_mode_and_without_grad_gives_the_same_logits():
    spec = spec_of(TINY_SPACE)
    a = build_supernet(spec, seed=0, fuse=True)
    b = build_supernet(spec, seed=0, fuse=False)
    x = torch.randn(2, 1, 8, 8)
    for m in (a, b):  # move the running statistics away from their initial values first
        m.train()
        m(x)
        m.eval()
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), rtol=1e-4, atol=1e-5)


def test_weighted_sum_and_its_gradients_by_hand():
    w = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64, requires_grad=True)
    hs = [torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    base = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    # index -1: a term that already carries its weight (added as it is)
    out = weighted_sum(base, w, [3, -1, 1], hs)
    torch.testing.assert_close(out, base + 0.4 * hs[0] + hs[1] + 0.2 * hs[2])
    g = torch.randn_like(out)
    gb, gw, g0, g1, g2 = torch.autograd.grad(out, [base, w, *hs], g)
    torch.testing.assert_close(gb, g)
    torch.testing.assert_close(gw, torch.stack([torch.zeros(()), (g * hs[2]).sum(), torch.zeros(()), (g * hs[0]).sum()]).double())
    torch.testing.assert_close((g0, g1, g2), (0.4 * g, g, 0.2 * g))
    assert torch.autograd.gradcheck(lambda b, w_, *h: weighted_sum(b, w_, [0, 2, -1], list(h)), (base, w, *hs))
    assert torch.autograd.gradgradcheck(lambda w_, *h: weighted_sum(None, w_, [0, 2, 1], list(h)), (w, *hs))


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_scaled_batch_norm_is_scale_times_bn_with_the_same_running_statistics(fmt, momentum):
    x = torch.randn(4, 6, 5, 5, dtype=torch.float64).contiguous(memory_format=fmt).requires_grad_()
    s = torch.tensor(0.37, dtype=torch.float64, requires_grad=True)
    a = nn.BatchNorm2d(6, affine=False, momentum=momentum).double()
    b = nn.BatchNorm2d(6, affine=False, momentum=momentum).double()
    ya, yb = scaled_batch_norm(a, x, s), s * b(x)
    torch.testing.assert_close(ya, yb)
    g = torch.randn_like(ya)
    # channels_last included: torch's CPU BN got these gradients wrong with a stride-0 (expanded) weight
    torch.testing.assert_close(torch.autograd.grad(ya, (x, s), g), torch.autograd.grad(yb, (x, s), g))
    for p, q in zip(a.buffers(), b.buffers()):
        assert torch.equal(p, q)
    a.eval()
    b.eval()
    torch.testing.assert_close(scaled_batch_norm(a, x, s), s * b(x))


def test_fusion_groups_of_the_darts_cells_counted_by_hand():
    spec = FuseOps()(prepare(spec_of(TINY_SPACE)))
    assert "fuse_ops" in spec.properties
    normal, reduce = (spec.cell(n) for n in ("normal", "reduce"))
    groups = fusion_groups(normal)
    # 2 inputs + 4 nodes; n3 feeds nothing inside the cell
    assert [g.state for g in groups] == ["c_k2", "c_k1", "n0", "n1", "n2"]
    assert [len(g.edges) for g in groups] == [4, 4, 3, 2, 1]
    assert groups[2].dsts == ("n1", "n2", "n3")
    # 4 ReLU-first candidates per edge (sep 3/5, dil 3/5); pooling once per state whatever the edges
    assert [len(g.relu) for g in groups] == [16, 16, 12, 8, 4]
    assert all(g.pools == ("max_pool_3x3", "avg_pool_3x3") for g in groups)
    # in the reduction cell the inputs' skip_connect is a factorized reduce (ReLU first): 5 per edge
    assert [len(g.relu) for g in fusion_groups(reduce)] == [20, 20, 12, 8, 4]
    text = describe(spec)
    assert "c_k1: 4 mixed edge(s) -> n0, n1, n2, n3; one ReLU for 16 candidate(s)" in text


def test_a_fused_darts_edge_runs_one_relu_and_one_pool_per_state():
    model = build_supernet(spec_of(TINY_SPACE), seed=0, fuse=True)
    counts = {"relu": 0, "max": 0}
    orig_relu, orig_max = F.relu, F.max_pool2d

    def relu(x, *a, **k):
        counts["relu"] += 1
        return orig_relu(x, *a, **k)

    def max_pool2d(*a, **k):
        counts["max"] += 1
        return orig_max(*a, **k)

    cell = model.net.cells[0]
    assert isinstance(cell, FusedCell)
    F.relu, F.max_pool2d = relu, max_pool2d
    try:
        x = torch.randn(2, 1, 8, 8)
        s = model.net.stem(x.contiguous(memory_format=torch.channels_last) if model.channels_last else x)
        cell(s, s, model.edge_weights()["normal"])
    finally:
        F.relu, F.max_pool2d = orig_relu, orig_max
    # Unfused: 14 edges x 4 ReLU-first candidates = 56 ReLUs and 14 max pools; fused: one per state
    # with edges leaving it (5), the two preprocessing ReLUs are nn.ReLU modules (F.relu inside).
    n_pre = sum(isinstance(m, nn.ReLU) for m in (cell.preprocess0.op[0], cell.preprocess1.op[0]))
    assert counts == {"relu": 5 + n_pre + 14 * 2, "max": 5}  # + the second ReLU inside each sep conv: 2 per edge


def test_library_default_layout_is_the_cli_default():
    import torch as t

    from nasir.search.runner import make_options

    model = build_supernet(spec_of(TINY_SPACE), seed=0)
    device = t.device("cuda" if t.cuda.is_available() else "cpu")  # nasir search's default device
    opts = make_options(spec_of(TINY_SPACE), data="digits", overrides={}, limit_batches=None, channels_last=None,
                        low_memory=False, device=device)  # fmt: skip
    assert model.channels_last == opts.channels_last == default_channels_last()
    # fusion is the default of both (--no-fuse / fuse=False: the op-by-op path of the fixed-seed record)
    assert model.fuse is opts.fuse is True and all(m.fuse for m in model.modules() if isinstance(m, MixedOp))
    assert any(isinstance(m, FusedCell) for m in model.modules())


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("stride", [1, 2])
def test_max_pool_keeping_only_its_input_has_stock_gradients_and_second_gradients(fmt, stride):
    from nasir.search.supernet import _max_pool

    pool = nn.MaxPool2d(3, stride=stride, padding=1)
    g = torch.Generator().manual_seed(0)
    # integer values: many ties inside a window, so the argmax found again in backward must be the same one
    x0 = torch.randint(0, 4, (2, 3, 7, 7), generator=g).double().contiguous(memory_format=fmt)
    w = torch.randn(pool(x0).shape, generator=g, dtype=torch.float64)
    grads = []
    for f in (pool, lambda t: _max_pool(pool, t)):
        x = x0.clone().requires_grad_()
        y = f(x)
        (gx,) = torch.autograd.grad((y * w).sum() ** 2, x, create_graph=True)
        (ggx,) = torch.autograd.grad((gx**2).sum(), x)
        grads.append((y.detach(), gx.detach(), ggx))
    for a, b in zip(*grads):
        assert torch.equal(a, b)


def test_a_fused_darts_supernet_keeps_no_max_pool_index_tensor():
    # Stock max pooling keeps an int64 index tensor per pooled state; the fused path keeps none (the
    # indices are found again in backward). Counted over every tensor autograd saves in a forward pass.
    spec = spec_of(TINY_SPACE)
    saved = {}
    for fuse in (False, True):
        model = build_supernet(spec, seed=0, fuse=fuse)
        model.train()
        dtypes: list[torch.dtype] = []

        def pack(t, dtypes=dtypes):
            dtypes.append(t.dtype)
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(torch.randn(2, model.plan.input[0], 8, 8)).sum()
        saved[fuse] = dtypes.count(torch.int64)
    assert saved[False] > 0  # the check can see index tensors: the op-by-op supernet keeps them
    assert saved[True] == 0


@pytest.mark.parametrize("momentum", [0.1, None])
def test_running_statistics_written_out_equal_batch_norms_own_update(momentum):
    """A BN whose output another shares still tracks its own statistics (`_bn_update_stats`); on devices
    without ATen's update kernel (meta, mps) the update is written out: both equal nn.BatchNorm2d's."""
    from nasir.search.supernet import _bn_update_stats

    x = torch.randn(4, 3, 5, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2 + 1
    ref = nn.BatchNorm2d(3, affine=False, momentum=momentum).double()
    mine = [nn.BatchNorm2d(3, affine=False, momentum=momentum).double() for _ in range(2)]
    for _ in range(3):
        ref(x)
        for bn, native in zip(mine, (True, False)):
            _bn_update_stats(bn, x, native=native)
    for bn in mine:
        torch.testing.assert_close(bn.running_mean, ref.running_mean, rtol=1e-12, atol=0)
        torch.testing.assert_close(bn.running_var, ref.running_var, rtol=1e-12, atol=0)
        assert int(bn.num_batches_tracked) == 3
    assert (ref.running_var - 1).abs().min() > 0.1  # the statistics moved (x has variance 4)
