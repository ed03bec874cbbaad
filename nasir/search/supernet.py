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
from nasir.targets.blocks import Zero
from nasir.targets.network import Network


# ---- dilated depthwise convolutions -----------------------------------------------------------------
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


class _DilatedDepthwise(torch.autograd.Function):
    """A dilated depthwise convolution whose backward avoids oneDNN's slow dilated paths on CPU.

    Measured on the 2-core CPU (batch 32, channels_last, one thread): the input gradient of a dilated
    3x3 / 5x5 depthwise conv took 2.3 / 3.6 ms at stride 1 and 10 / 29 ms at stride 2 against 0.2-0.6 ms
    here; the weight gradient 6 / 14 ms against 1.8 / 4.6 ms. The backward is written in differentiable
    ops, so double backward (create_graph) still works.
    """

    @staticmethod
    def forward(ctx, x, w, stride: int, padding: int, dilation: int):
        ctx.save_for_backward(x, w)
        ctx.conf = (stride, padding, dilation)
        return F.conv2d(x, w, None, stride, padding, dilation, x.shape[1])

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        s, p, d = ctx.conf
        gx = _dw_input_grad(g, w, (x.shape[2], x.shape[3]), s, p, d) if _needed(ctx, 0) else None
        gw = _dw_weight_grad(x, g, w.shape[-1], s, p, d) if _needed(ctx, 1) else None
        return gx, gw, None, None, None


def _needed(ctx, i: int) -> bool:
    """Will this backward pass use input i's gradient? (The alpha-only backward needs no weight gradients.)

    `needs_input_grad` only says the input requires grad; as built-in ops do, ask the engine whether the
    node that would receive the gradient runs in this backward (`torch.autograd.grad(loss, alphas)`).
    """
    if not ctx.needs_input_grad[i]:
        return False
    node = ctx.next_functions[i][0]
    try:
        return node is None or bool(torch._C._will_engine_execute_node(node))
    except (AttributeError, RuntimeError):  # a private helper: if it is gone, compute the gradient
        return True


class DilatedDepthwiseConv2d(nn.Conv2d):
    """nn.Conv2d (same parameters and state) for dilated depthwise convs; the fast backward on CPU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":
            return super().forward(x)
        return _DilatedDepthwise.apply(x, self.weight, self.stride[0], self.padding[0], self.dilation[0])


def _is_dilated_depthwise(m: nn.Module) -> bool:
    return (type(m) is nn.Conv2d and m.groups == m.in_channels == m.out_channels and m.bias is None
            and m.dilation[0] == m.dilation[1] > 1 and m.stride[0] == m.stride[1] and m.padding_mode == "zeros"
            and isinstance(m.padding, tuple) and m.padding[0] == m.padding[1])  # fmt: skip


def use_fast_dilated_depthwise(module: nn.Module) -> int:
    """Swap every dilated depthwise nn.Conv2d for DilatedDepthwiseConv2d in place; returns how many."""
    n = 0
    for m in module.modules():
        for _name, child in m.named_children():
            if _is_dilated_depthwise(child):
                child.__class__ = DilatedDepthwiseConv2d
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


class MixedOp(nn.Module):
    """One mixed edge: the softmax-weighted sum of its computed candidates (docs/methods.md, DARTS).

    `forward(x, weights)` takes the whole softmax row of the edge (one weight per candidate, `none`
    included) and uses the entries of the candidates it computes.
    """

    def __init__(self, edge: ir.Edge, C: int, stride: int, pool_bn: bool, low_memory: bool = False):
        super().__init__()
        candidates = edge.candidates
        computed = edge.computed if edge.computed is not None else candidates
        self.candidates = tuple(candidates)
        self.index = [candidates.index(o) for o in computed]
        self.stride = stride
        self.low_memory = low_memory
        built = []
        for name in computed:
            d = ops.REGISTRY[name]
            op = d.build(C, stride, affine=False)
            if d.is_pool and pool_bn:
                op = nn.Sequential(op, nn.BatchNorm2d(C, affine=False))
            built.append(op)
        self._ops = nn.ModuleList(built)

    def _mixed(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        out = None
        for i, op in zip(self.index, self._ops):
            h = weights[i] * op(x)
            out = h if out is None else out + h
        if out is None:  # every candidate is `none`: the edge contributes zeros of the right shape
            out = Zero(self.stride)(x)
        return out

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        if self.low_memory and self.training and torch.is_grad_enabled():
            return checkpoint(self._mixed, x, weights, use_reentrant=False,
                              context_fn=lambda: (contextlib.nullcontext(), _FrozenBNStats(self)))  # fmt: skip
        return self._mixed(x, weights)


class Supernet(nn.Module):
    """The network (`net`) plus architecture variables `alphas[cell kind]` (rows x candidates).

    `forward(x)` computes softmax(alpha) per row once per call and hands every cell of a kind the
    weights of its edges. `weight_parameters()` are the network's weights w; `arch_parameters()` the
    alphas; `scores()` the per-row softmax that magnitude selection ranks (passes/derive.py).
    """

    def __init__(self, spec: ir.Spec, plan: Plan, *, low_memory: bool = False, channels_last: bool = False,
                 pool_bn: bool | None = None, fast_dilated: bool = True, partial_channels: int = 1):  # fmt: skip
        super().__init__()
        self.spec = spec
        self.plan = plan
        self.low_memory = low_memory
        self.channels_last = channels_last
        self.partial_channels = k = partial_channels
        self.op_mask: dict[str, torch.Tensor] | None = None
        cells = {c.name: c for c in spec.cells}

        if pool_bn is None:
            pool_bn = any(len(c.inputs) == 2 for c in spec.cells if c.alpha_rows is not None)

        def make_op(edge: ir.Edge, C: int, stride: int) -> nn.Module:
            if edge.alpha is None:
                return FixedOp(ops.REGISTRY[edge.op].build(C, stride, affine=False))  # type: ignore[index]
            if k > 1:
                if C % k:
                    raise DiagnosticError([Diagnostic(f"partial channels: {C} channels of an edge into node '{edge.dst}' do not split into K = {k} parts",
                                                      edge.span, "choose K dividing every cell's channel count (e.g. pcdarts(k = 2))")])  # fmt: skip
                return PartialMixedOp(MixedOp(edge, C // k, stride, pool_bn, low_memory), k=k, stride=stride)
            return MixedOp(edge, C, stride, pool_bn, low_memory)

        self.net = Network(spec, plan, make_op=make_op, affine=False)
        if fast_dilated:
            use_fast_dilated_depthwise(self.net)
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
    """Run mixed_ops and zero_ops unless they ran; refuse a spec without choices."""
    from nasir.passes.mixed_ops import MixedOps
    from nasir.passes.zero_ops import ZeroOps
    from nasir.pipeline import PassManager

    if not spec.is_search_space:
        cell = spec.cells[0] if spec.cells else None
        raise DiagnosticError([Diagnostic(f"{spec.file} has no choices to search: no cell has a choice(...) edge",
                                          cell.span if cell else None,
                                          "write an edge as 'edges * -> n* : choice(darts)', or compile a derived spec with 'nasir compile'")])  # fmt: skip
    from nasir.passes.topology import Topology

    passes = []
    if "mixed_ops" not in spec.properties:
        passes.append(MixedOps())
    if "topology" not in spec.properties and any(c.topology is not None for c in spec.cells):
        passes.append(Topology())
    if "zero_ops" not in spec.properties:
        passes.append(ZeroOps())
    return PassManager(passes).run(spec) if passes else spec


def build_supernet(spec: ir.Spec, plan: Plan | None = None, *, low_memory: bool = False, channels_last: bool = False,
                   pool_bn: bool | None = None, seed: int | None = None, overrides: dict[str, Any] | None = None,
                   skip_zero: bool = True, fast_dilated: bool = True, partial_channels: int = 1) -> Supernet:  # fmt: skip
    """The supernet of a search space. `plan` defaults to the spec's first network (with `overrides`).

    `pool_bn=None` follows the reference of each space: BN after pooling when the searched cells have
    two inputs (DARTS), none when they have one (NAS-Bench-201). `skip_zero=False` builds explicit Zero ops for `none`
    (only useful to test that skipping them changes nothing). `seed` seeds the initialisation.
    `fast_dilated` swaps dilated depthwise convs for DilatedDepthwiseConv2d (same weights, faster CPU backward).
    `partial_channels` is PC-DARTS' K (1: every channel through every mixed op, no edge normalisation).
    """
    from nasir.macro import plan as make_plan

    if skip_zero:
        spec = prepare(spec)
    else:
        from nasir.passes.mixed_ops import MixedOps
        from nasir.pipeline import PassManager

        prepare(spec)  # for its errors
        spec = spec if "mixed_ops" in spec.properties else PassManager([MixedOps()]).run(spec)
        import attrs

        spec = attrs.evolve(spec, cells=tuple(
            attrs.evolve(c, edges=tuple(attrs.evolve(e, computed=None) for e in c.edges)) for c in spec.cells))  # fmt: skip
    plan = plan or make_plan(spec, None, overrides)
    if seed is not None:
        torch.manual_seed(seed)
    return Supernet(spec, plan, low_memory=low_memory, channels_last=channels_last, pool_bn=pool_bn,
                    fast_dilated=fast_dilated, partial_channels=partial_channels)
