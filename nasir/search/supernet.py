"""The DARTS supernet, built from the IR by the one network builder (targets/network.py).

`build_supernet(spec, plan)` runs the search passes (mixed_ops, zero_ops) when they have not run yet,
then asks `targets.network.Network` for the stacked network with a `make_op` that turns every mixed
edge into a `MixedOp`. The architecture variables live here, one tensor per cell kind with one row
per mixed edge (`Cell.alpha_rows`), shared by every stacked copy of that kind, as DARTS shares
alpha_normal and alpha_reduce; they are initialised to 1e-3 * randn after the weights, as the DARTS
reference does (model_search.py, `_initialize_alphas`).

Supernet conventions (docs/methods.md, "DARTS"): every BN inside a cell (ops and input preprocessing) is
affine=False, the stem's BN stays affine; in DARTS-style cells (two inputs) a pooling op is followed
by BN(C, affine=False); NAS-Bench-201's search cells (one input) pool without BN. The mixed op is the
softmax-weighted sum (docs/methods.md, DARTS: o_bar(x) = sum_o softmax(alpha)_o o(x)); the candidates that
passes/zero_ops.py left out of `edge.computed` (`none`) are not run, but their alpha stays in the
softmax.

Options: `channels_last` (the whole supernet and its input in NHWC; docs/methods.md: measured about
0.63 x the time of the contiguous layout) and `low_memory` (each mixed op is recomputed in the
backward pass by torch.utils.checkpoint instead of keeping its op outputs).

Method parts that live in the supernet, all folded into the one weight per (edge, candidate) that the
mixed ops already take, so no op and no cell changes for them:
- stretchable cells (passes/topology.py ran): topology variables `betas[kind]`, one tensor per beta
  row; edge k's weights are multiplied by its merged factor s(i, j) (search/topology.py, Eq. 6/10/13);
- PC-DARTS (`partial_channels=K > 1`): every mixed op is a PartialMixedOp over C/K channels, and the
  edge-normalisation variables `gammas[kind]` (one per alpha row) give each edge a weight that
  multiplies the edge's whole output, bypassed channels included: the op gets the pair
  (candidate weights, edge weight) instead of a folded product (search/pcdarts.py);
- SDARTS: `forward(x, soft=...)` replaces softmax(alpha) by given (perturbed) weights;
- the naive pruning criterion: `op_mask` multiplies the weights without renormalising.
The variables are created after the weights and alphas, so adding them changes no other initial value.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from nasir import ir, ops
from nasir.diagnostics import Diagnostic, DiagnosticError, error_at
from nasir.macro import Plan
from nasir.search.pcdarts import PartialMixedOp, edge_normalization
from nasir.search.topology import beta_sizes, merged_factors
from nasir.targets.blocks import FactorizedReduce, Zero, scaled_batch_norm
from nasir.targets.network import CellModule, Network


# ---- depthwise convolutions with a faster CPU backward -----------------------------------------------
def _dw_input_grad(g: torch.Tensor, w: torch.Tensor, size: tuple[int, int], s: int, p: int, d: int) -> torch.Tensor:
    """d conv / d x: the grad, zero-upsampled by the stride, correlated with the flipped kernel (stride 1)."""
    k = w.shape[-1]
    left = d * (k - 1) - p
    n, c, ho, wo = g.shape
    if s == 1 and 2 * p == d * (k - 1):
        return F.conv2d(g, w.flip(-1, -2), padding=left, dilation=d, groups=c)
    span_h, span_w = s * (ho - 1) + 1, s * (wo - 1) + 1
    H, W = left + span_h + (size[0] - span_h + p), left + span_w + (size[1] - span_w + p)
    fmt = torch.channels_last if g.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
    z = torch.empty((n, c, H, W), dtype=g.dtype, device=g.device, memory_format=fmt).zero_()
    z[:, :, left : left + span_h : s, left : left + span_w : s] = g
    return F.conv2d(z, w.flip(-1, -2), dilation=d, groups=c)


def _dw_weight_grad(x: torch.Tensor, g: torch.Tensor, k: int, s: int, p: int, d: int) -> torch.Tensor:
    """d conv / d w: per kernel tap, the channel-wise dot product of the grad with the shifted input."""
    xp = F.pad(x, (p, p, p, p))
    ho, wo = g.shape[2], g.shape[3]
    taps = [(xp[:, :, i * d : i * d + s * (ho - 1) + 1 : s, j * d : j * d + s * (wo - 1) + 1 : s] * g).sum((0, 2, 3))
            for i in range(k) for j in range(k)]  # fmt: skip
    return torch.stack(taps, 1).view(-1, 1, k, k)


def _is_nhwc(t: torch.Tensor) -> bool:
    return t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


def _native_weight_grad(x: torch.Tensor, g: torch.Tensor, k: int, p: int, d: int, s: int = 1) -> torch.Tensor:
    """oneDNN's own depthwise weight gradient; differentiable (aten has its double backward)."""
    c = x.shape[1]
    w = x.new_empty((c, 1, k, k))  # only its shape is read
    return torch.ops.aten.convolution_backward(g, x, w, None, [s, s], [p, p], [d, d], False, [0, 0], c, [False, True, False])[1]


def _native_input_grad(g: torch.Tensor, x: torch.Tensor, w: torch.Tensor, s: int, p: int, d: int) -> torch.Tensor:
    """oneDNN's own depthwise input gradient (backward-data); differentiable."""
    return torch.ops.aten.convolution_backward(g, x, w, None, [s, s], [p, p], [d, d], False, [0, 0], x.shape[1],
                                               [True, False, False])[0]  # fmt: skip


def _parity_stack(t: torch.Tensor, d: int) -> torch.Tensor:
    """(N, C, H, W) -> (d*d*N, C, H/d, W/d): the d*d sub-images t[:, :, r::d, s::d] stacked in the batch, one
    strided copy in t's own layout (NHWC stays NHWC)."""
    n, c, h, w = t.shape
    if _is_nhwc(t):
        s = t.permute(0, 2, 3, 1).reshape(n, h // d, d, w // d, d, c).permute(2, 4, 0, 1, 3, 5)
        return s.reshape(d * d * n, h // d, w // d, c).permute(0, 3, 1, 2)
    s = t.reshape(n, c, h // d, d, w // d, d).permute(3, 5, 0, 1, 2, 4)
    return s.reshape(d * d * n, c, h // d, w // d)


def _parity_weight_grad(x: torch.Tensor, g: torch.Tensor, k: int, d: int) -> torch.Tensor:
    """Dilation d as d*d non-dilated problems: output pixel (h, w) of a dilation-d conv reads only input pixels
    of its own parity class (h mod d, w mod d), so the weight gradient is the sum over the d*d classes of the
    non-dilated ("same", padding (k-1)/2) weight gradients of the sub-images; stacked in the batch, that sum
    is one non-dilated call, which oneDNN runs with its fast depthwise kernel for 3x3 (docs/performance.md,
    "Depthwise weight gradients"). Needs H, W divisible by d and the "same" padding d*(k-1)/2."""
    return _native_weight_grad(_parity_stack(x, d), _parity_stack(g, d), k, (k - 1) // 2, 1)


def _folded_weight_grad(x: torch.Tensor, g: torch.Tensor, k: int, p: int, d: int, s: int = 1) -> torch.Tensor:
    """The weight gradient as a depthwise forward conv: gw[c, i, j] = sum_n sum_(h,w) xpad[n, c, s*h + i*d,
    s*w + j*d] * g[n, c, h, w] is, for each (n, c), the correlation of the padded input with g taken as an
    Ho x Wo kernel dilated by the stride s, at stride d (the first k x k outputs; exactly k x k at stride 1);
    batch folded into channels (N*C groups), then summed over n. Any padding."""
    n, c, h, w = x.shape
    if _is_nhwc(x):  # (1, N*C, H, W) in NHWC: one transposing copy (oneDNN's fast depthwise forward reads NHWC)
        xi = x.permute(2, 3, 0, 1).reshape(1, h, w, n * c).permute(0, 3, 1, 2)
    else:
        xi = x.reshape(1, n * c, h, w)
    out = F.conv2d(xi, g.reshape(n * c, 1, g.shape[2], g.shape[3]), None, d, p, s, n * c)
    if s > 1:  # the rows and columns past the last tap: the strided conv's output may stop short of them
        out = out[:, :, :k, :k]
    return out.reshape(n, c, k, k).sum(0).unsqueeze(1)


def dw_weight_grad_route(k: int, d: int, p: int, size: tuple[int, int], s: int = 1) -> str:
    """The static rule: which depthwise weight gradient a fused supernet runs for a k x k kernel at dilation
    d, padding p, stride s, input size (H, W). No autotuning, so the choice (and the rounding) is the same in
    every run. Measured per case in docs/performance.md ("Depthwise weight gradients"):
      "native"  oneDNN's own: its fast depthwise kernel covers 3x3 without dilation;
      "parity"  3x3 dilated at stride 1, H and W divisible by d: d*d non-dilated sub-problems in one fast
                3x3 call;
      "folded"  5x5 and larger (any dilation), dilated 3x3 of other sizes or at stride 2: the forward-conv form.
    """
    same = 2 * p == d * (k - 1)
    if k <= 3 and d == 1:
        return "native"
    if k == 3 and s == 1 and same and size[0] % d == 0 and size[1] % d == 0:
        return "parity"
    return "folded"


def _fast_weight_grad(x: torch.Tensor, g: torch.Tensor, k: int, p: int, d: int, s: int = 1) -> torch.Tensor:
    route = dw_weight_grad_route(k, d, p, (x.shape[2], x.shape[3]), s)
    if route == "parity":
        return _parity_weight_grad(x, g, k, d)
    if route == "folded":
        return _folded_weight_grad(x, g, k, p, d, s)
    return _native_weight_grad(x, g, k, p, d, s)


def _fast_input_grad(g: torch.Tensor, x: torch.Tensor, w: torch.Tensor, s: int, p: int, d: int) -> torch.Tensor:
    """The input gradient the swapped depthwise convs take: oneDNN's backward-data for non-dilated 5x5 at
    stride 2 (the faster there), else the flipped-kernel forward conv (docs/performance.md)."""
    if d == 1 and s > 1:
        return _native_input_grad(g, x, w, s, p, 1)
    return _dw_input_grad(g, w, (x.shape[2], x.shape[3]), s, p, d)


class _DilatedDepthwise(torch.autograd.Function):
    """A depthwise convolution whose backward avoids oneDNN's slow dilated / large-kernel paths on CPU.

    Measured on the 2-core CPU (batch 32, channels_last, one thread): the input gradient of a dilated
    3x3 / 5x5 depthwise conv took 2.3 / 3.6 ms at stride 1 and 10 / 29 ms at stride 2 against 0.2-0.6 ms
    here; the weight gradient 6 / 14 ms against 1.8 / 4.6 ms. Measured again in CPU time (process time, so
    other processes on the cores do not count): at stride 1 oneDNN's weight gradient (2.4 / 4.3 ms) beats
    the per-tap sums (3.7 / 9.9 ms), at stride 2 it does not (11.9 against 5.4 ms for 5x5).
    `fast_weight_grad` (set with fusion): the weight gradient takes the route of `dw_weight_grad_route`;
    off, every weight gradient is the per-tap sum, as before fusion existed. The
    backward is written in differentiable ops, so double backward (create_graph) works.
    """

    @staticmethod
    def forward(ctx, x, w, stride: int, padding: int, dilation: int, fast_weight_grad: bool = False):
        ctx.save_for_backward(x, w)
        ctx.conf = (stride, padding, dilation)
        ctx.fast_weight_grad = fast_weight_grad
        return F.conv2d(x, w, None, stride, padding, dilation, x.shape[1])

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        s, p, d = ctx.conf
        gx = gw = None
        if _needed(ctx, 0):
            gx = _fast_input_grad(g, x, w, s, p, d)
        if _needed(ctx, 1):
            if ctx.fast_weight_grad:  # docs/performance.md, "Depthwise weight gradients"
                gw = _fast_weight_grad(x, g, w.shape[-1], p, d, s)
            else:
                gw = _dw_weight_grad(x, g, w.shape[-1], s, p, d)
        return gx, gw, None, None, None, None


def _needed(ctx, i: int, edge: int | None = None) -> bool:
    """Will this backward pass use input i's gradient? (The alpha-only backward needs no weight gradients.)

    `needs_input_grad` only says the input requires grad; as built-in ops do, ask the engine whether the
    node that would receive the gradient runs in this backward (`torch.autograd.grad(loss, alphas)`).
    """
    if not ctx.needs_input_grad[i]:
        return False
    if torch.compiler.is_compiling():  # traced (compile_cells): which gradients run is fixed when the backward compiles
        return True
    node = ctx.next_functions[i if edge is None else edge][0]  # `edge`: i among the tensor inputs only
    try:
        return node is None or bool(torch._C._will_engine_execute_node(node))
    except (AttributeError, RuntimeError):  # a private helper: if it is gone, compute the gradient
        return True


class DilatedDepthwiseConv2d(nn.Conv2d):
    """nn.Conv2d (same parameters and state) for depthwise convs with the fast backward on CPU: dilated ones
    always, non-dilated ones of 5x5 and larger with fusion (`fast_weight_grad`).

    `fast_weight_grad` (set with fusion): the weight gradient takes `dw_weight_grad_route`'s route
    (faster, other rounding); off, every weight gradient is the per-tap sum, as before fusion existed."""

    fast_weight_grad = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or torch.is_autocast_enabled("cpu"):  # autocast casts stock convs only
            return super().forward(x)
        return _DilatedDepthwise.apply(x, self.weight, self.stride[0], self.padding[0], self.dilation[0],
                                       self.fast_weight_grad)  # fmt: skip


def _is_square_depthwise(m: nn.Module) -> bool:
    return (type(m) is nn.Conv2d and m.groups == m.in_channels == m.out_channels and m.bias is None
            and m.kernel_size[0] == m.kernel_size[1] and m.dilation[0] == m.dilation[1]
            and m.stride[0] == m.stride[1] and m.padding_mode == "zeros"
            and isinstance(m.padding, tuple) and m.padding[0] == m.padding[1])  # fmt: skip


def _is_dilated_depthwise(m: nn.Module) -> bool:
    return _is_square_depthwise(m) and m.dilation[0] > 1


def _is_slow_depthwise(m: nn.Module) -> bool:
    """Non-dilated, 5x5 or larger: oneDNN's weight gradient leaves its fast depthwise kernel."""
    return _is_square_depthwise(m) and m.dilation[0] == 1 and m.kernel_size[0] >= 5


def use_fast_dilated_depthwise(module: nn.Module, fast_weight_grad: bool = False) -> int:
    """Swap every dilated depthwise nn.Conv2d for DilatedDepthwiseConv2d in place, and with `fast_weight_grad`
    (fusion) also the non-dilated 5x5 (and larger) ones; returns how many."""
    n = 0
    for m in module.modules():
        for _name, child in m.named_children():
            if _is_dilated_depthwise(child) or (fast_weight_grad and _is_slow_depthwise(child)):
                child.__class__ = DilatedDepthwiseConv2d
                child.fast_weight_grad = fast_weight_grad
                n += 1
    return n


class FixedOp(nn.Module):
    """A fixed edge inside a searched cell: the network passes it the cell's weights too; it ignores them."""

    def __init__(self, op: nn.Module):
        super().__init__()
        self.op = op

    def forward(self, x: torch.Tensor, weights: Any = None) -> torch.Tensor:
        return self.op(x)


class _FrozenBNStats:
    """Recomputation must not update BN running statistics a second time.

    momentum 0 makes the update `running = 1 * running + 0 * batch`, which leaves the value exactly as
    it was; num_batches_tracked (counted only when momentum is None) is restored by hand. A class, not
    a generator: the recomputation context is entered again for every backward through the same graph
    (retain_graph, as the Hessian's power iteration does).
    """

    def __init__(self, module: nn.Module):
        self.module = module
        self.saved: list[tuple[nn.Module, float | None, torch.Tensor | None]] = []

    def __enter__(self) -> None:
        self.saved = []
        for m in self.module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
                count = None if m.num_batches_tracked is None else m.num_batches_tracked.clone()
                self.saved.append((m, m.momentum, count))
                m.momentum = 0.0

    def __exit__(self, *exc: object) -> None:
        for m, momentum, count in self.saved:
            m.momentum = momentum
            if count is not None:
                m.num_batches_tracked.copy_(count)  # type: ignore[union-attr]
        self.saved = []


# ---- fusion (docs/performance.md, "Fusion") ----------------------------------------------------------
def _flat(t: torch.Tensor) -> torch.Tensor | None:
    """A 1-D view of `t` in its memory order (NCHW or NHWC), or None when it is neither dense layout."""
    if t.is_contiguous():
        return t.view(-1)
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last):
        return t.permute(0, 2, 3, 1).reshape(-1)  # a view: NHWC storage is dense in this order
    return None


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """sum(a * b) in one pass when both share a dense layout (no product tensor)."""
    fa, fb = _flat(a), _flat(b)
    if fa is not None and fb is not None and a.stride() == b.stride() and a.dtype == b.dtype:
        return torch.dot(fa, fb)
    return (a * b).sum()


class _WeightedSum(torch.autograd.Function):
    """base + sum_i w[index_i] * h_i in one accumulating pass per term (the mixed op's weighted sum, DARTS Eq. 1);
    a term with index -1 is added as it is (its op already folded its weight in, `scaled_batch_norm`).

    Unfused, every term costs a product tensor and an add (forward) and a product plus a reduction
    (backward, for the weight); here each term is one multiply-add into the output, and the weight's
    gradient is one dot product. The backward is written in differentiable ops (double backward works).
    """

    @staticmethod
    def forward(ctx, base, w, index, *hs):
        ctx.index = index
        ctx.has_base = base is not None
        ctx.first_h = 2 if base is not None else 1  # where the h_i start among the tensor inputs (next_functions)
        ctx.save_for_backward(w, *[h if i >= 0 else None for i, h in zip(index, hs)])
        ctx.channels_last = hs[0].dim() == 4 and hs[0].is_contiguous(memory_format=torch.channels_last) and not hs[0].is_contiguous()
        ws = w.unbind(0)
        out = None
        for i, h in zip(index, hs):
            if out is None:
                if base is None:
                    out = torch.mul(h, ws[i]) if i >= 0 else h.clone()
                else:
                    out = torch.addcmul(base, h, ws[i]) if i >= 0 else torch.add(base, h)
            elif i >= 0:
                out.addcmul_(h, ws[i])
            else:
                out.add_(h)
        return out

    @staticmethod
    def backward(ctx, g):
        w, *hs = ctx.saved_tensors
        index = ctx.index
        gw = None
        if _needed(ctx, 1, ctx.first_h - 1):
            # one dot per term; entries of w no term uses get 0. Stacked in place rather than scattered
            # with an index tensor: building one from a list is a host-to-device copy that waits for
            # the GPU, in every backward pass (docs/performance.md, "Fusion as the default")
            dots = {i: _dot(g, h).to(w.dtype) for i, h in zip(index, hs) if i >= 0}
            zero = w.new_zeros(())
            gw = torch.stack([dots.get(i, zero) for i in range(w.shape[0])])
        if -1 in index and _flat(g) is None:
            # A slice of the cell's concatenated output's grad: the ops' backward kernels are slow on a
            # non-dense layout, so hand them one dense copy (products below are dense anyway).
            g = g.contiguous(memory_format=torch.channels_last if ctx.channels_last else torch.contiguous_format)
        ws = w.unbind(0)
        ghs = [(g * ws[i] if i >= 0 else g) if _needed(ctx, 3 + n, ctx.first_h + n) else None for n, i in enumerate(index)]
        return (g if ctx.has_base else None), gw, None, *ghs


def weighted_sum(base: torch.Tensor | None, w: torch.Tensor, index: list[int], hs: list[torch.Tensor]) -> torch.Tensor:
    """base + sum_i w[index[i]] * hs[i] (base may be None; index -1: add hs[i] as it is), fused; `w` 1-D."""
    return _WeightedSum.apply(base, w, list(index), *hs)


def _bn_shares_output(a: nn.Module, b: nn.Module) -> bool:
    """Do BNs a and b give the same output on the same input? In training mode (batch statistics) the
    running statistics play no part; both must be non-affine with the same eps."""
    return (type(a) is type(b) is nn.BatchNorm2d and not a.affine and not b.affine and a.eps == b.eps
            and (a.training or a.running_mean is None) and (b.training or b.running_mean is None))  # fmt: skip


def _bn_update_stats(bn: nn.BatchNorm2d, x: torch.Tensor, native: bool | None = None) -> None:
    """The running-statistics update nn.BatchNorm2d.forward would make on x (bitwise: the same ATen
    update), without its output: a BN whose output is shared with another one still tracks its own."""
    if not (bn.training and bn.track_running_stats and bn.running_mean is not None):
        return
    with torch.no_grad():
        bn.num_batches_tracked.add_(1)  # type: ignore[union-attr]
        f = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)  # type: ignore[arg-type]
        if native is None:  # compiled (compile_cells): the op's schema does not declare that it writes the
            # running statistics, so the compiler would drop the update; the written-out one is traced
            native = x.device.type in ("cpu", "cuda") and not torch.compiler.is_compiling()
        if native:
            torch.batch_norm_update_stats(x.detach(), bn.running_mean, bn.running_var, f)
        else:  # devices without that kernel (meta, mps), and compiled: the same update written out (unbiased variance, as BN keeps)
            x = x.detach()
            bn.running_mean.mul_(1 - f).add_(x.mean((0, 2, 3)), alpha=f)  # type: ignore[union-attr]
            bn.running_var.mul_(1 - f).add_(x.var((0, 2, 3), unbiased=True), alpha=f)  # type: ignore[union-attr]


_FOLD = True


class _MaxPoolKeepInput(torch.autograd.Function):
    """Max pooling that keeps only its input for the backward pass and finds the argmax again there.

    Stock max pooling keeps its input and an int64 index tensor (twice a float tensor of the output's
    size). In a fused cell the pooled state is kept anyway (the skip candidate's weighted-sum term keeps
    it, docs/performance.md, "Memory"), so recomputing the indices in backward drops the index tensor: one
    per state with a max-pool candidate. Same values and gradients (the same kernel picks the same argmax);
    the backward is written in differentiable ops (double backward works).
    """

    @staticmethod
    def forward(ctx, x, k: int, s: int, p: int):
        ctx.save_for_backward(x)
        ctx.conf = (k, s, p)
        return F.max_pool2d(x, k, s, p)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        k, s, p = ctx.conf
        with torch.no_grad():
            _, idx = F.max_pool2d(x.detach(), k, s, p, return_indices=True)
        gx = torch.ops.aten.max_pool2d_with_indices_backward(g, x, [k, k], [s, s], [p, p], [1, 1], False, idx)
        return gx, None, None, None


def _pair_int(v: Any) -> int | None:
    v = v if isinstance(v, tuple) else (v, v)
    return v[0] if len(v) == 2 and v[0] == v[1] else None


def _max_pool(pool: nn.MaxPool2d, x: torch.Tensor) -> torch.Tensor:
    """pool(x), keeping no index tensor when the pooling is a plain square one (_MaxPoolKeepInput)."""
    k, s, p = _pair_int(pool.kernel_size), _pair_int(pool.stride), _pair_int(pool.padding)
    plain = None not in (k, s, p) and _pair_int(pool.dilation) == 1 and not pool.ceil_mode and not pool.return_indices
    if not plain or not (torch.is_grad_enabled() and x.requires_grad):
        return pool(x)
    return _MaxPoolKeepInput.apply(x, k, s, p)


def _candidate_plan(op: nn.Module) -> tuple:
    """How the fused mixed op runs one candidate: ("relu", tail, bn | None) when it starts with a ReLU of
    the input (sep/dil conv, ReLUConvBN, conv 7x1-1x7; bn: a final non-affine BN that takes the
    candidate's weight as its scale), ("fr", op) for factorized reduce (ReLU, then `after_relu` with the
    scale), ("pool", pool, bn | None), ("id",), ("op",)."""
    seq = op.op if isinstance(getattr(op, "op", None), nn.Sequential) else op if isinstance(op, nn.Sequential) else None
    if isinstance(op, FactorizedReduce) and type(op.relu) is nn.ReLU and type(op.bn) is nn.BatchNorm2d and not op.bn.affine:
        return ("fr", op)
    if isinstance(op, nn.Identity):
        return ("id",)
    if isinstance(op, nn.MaxPool2d | nn.AvgPool2d):
        return ("pool", op, None)
    if seq is not None and len(seq) >= 1:
        first = seq[0]
        if type(first) is nn.ReLU and not first.inplace and len(seq) > 1:
            tail = list(seq)[1:]
            last = tail[-1]
            if type(last) is nn.BatchNorm2d and not last.affine and len(tail) > 1:
                return ("relu", tail[:-1], last)
            return ("relu", tail, None)
        if isinstance(first, nn.MaxPool2d | nn.AvgPool2d) and len(seq) <= 2 and (len(seq) == 1 or type(seq[1]) is nn.BatchNorm2d):
            return ("pool", first, seq[1] if len(seq) == 2 else None)
    return ("op",)


def _run_candidate(op: nn.Module, plan: tuple, x: torch.Tensor, shared: dict, weight: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """One candidate on x: (output, whether `weight` is already folded in). `shared` holds what every
    candidate (and edge) reading this x computes once: relu(x), each pooling of x and the BN after it."""
    kind = plan[0]
    if kind == "id":
        return x, False
    if kind in ("relu", "fr"):
        h = shared.get("relu")
        if h is None:
            h = shared["relu"] = F.relu(x)
        if kind == "fr":
            return (plan[1].after_relu(h, weight), True) if _FOLD else (plan[1].after_relu(h), False)
        for m in plan[1]:
            h = m(h)
        if plan[2] is not None:
            return (scaled_batch_norm(plan[2], h, weight), True) if _FOLD else (plan[2](h), False)
        return h, False
    if kind == "pool":
        pool, bn = plan[1], plan[2]
        key = repr(pool)
        p = shared.get(key)
        if p is None:
            p = shared[key] = _max_pool(pool, x) if type(pool) is nn.MaxPool2d else pool(x)
        if bn is None:
            return p, False
        first = shared.get(("bn", key))
        if first is not None and _bn_shares_output(first[0], bn):
            _bn_update_stats(bn, p)
            return first[1], False
        y = bn(p)
        if first is None:
            shared[("bn", key)] = (bn, y)
        return y, False
    return op(x), False


class MixedOp(nn.Module):
    """One mixed edge: the softmax-weighted sum of its computed candidates (docs/methods.md, DARTS).

    `forward(x, weights)` takes the whole softmax row of the edge (one weight per candidate, `none`
    included) and uses the entries of the candidates it computes.

    `fuse` (what Supernet passes by default): the candidates that start with a ReLU of the input share one ReLU, and the
    weighted sum is one accumulating pass per candidate (`weighted_sum`); `contribute` lets the cell
    share the ReLU and the pooling (with its BN) among all edges that read one state. The same values
    up to float rounding; `fuse=False` is the op-by-op sum of the DARTS reference (bit for bit).
    """

    def __init__(self, edge: ir.Edge, C: int, stride: int, pool_bn: bool, low_memory: bool = False, fuse: bool = False):
        super().__init__()
        candidates = edge.candidates
        computed = edge.computed if edge.computed is not None else candidates
        self.candidates = tuple(candidates)
        self.index = [candidates.index(o) for o in computed]
        self.stride = stride
        self.low_memory = low_memory
        self.fuse = fuse
        built = []
        for name in computed:
            d = ops.REGISTRY[name]
            op = d.build(C, stride, affine=False)
            if d.is_pool and pool_bn:
                op = nn.Sequential(op, nn.BatchNorm2d(C, affine=False))
            built.append(op)
        self._ops = nn.ModuleList(built)
        # Plain lists (not registered again): the same module objects, so in-place swaps
        # (use_fast_dilated_depthwise) and .to() reach them.
        self._plans = [_candidate_plan(op) for op in built]

    def _mixed(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        if self.fuse:
            return self.contribute(x, weights, None, {})
        out = None
        for i, op in zip(self.index, self._ops):
            h = weights[i] * op(x)
            out = h if out is None else out + h
        if out is None:  # every candidate is `none`: the edge contributes zeros of the right shape
            out = Zero(self.stride)(x)
        return out

    def contribute(self, x: torch.Tensor, weights: torch.Tensor, base: torch.Tensor | None, shared: dict) -> torch.Tensor:
        """base + this edge's output, fused (see the class docstring); `shared` is per input tensor."""
        if not self.index:
            z = Zero(self.stride)(x)
            return z if base is None else base + z
        hs, index = [], []
        for i, op, plan in zip(self.index, self._ops, self._plans):
            h, folded = _run_candidate(op, plan, x, shared, weights[i])
            hs.append(h)
            index.append(-1 if folded else i)
        return weighted_sum(base, weights, index, hs)

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        if self.low_memory and self.training and torch.is_grad_enabled():
            return checkpoint(self._mixed, x, weights, use_reentrant=False,
                              context_fn=lambda: (contextlib.nullcontext(), _FrozenBNStats(self)))  # fmt: skip
        return self._mixed(x, weights)


class FusedCell(CellModule):
    """A searched cell run state by state: once a state exists, every mixed edge leaving it runs with
    one shared ReLU and one pooling (plus BN) of that state, accumulating straight into its
    destination node (docs/performance.md, "Fusion"). The values of CellModule.forward up to float
    rounding; it defers to it for drop path, low memory and cells without mixed edges.
    """

    def forward(self, s0: torch.Tensor, s1: torch.Tensor | None = None, weights=None, earlier=()) -> torch.Tensor:
        plan = getattr(self, "_fusion", None)
        if plan is None or weights is None or (self.training and self.drop_prob > 0.0):
            return super().forward(s0, s1, weights, earlier)
        states = self.input_states(s0, s1, earlier)  # a widening chain stage projects its input (docs/network.md)
        n_in = len(states)
        acc: list[torch.Tensor | None] = [None] * len(self._schedule)
        for i, out_edges in enumerate(plan):
            if i >= n_in:
                node = acc[i - n_in]
                states.append(node if node is not None else torch.zeros_like(states[-1]))
            x = states[i]
            shared: dict = {}
            for k, dst in out_edges:
                op = self._ops[k]
                if isinstance(op, MixedOp) and not (op.low_memory and self.training and torch.is_grad_enabled()):
                    acc[dst] = op.contribute(x, weights[k], acc[dst], shared)
                else:
                    h = op(x, weights[k])
                    acc[dst] = h if acc[dst] is None else acc[dst] + h
        if len(self._concat) == 1:
            return states[self._concat[0]]
        return torch.cat([states[i] for i in self._concat], dim=1)


def use_fused_cells(net: Network, spec: ir.Spec) -> int:
    """Turn every CellModule of `net` with mixed edges into a FusedCell in place, running the state
    groups of passes/fuse.py (`fusion_groups`); returns how many."""
    from nasir.passes.fuse import fusion_groups

    n = 0
    for kind, m in zip(net.cell_kinds, net.cells):
        if type(m) is not CellModule or not any(isinstance(op, MixedOp | PartialMixedOp) for op in m._ops):
            continue
        cell = spec.cell(kind)
        assert cell is not None
        node = {name: j for j, name in enumerate(cell.node_names)}
        groups = {g.state: g for g in fusion_groups(cell)}
        plan: list[list[tuple[int, int]]] = []
        for s in cell.states:
            g = groups.get(s)
            mixed = [(k, node[cell.edges[k].dst]) for k in g.edges] if g is not None else []
            fixed = [(k, node[e.dst]) for k, e in enumerate(cell.edges) if e.src == s and e.alpha is None]
            plan.append(mixed + fixed)
        m._fusion = plan
        m.__class__ = FusedCell
        n += 1
    return n


COMPILE_RECOMPILE_LIMIT = 64


def compile_cells(net: Network) -> int:
    """Regional compilation (docs/performance.md, "Compiling the cells"): torch.compile each cell of `net`
    that has mixed edges, rather than the whole supernet; returns how many. Cells that run the same code
    at the same shapes share one compiled graph; each shape (resolution, channels, preprocessing) and each
    set of inputs that need gradients is one compilation, done on the first call that meets it. The same
    values up to float rounding (the compiler fuses the elementwise work: BN, ReLU, weighted sums). A
    compiled backward computes the gradient of every input that required one when it was compiled, so an
    architecture-only pass also pays for the weight gradients that eager autograd skips.
    """
    import torch._dynamo

    # DARTS' 8-layer network alone has 8 cell shapes (preprocessing differs too), and each dtype, device
    # or train/eval mode is another compilation; the default limit (8 per code object) would fall back to
    # eager after the eighth.
    cfg = torch._dynamo.config
    cfg.recompile_limit = max(cfg.recompile_limit, COMPILE_RECOMPILE_LIMIT)
    n = 0
    for m in net.cells:
        if any(isinstance(op, MixedOp | PartialMixedOp) for op in m._ops):
            m.compile(dynamic=False)
            n += 1
    return n


class Supernet(nn.Module):
    """The network (`net`) plus architecture variables `alphas[cell kind]` (rows x candidates).

    `forward(x)` computes softmax(alpha) per row once per call and hands every cell of a kind the
    weights of its edges. `weight_parameters()` are the network's weights w; `arch_parameters()` the
    alphas; `scores()` the per-row softmax that magnitude selection ranks (passes/derive.py).
    """

    def __init__(self, spec: ir.Spec, plan: Plan, *, low_memory: bool = False, channels_last: bool | None = None,
                 pool_bn: bool | None = None, fast_dilated: bool = True, partial_channels: int = 1,
                 fuse: bool = True, compile: bool = False):  # fmt: skip
        super().__init__()
        self.spec = spec
        self.plan = plan
        self.low_memory = low_memory
        self.channels_last = channels_last = default_channels_last() if channels_last is None else channels_last
        self.fuse = fuse
        self.partial_channels = k = partial_channels
        self.op_mask: dict[str, torch.Tensor] | None = None
        cells = {c.name: c for c in spec.cells}

        if pool_bn is None:
            pool_bn = any(len(c.inputs) >= 2 for c in spec.cells if c.alpha_rows is not None)

        def make_op(edge: ir.Edge, C: int, stride: int) -> nn.Module:
            if edge.alpha is None:
                return FixedOp(ops.REGISTRY[edge.op].build(C, stride, affine=False))  # type: ignore[index]
            if k > 1:
                if C % k:
                    raise DiagnosticError([Diagnostic(f"partial channels: {C} channels of an edge into node '{edge.dst}' do not split into K = {k} parts",
                                                      edge.span, "choose K dividing every cell's channel count (e.g. pcdarts(k = 2))")])  # fmt: skip
                return PartialMixedOp(MixedOp(edge, C // k, stride, pool_bn, low_memory, fuse), k=k, stride=stride)
            return MixedOp(edge, C, stride, pool_bn, low_memory, fuse)

        self.net = Network(spec, plan, make_op=make_op, affine=False)
        if fast_dilated:
            use_fast_dilated_depthwise(self.net, fast_weight_grad=fuse)
        if fuse:
            use_fused_cells(self.net, spec)
        used = {b.cell for b in plan.cells}
        self.rows: dict[str, tuple[tuple[str, ...], ...]] = {}
        self.edge_rows: dict[str, list[int | None]] = {}
        self.cells: dict[str, ir.Cell] = {}
        alphas = {}
        for name in sorted(used, key=[c.name for c in spec.cells].index):
            c = cells[name]
            if c.alpha_rows is None:
                continue
            self.cells[name] = c
            widths = {len(r) for r in c.alpha_rows}
            if len(widths) != 1:
                raise error_at(c.span, f"cell '{c.name}' mixes choices of different sizes; this runtime needs one op set per cell kind")
            self.rows[name] = c.alpha_rows
            self.edge_rows[name] = [e.alpha for e in c.edges]
            # DARTS initialises the architecture variables to 1e-3 * N(0, 1) (model_search.py).
            alphas[name] = nn.Parameter(1e-3 * torch.randn(len(c.alpha_rows), widths.pop()))
        self.alphas = nn.ParameterDict(alphas)
        # Stretchable cells: one beta per code of each row; PC-DARTS: one gamma per alpha row. Both
        # initialised as the alphas are (1e-3 * N(0, 1)), after them.
        self.betas = nn.ModuleDict({
            kind: nn.ParameterList([nn.Parameter(1e-3 * torch.randn(n)) for n in beta_sizes(c)])
            for kind, c in self.cells.items() if c.beta_rows
        })  # fmt: skip
        self.gammas = nn.ParameterDict({kind: nn.Parameter(1e-3 * torch.randn(len(c.alpha_rows or ())))
                                        for kind, c in self.cells.items()} if k > 1 else {})  # fmt: skip
        if channels_last:
            self.to(memory_format=torch.channels_last)
        self.compiled = compile_cells(self.net) if compile else 0

    # ---- parameters ----------------------------------------------------------------------------
    def arch_parameters(self) -> list[nn.Parameter]:
        """alphas, then betas (stretchable cells), then gammas (PC-DARTS edge normalisation)."""
        return self.alpha_parameters() + self.beta_parameters() + list(self.gammas.values())

    def alpha_parameters(self) -> list[nn.Parameter]:
        return list(self.alphas.values())

    def beta_parameters(self) -> list[nn.Parameter]:
        return [b for rows in self.betas.values() for b in rows]  # type: ignore[union-attr]

    def named_weight_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(f"net.{n}", p) for n, p in self.net.named_parameters()]

    def weight_parameters(self) -> list[nn.Parameter]:
        return list(self.net.parameters())

    # ---- forward -------------------------------------------------------------------------------
    def edge_factors(self, kind: str) -> torch.Tensor | None:
        """The factor each edge of the cell (IR order) folds into its candidate weights: the merged
        topology factor s(i, j); None when the cell has none (PC-DARTS' edge weights are not folded)."""
        if kind in self.betas:
            return merged_factors(self.cells[kind], list(self.betas[kind]))  # type: ignore[arg-type]
        return None

    def edge_weights(self, alphas: dict[str, torch.Tensor] | None = None,
                     soft: dict[str, torch.Tensor] | None = None) -> dict[str, list[torch.Tensor | None]]:  # fmt: skip
        """Per cell kind, per edge of the cell (IR order), the weight of each candidate; None for fixed edges.

        The weights are softmax(alpha) of the edge's row (or the row of `soft`, SDARTS' perturbed
        weights), times `op_mask` when set, times the edge's factor (`edge_factors`). Under PC-DARTS an
        edge's entry is the pair (those weights, its edge-normalisation weight) for PartialMixedOp.
        """
        alphas = alphas if alphas is not None else dict(self.alphas)
        out = {}
        for kind, rows in self.edge_rows.items():
            a = soft[kind] if soft is not None else F.softmax(alphas[kind], dim=-1)
            if self.op_mask is not None and kind in self.op_mask:
                a = a * self.op_mask[kind].to(a)
            f = self.edge_factors(kind)
            w = a.unbind(0)
            weights = [None if r is None else (w[r] if f is None else w[r] * f[k]) for k, r in enumerate(rows)]
            if kind in self.gammas:
                g = edge_normalization(self.cells[kind], self.gammas[kind]).unbind(0)
                weights = [None if x is None else (x, g[k]) for k, x in enumerate(weights)]
            out[kind] = weights
        return out

    def softmax_weights(self) -> dict[str, torch.Tensor]:
        """softmax(alpha) per cell kind, [rows, candidates], in the graph (what SDARTS perturbs)."""
        return {k: F.softmax(a, dim=-1) for k, a in self.alphas.items()}

    def forward(self, x: torch.Tensor, alphas: dict[str, torch.Tensor] | None = None,
                soft: dict[str, torch.Tensor] | None = None) -> torch.Tensor:  # fmt: skip
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x, self.edge_weights(alphas, soft))

    # ---- selection -----------------------------------------------------------------------------
    def scores(self) -> dict[str, list[list[float]]]:
        """softmax(alpha) per row: the scores of magnitude selection (docs/methods.md, "Derivation")."""
        with torch.no_grad():
            return {k: F.softmax(a.detach().double(), dim=-1).tolist() for k, a in self.alphas.items()}

    def alpha_values(self) -> dict[str, list[list[float]]]:
        with torch.no_grad():
            return {k: a.detach().double().tolist() for k, a in self.alphas.items()}

    def beta_values(self) -> dict[str, list[list[float]]]:
        """The topology variables per cell kind, one list per beta row (`Cell.beta_rows` order)."""
        return {k: [b.detach().double().tolist() for b in rows] for k, rows in self.betas.items()}

    def gamma_values(self) -> dict[str, list[float]]:
        return {k: g.detach().double().tolist() for k, g in self.gammas.items()}


def prepare(spec: ir.Spec) -> ir.Spec:
    """Run the "search" pipeline (nasir/pipeline.py: mixed_ops, topology, zero_ops, fuse_ops; a pass
    that already ran is skipped); refuse a spec without choices."""
    from nasir.passes import pipeline

    if not spec.is_search_space:
        cell = spec.cells[0] if spec.cells else None
        raise DiagnosticError([Diagnostic(f"{spec.file} has no choices to search: no cell has a choice(...) edge",
                                          cell.span if cell else None,
                                          "write an edge as 'edges * -> n* : choice(darts)', or compile a derived spec with 'nasir compile'")])  # fmt: skip
    return pipeline("search").apply(spec)


def default_channels_last() -> bool:
    """The layout `nasir search` picks by default: channels_last when it runs on the CPU, which it does
    when no CUDA device is present (docs/performance.md: NHWC runs the CPU supernet in ~0.63 x the time)."""
    return not torch.cuda.is_available()


def build_supernet(spec: ir.Spec, plan: Plan | None = None, *, low_memory: bool = False, channels_last: bool | None = None,
                   pool_bn: bool | None = None, seed: int | None = None, overrides: dict[str, Any] | None = None,
                   skip_zero: bool = True, fast_dilated: bool = True, partial_channels: int = 1,
                   fuse: bool = True, compile: bool = False) -> Supernet:  # fmt: skip
    """The supernet of a search space. `plan` defaults to the spec's first network (with `overrides`).

    `pool_bn=None` follows the reference of each space: BN after pooling when the searched cells have
    two inputs (DARTS), none when they have one (NAS-Bench-201). `skip_zero=False` builds explicit Zero ops for `none`
    (only useful to test that skipping them changes nothing). `seed` seeds the initialisation.
    `fast_dilated` swaps dilated depthwise convs for DilatedDepthwiseConv2d (same weights, faster CPU backward),
    with `fuse` the non-dilated 5x5 ones too (weight gradients by `dw_weight_grad_route`, docs/performance.md).
    `partial_channels` is PC-DARTS' K (1: every channel through every mixed op, no edge normalisation).
    `channels_last=None` is `nasir search`'s default (`default_channels_last`: NHWC on a CPU-only machine).
    `fuse=True`, the default of the library and of `nasir search`, runs the fused mixed ops and cells
    (MixedOp, FusedCell; same values up to float rounding, docs/performance.md); `fuse=False`
    (`nasir search --no-fuse`) runs op by op as the DARTS reference does, bit for bit as before fusion existed.
    `compile=True` compiles every searched cell with torch.compile (`compile_cells`; the same values up to
    float rounding). Not the default: on a 2-core CPU it compiles for ~15 minutes for a weight step of
    0.83x, a first-order architecture step of 1.13x and 1.4x the memory of eager (docs/performance.md,
    "Compiling the cells").
    """
    from nasir.macro import plan as make_plan

    if skip_zero:
        spec = prepare(spec)
    else:
        spec = prepare(spec)  # the same pipeline; `computed` is cleared below, so `none` is computed
        import attrs

        spec = attrs.evolve(spec, cells=tuple(
            attrs.evolve(c, edges=tuple(attrs.evolve(e, computed=None) for e in c.edges)) for c in spec.cells))  # fmt: skip
    plan = plan or make_plan(spec, None, overrides)
    if seed is not None:
        torch.manual_seed(seed)
    return Supernet(spec, plan, low_memory=low_memory, channels_last=channels_last, pool_bn=pool_bn,
                    fast_dilated=fast_dilated, partial_channels=partial_channels, fuse=fuse, compile=compile)
