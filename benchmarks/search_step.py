"""Search-step cost of the DARTS supernet (C = 16, 8 layers, 32 x 32 input): nasir against the original.

    python benchmarks/search_step.py --original ../shared/peers/quark0-darts-cnn   # the goals' run
    python benchmarks/search_step.py --batches 32 --steps 1 --variants reference,nasir
    python benchmarks/search_step.py --variants original:weight,nasir:weight+arch1 --original PATH
    python benchmarks/search_step.py --stacking --threads 1     # grouped convs across edges, edge by edge
    python benchmarks/search_step.py --dwgrad                   # depthwise gradients: before vs the fused supernet's
    python benchmarks/search_step.py --passes                   # nasir's second-order step, pass by pass

Each (variant, batch) runs in a fresh subprocess (`--child`), so its peak resident set size is its own:
a warm-up step, then `--steps` timed steps of each kind, the median reported:
  weight  forward, backward, clip 5, SGD momentum (train_search.py's weight step)
  arch1   first-order architecture step (docs/methods.md, DARTS, xi = 0)
  arch2   second-order architecture step (finite-difference Hessian-vector product)
Peak memory is the child's ru_maxrss after its weight steps (what docs/performance.md quotes) and after all.
A variant may name its kinds: `nasir-lowmem:weight` times only the weight step.

Variants, each adding one change to the one before, so the ratios say what each change bought:
  original       the original DARTS search code itself (model_search.py, architect.py of quark0/darts),
                 imported at run time from the copy `--original PATH` points at (never copied here),
                 driven as its train_search.py drives it (weight step, Architect.step unrolled or not)
  reference      a plain re-implementation of that code (kept for machines without the copy)
  nasir-nchw     nasir's supernet built from examples/darts.cell, op by op (fuse=False): `none` skipped
                 (zero_ops), alpha-only backward passes, no model copy; NCHW, stock convolutions
  nasir-nhwc     + channels_last
  nasir-unfused  + the dilated depthwise backward of nasir/search/supernet.py (the pre-fusion default)
  nasir-fused    + fusion (passes/fuse.py: one ReLU and one pooling per state, weights folded into BN,
                 fused weighted sum)
  nasir          + freed memory kept in the process between steps (runner.keep_freed_memory): what
                 `nasir search` runs by default on a CPU
  nasir-lowmem   + low_memory (torch.utils.checkpoint per mixed op)
  nasir-pc4      PC-DARTS on the same space (method pcdarts, K = 4: partial channels + edge normalisation),
                 otherwise as nasir; docs/performance.md's target: peak memory <= 0.35 x full DARTS
  nasir-compile  nasir + regional compilation (`build_supernet(compile=True)`: torch.compile of every
                 searched cell, nasir/search/supernet.py `compile_cells`; a library option, not `nasir
                 search`'s); its warm-up steps compile, and the table gives their time as the compile
                 time (inductor caches its kernels on disk: a second run compiles faster)

Ratios are taken against `original` when it ran, else against `reference`. Machines are shared and noisy
(docs/performance.md): compare variants of one run only; the thread count is fixed (`--threads`, default 2, as
the original figures); another process on the cores makes 2-thread timings jump (OpenMP waits on a
descheduled thread), so look at the load average printed with each row.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("original", "reference", "nasir-nchw", "nasir-nhwc", "nasir-unfused", "nasir-fused", "nasir", "nasir-lowmem",
            "nasir-pc4", "nasir-compile")
# The goals' run (issue 15): the original and nasir's default at batch 32 and 64, the steps that matter.
GOALS = "original,nasir,nasir-lowmem:weight,nasir-unfused:weight"
KINDS = ("weight", "arch1", "arch2")
ORIGINAL = {32: {"weight": 8.8, "arch1": 8.8, "arch2": 26.9, "rss_gib": 5.1}, 64: {"weight": 13.4, "rss_gib": 9.5}}


# ---- the original DARTS search model, re-implemented plainly (the baseline) -------------------------
def reference_model(C: int = 16, classes: int = 10, layers: int = 8):
    import torch
    from torch import nn

    class ReLUConvBN(nn.Module):
        def __init__(self, C_in, C_out, k, s, p, affine=True):
            super().__init__()
            self.op = nn.Sequential(nn.ReLU(inplace=False), nn.Conv2d(C_in, C_out, k, stride=s, padding=p, bias=False),
                                    nn.BatchNorm2d(C_out, affine=affine))  # fmt: skip

        def forward(self, x):
            return self.op(x)

    class DilConv(nn.Module):
        def __init__(self, C_in, C_out, k, s, p, d, affine=True):
            super().__init__()
            self.op = nn.Sequential(nn.ReLU(inplace=False),
                                    nn.Conv2d(C_in, C_in, k, s, p, dilation=d, groups=C_in, bias=False),
                                    nn.Conv2d(C_in, C_out, 1, bias=False), nn.BatchNorm2d(C_out, affine=affine))  # fmt: skip

        def forward(self, x):
            return self.op(x)

    class SepConv(nn.Module):
        def __init__(self, C_in, C_out, k, s, p, affine=True):
            super().__init__()
            self.op = nn.Sequential(
                nn.ReLU(inplace=False), nn.Conv2d(C_in, C_in, k, s, p, groups=C_in, bias=False),
                nn.Conv2d(C_in, C_in, 1, bias=False), nn.BatchNorm2d(C_in, affine=affine),
                nn.ReLU(inplace=False), nn.Conv2d(C_in, C_in, k, 1, p, groups=C_in, bias=False),
                nn.Conv2d(C_in, C_out, 1, bias=False), nn.BatchNorm2d(C_out, affine=affine))  # fmt: skip

        def forward(self, x):
            return self.op(x)

    class Zero(nn.Module):
        def __init__(self, stride):
            super().__init__()
            self.stride = stride

        def forward(self, x):
            return x.mul(0.0) if self.stride == 1 else x[:, :, :: self.stride, :: self.stride].mul(0.0)

    class FactorizedReduce(nn.Module):
        def __init__(self, C_in, C_out, affine=True):
            super().__init__()
            self.relu = nn.ReLU(inplace=False)
            self.conv_1 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, bias=False)
            self.conv_2 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, bias=False)
            self.bn = nn.BatchNorm2d(C_out, affine=affine)

        def forward(self, x):
            x = self.relu(x)
            return self.bn(torch.cat([self.conv_1(x), self.conv_2(x[:, :, 1:, 1:])], dim=1))

    ops = {
        "none": lambda C, s: Zero(s),
        "max_pool_3x3": lambda C, s: nn.MaxPool2d(3, s, 1),
        "avg_pool_3x3": lambda C, s: nn.AvgPool2d(3, s, 1, count_include_pad=False),
        "skip_connect": lambda C, s: nn.Identity() if s == 1 else FactorizedReduce(C, C, affine=False),
        "sep_conv_3x3": lambda C, s: SepConv(C, C, 3, s, 1, affine=False),
        "sep_conv_5x5": lambda C, s: SepConv(C, C, 5, s, 2, affine=False),
        "dil_conv_3x3": lambda C, s: DilConv(C, C, 3, s, 2, 2, affine=False),
        "dil_conv_5x5": lambda C, s: DilConv(C, C, 5, s, 4, 2, affine=False),
    }

    class MixedOp(nn.Module):
        def __init__(self, C, stride):
            super().__init__()
            self._ops = nn.ModuleList()
            for name, make in ops.items():
                op = make(C, stride)
                if "pool" in name:
                    op = nn.Sequential(op, nn.BatchNorm2d(C, affine=False))
                self._ops.append(op)

        def forward(self, x, weights):
            return sum(w * op(x) for w, op in zip(weights, self._ops))

    class Cell(nn.Module):
        def __init__(self, C_pp, C_p, C, reduction, reduction_prev, steps=4, multiplier=4):
            super().__init__()
            self.reduction = reduction
            self.preprocess0 = FactorizedReduce(C_pp, C, affine=False) if reduction_prev else ReLUConvBN(C_pp, C, 1, 1, 0, affine=False)
            self.preprocess1 = ReLUConvBN(C_p, C, 1, 1, 0, affine=False)
            self.steps, self.multiplier = steps, multiplier
            self._ops = nn.ModuleList(MixedOp(C, 2 if reduction and j < 2 else 1) for i in range(steps) for j in range(2 + i))

        def forward(self, s0, s1, weights):
            states = [self.preprocess0(s0), self.preprocess1(s1)]
            offset = 0
            for _ in range(self.steps):
                s = sum(self._ops[offset + j](h, weights[offset + j]) for j, h in enumerate(states))
                offset += len(states)
                states.append(s)
            return torch.cat(states[-self.multiplier :], dim=1)

    class Network(nn.Module):
        def __init__(self):
            super().__init__()
            C_curr = 3 * C
            self.stem = nn.Sequential(nn.Conv2d(3, C_curr, 3, padding=1, bias=False), nn.BatchNorm2d(C_curr))
            C_pp, C_p, C_curr = C_curr, C_curr, C
            self.cells = nn.ModuleList()
            reduction_prev = False
            for i in range(layers):
                reduction = i in (layers // 3, 2 * layers // 3)
                if reduction:
                    C_curr *= 2
                self.cells.append(Cell(C_pp, C_p, C_curr, reduction, reduction_prev))
                reduction_prev = reduction
                C_pp, C_p = C_p, 4 * C_curr
            self.global_pooling = nn.AdaptiveAvgPool2d(1)
            self.classifier = nn.Linear(C_p, classes)
            k = sum(2 + i for i in range(4))
            self.alphas_normal = (1e-3 * torch.randn(k, len(ops))).requires_grad_()
            self.alphas_reduce = (1e-3 * torch.randn(k, len(ops))).requires_grad_()

        def arch_parameters(self):
            return [self.alphas_normal, self.alphas_reduce]

        def new(self):
            m = Network()
            for x, y in zip(m.arch_parameters(), self.arch_parameters()):
                x.data.copy_(y.data)
            return m

        def forward(self, x):
            s0 = s1 = self.stem(x)
            for cell in self.cells:
                w = torch.softmax(self.alphas_reduce if cell.reduction else self.alphas_normal, dim=-1)
                s0, s1 = s1, cell(s0, s1, w)
            return self.classifier(self.global_pooling(s1).flatten(1))

    return Network()


class ReferenceArchitect:
    """architect.py of the original: first order by loss.backward(), second order with a model copy."""

    def __init__(self, model, w_opt):
        import torch

        self.model, self.w_opt = model, w_opt
        self.optimizer = torch.optim.Adam(model.arch_parameters(), lr=3e-4, betas=(0.5, 0.999), weight_decay=1e-3)

    def _loss(self, model, x, y):
        import torch.nn.functional as F

        return F.cross_entropy(model(x), y)

    def step(self, train, valid, eta, unrolled):
        import torch

        self.optimizer.zero_grad()
        if not unrolled:
            self._loss(self.model, *valid).backward()
        else:
            params = list(self.model.parameters())
            theta = torch.cat([p.data.flatten() for p in params])
            try:
                moment = torch.cat([self.w_opt.state[p]["momentum_buffer"].flatten() for p in params]) * 0.9
            except KeyError:
                moment = torch.zeros_like(theta)
            grads = torch.autograd.grad(self._loss(self.model, *train), params)
            dtheta = torch.cat([g.flatten() for g in grads]) + 3e-4 * theta
            unrolled_model = self.model.new()
            state = self.model.state_dict()
            new_theta, offset = theta - eta * (moment + dtheta), 0
            for (name, p) in self.model.named_parameters():
                state[name] = new_theta[offset : offset + p.numel()].view_as(p)
                offset += p.numel()
            unrolled_model.load_state_dict(state)
            self._loss(unrolled_model, *valid).backward()
            dalpha = [a.grad for a in unrolled_model.arch_parameters()]
            vector = [p.grad.data for p in unrolled_model.parameters()]
            R = 1e-2 / torch.cat([v.flatten() for v in vector]).norm()
            for p, v in zip(params, vector):
                p.data.add_(v, alpha=R)
            gp = torch.autograd.grad(self._loss(self.model, *train), self.model.arch_parameters())
            for p, v in zip(params, vector):
                p.data.sub_(v, alpha=2 * R)
            gn = torch.autograd.grad(self._loss(self.model, *train), self.model.arch_parameters())
            for p, v in zip(params, vector):
                p.data.add_(v, alpha=R)
            for a, g, x, y in zip(self.model.arch_parameters(), dalpha, gp, gn):
                a.grad = g - eta * (x - y) / (2 * R)
        self.optimizer.step()


# ---- one configuration in this process -----------------------------------------------------------
def original_code(path: Path):
    """model_search and architect of the original DARTS code at `path`, imported from there."""
    path = Path(path).resolve()
    if not (path / "model_search.py").is_file() or not (path / "architect.py").is_file():
        print(f"search_step.py: error: --original {path}: no model_search.py and architect.py there "
              "(point it at a copy of quark0/darts' cnn/ folder)", file=sys.stderr)  # fmt: skip
        raise SystemExit(2)
    sys.path.insert(0, str(path))
    import architect  # type: ignore[import-not-found]
    import model_search  # type: ignore[import-not-found]

    return model_search, architect


def batches(batch: int) -> tuple[tuple, tuple]:
    """The (train, valid) batches every timed step runs on: CIFAR-sized noise, seed 0; valid is train reversed."""
    import torch

    torch.manual_seed(0)
    x = torch.randn(batch, 3, 32, 32)
    y = torch.randint(0, 10, (batch,))
    return (x, y), (x.flip(0), y.flip(0))


def child(variant: str, batch: int, steps: int, kinds: list[str], original: Path | None = None) -> dict:
    import torch
    import torch.nn.functional as F

    train, valid = batches(batch)
    x, y = train
    if variant == "original":
        import types

        if original is None:
            raise SystemExit("search_step.py: error: the 'original' variant needs --original PATH")
        model_search, architect = original_code(original)
        criterion = torch.nn.CrossEntropyLoss()
        model = model_search.Network(16, 10, 8, criterion)
        params = list(model.parameters())
        w_opt = torch.optim.SGD(params, 0.025, momentum=0.9, weight_decay=3e-4)
        # train_search.py's defaults: momentum 0.9, weight decay 3e-4, arch lr 3e-4, arch weight decay 1e-3
        arch = architect.Architect(model, types.SimpleNamespace(momentum=0.9, weight_decay=3e-4,
                                                                arch_learning_rate=3e-4, arch_weight_decay=1e-3))  # fmt: skip

        def weight():  # train_search.py's train(): zero_grad, forward, loss, backward, clip 5, step
            w_opt.zero_grad()
            criterion(model(x), y).backward()
            torch.nn.utils.clip_grad_norm_(params, 5.0)
            w_opt.step()

        def arch1():
            arch.step(*train, *valid, 0.025, w_opt, unrolled=False)

        def arch2():
            arch.step(*train, *valid, 0.025, w_opt, unrolled=True)

        n_weights = sum(p.numel() for p in params)
    elif variant == "reference":
        model = reference_model()
        params = list(model.parameters())
        w_opt = torch.optim.SGD(params, 0.025, momentum=0.9, weight_decay=3e-4)
        arch = ReferenceArchitect(model, w_opt)

        def weight():
            w_opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            torch.nn.utils.clip_grad_norm_(params, 5.0)
            w_opt.step()

        def arch1():
            arch.step(train, valid, 0.025, unrolled=False)

        def arch2():
            arch.step(train, valid, 0.025, unrolled=True)

        n_weights = sum(p.numel() for p in params)
    else:
        from nasir.api import load
        from nasir.search.architect import Architect, weight_step
        from nasir.search.runner import keep_freed_memory
        from nasir.search.supernet import build_supernet

        if variant not in VARIANTS:
            raise SystemExit(f"search_step.py: error: unknown variant '{variant}' (one of {', '.join(VARIANTS)})")
        if variant in ("nasir", "nasir-lowmem", "nasir-pc4", "nasir-compile"):
            keep_freed_memory()
        unfused = ("nasir-nchw", "nasir-nhwc", "nasir-unfused")
        model = build_supernet(load(ROOT / "examples" / "darts.cell"), seed=0, channels_last=variant != "nasir-nchw",
                               low_memory=variant == "nasir-lowmem", fast_dilated=variant not in ("nasir-nchw", "nasir-nhwc"),
                               partial_channels=4 if variant == "nasir-pc4" else 1, fuse=variant not in unfused,
                               compile=variant == "nasir-compile")  # fmt: skip
        w_opt = torch.optim.SGD(model.weight_parameters(), 0.025, momentum=0.9, weight_decay=3e-4)
        a1, a2 = Architect(model, w_opt, order=1), Architect(model, w_opt, order=2)

        def weight():
            weight_step(model, w_opt, train)

        def arch1():
            a1.step(train, valid, xi=0.025)

        def arch2():
            a2.step(train, valid, xi=0.025)

        n_weights = sum(p.numel() for p in model.weight_parameters())
    model.train()
    out: dict = {"variant": variant, "batch": batch, "weights": n_weights, "threads": torch.get_num_threads()}
    fns = {"weight": weight, "arch1": arch1, "arch2": arch2}
    for kind in kinds:
        t = time.perf_counter()
        fns[kind]()  # warm-up: first-touch memory, oneDNN primitive creation (nasir-compile: compilation)
        out[kind + "_warmup"] = time.perf_counter() - t
        times = []
        for _ in range(steps):
            t = time.perf_counter()
            fns[kind]()
            times.append(time.perf_counter() - t)
        out[kind] = statistics.median(times)
        out[kind + "_all"] = [round(t, 3) for t in times]
        if kind == "weight":
            out["rss_weight_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    out["rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    out["load"] = os.getloadavg()[0]
    return out


def stacking(batch: int = 32, edges: int = 4, C: int = 16, size: int = 32, reps: int = 7) -> list[tuple]:
    """Issue 15's "stack the depthwise convolutions of all edges leaving one state" measured on its own.

    The first half of a sep/dil conv candidate (depthwise k x k, pointwise 1x1, non-affine BN) of `edges`
    edges reading one state (4 for an input state of a DARTS normal cell), forward and backward: run edge by
    edge as the fused supernet does, against stacked (the state's ReLU repeated `edges` times, one depthwise
    conv with edges * C groups, one 1x1 conv with `edges` groups, one BN over the stacked channels, which
    gives the same values: non-affine BN statistics are per channel). Each part alone too. CPU time of this
    process (other processes on the cores do not count), variants interleaved, median of `reps` after a
    warm-up; returns (what, k, dilation, per-edge ms, stacked ms).
    """
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(0)
    cl = torch.channels_last
    x = torch.randn(batch, C, size, size, generator=g).contiguous(memory_format=cl).requires_grad_()
    xs = torch.randn(batch, edges * C, size, size, generator=g).contiguous(memory_format=cl).requires_grad_()
    pw = [torch.randn(C, C, 1, 1, generator=g).requires_grad_() for _ in range(edges)]
    rows = []
    for k, d in ((3, 1), (5, 1), (3, 2), (5, 2)):
        p = d * (k - 1) // 2
        dw = [torch.randn(C, 1, k, k, generator=g).requires_grad_() for _ in range(edges)]

        def per_edge(dw=dw, p=p, d=d):
            r = F.relu(x)
            return sum(F.batch_norm(F.conv2d(F.conv2d(r, w, None, 1, p, d, C), v), None, None, training=True).sum()
                       for w, v in zip(dw, pw))  # fmt: skip

        def stacked(dw=dw, p=p, d=d):
            r = F.relu(x).repeat(1, edges, 1, 1)
            h = F.conv2d(F.conv2d(r, torch.cat(dw), None, 1, p, d, edges * C), torch.cat(pw), None, 1, 0, 1, edges)
            return F.batch_norm(h, None, None, training=True).sum()

        fns = {"dw+pw+BN": (per_edge, stacked),
               "dw": (lambda dw=dw, p=p, d=d: sum(F.conv2d(x, w, None, 1, p, d, C).sum() for w in dw),
                      lambda dw=dw, p=p, d=d: F.conv2d(x.repeat(1, edges, 1, 1), torch.cat(dw), None, 1, p, d, edges * C).sum())}  # fmt: skip
        if (k, d) == (3, 1):
            fns["pw"] = (lambda: sum(F.conv2d(x, v).sum() for v in pw), lambda: F.conv2d(xs, torch.cat(pw), None, 1, 0, 1, edges).sum())
            fns["BN"] = (lambda: sum(F.batch_norm(x * 1.0, None, None, training=True).sum() for _ in pw),
                         lambda: F.batch_norm(xs * 1.0, None, None, training=True).sum())  # fmt: skip
        for what, pair in fns.items():
            ts: list[list[float]] = [[], []]
            for i in range(reps + 1):
                for j, f in enumerate(pair):
                    t = time.process_time()
                    f().backward()
                    if i:
                        ts[j].append(time.process_time() - t)
            rows.append((what, k, d, 1e3 * statistics.median(ts[0]), 1e3 * statistics.median(ts[1])))
    return rows


def dwgrad(batch: int = 32, reps: int = 21, threads: tuple[int, ...] = (2, 1)) -> list[tuple]:
    """The depthwise gradients of a DARTS search step that oneDNN runs slowly (nasir/search/supernet.py,
    `dw_weight_grad_route`), per (kernel, dilation, stride) at the DARTS sizes (stride 1: 32 x 32 C = 16,
    16 x 16 C = 32, 8 x 8 C = 64; stride 2, the reduction cells: 32 x 32 C = 32, 16 x 16 C = 64),
    channels_last. Weight gradient: what the fused supernet ran before (oneDNN's own, as a stock conv; the
    per-tap sums for dilated stride 2) against the route it takes now; input gradient: oneDNN's backward-data
    against the fused supernet's. Wall time, all interleaved, median of `reps` after a warm-up, at each thread
    count; returns (size, C, k, d, s, route, threads, before ms, route ms, relative difference to oneDNN's,
    oneDNN's input gradient ms, the fused one's ms). Freed memory is kept in the process, as `nasir search`
    does: otherwise every copy the routes make faults its pages in afresh, a cost that varies with glibc's
    heap history (0.14 to 0.75 ms for one 2 MiB copy here).
    """
    import torch

    from nasir.search.runner import keep_freed_memory
    from nasir.search.supernet import (
        _dw_weight_grad,
        _fast_input_grad,
        _fast_weight_grad,
        _native_input_grad,
        _native_weight_grad,
        dw_weight_grad_route,
    )

    keep_freed_memory()

    g = torch.Generator().manual_seed(0)
    cl = torch.channels_last
    rows = []
    for s, size, C in ((1, 32, 16), (1, 16, 32), (1, 8, 64), (2, 32, 32), (2, 16, 64)):
        x = torch.randn(batch, C, size, size, generator=g).contiguous(memory_format=cl)
        gy = torch.randn(batch, C, size // s, size // s, generator=g).contiguous(memory_format=cl)
        for k, d in ((5, 1), (3, 2), (5, 2)):
            p = d * (k - 1) // 2
            route = dw_weight_grad_route(k, d, p, (size, size), s)
            a, b = _native_weight_grad(x, gy, k, p, d, s), _fast_weight_grad(x, gy, k, p, d, s)
            diff = float((a - b).norm() / a.norm())
            w = torch.randn(C, 1, k, k, generator=g)
            before = (_native_weight_grad, (x, gy, k, p, d, s)) if s == 1 or d == 1 else (_dw_weight_grad, (x, gy, k, s, p, d))
            calls = (before, (_fast_weight_grad, (x, gy, k, p, d, s)), (_native_input_grad, (gy, x, w, s, p, d)),
                     (_fast_input_grad, (gy, x, w, s, p, d)))  # fmt: skip
            for n in threads:
                torch.set_num_threads(n)
                ts: list[list[float]] = [[] for _ in calls]
                for i in range(reps + 1):
                    for j, (f, args) in enumerate(calls):
                        t = time.perf_counter()
                        f(*args)
                        if i:
                            ts[j].append(time.perf_counter() - t)
                rows.append((size, C, k, d, s, route, n, *(1e3 * statistics.median(t) for t in ts[:2]), diff,
                             *(1e3 * statistics.median(t) for t in ts[2:])))  # fmt: skip
    return rows


def passes(batch: int = 32, steps: int = 3) -> tuple[list[str], list[list[float]]]:
    """nasir's second-order architecture step (the default supernet, as `nasir search` runs it) split into its
    passes (nasir/search/architect.py): the forward and the backward of the unrolled step (weights only),
    of L_val at w' (alphas and weights), of w+ and w- (alphas only), and the rest (saving and restoring
    weights and BN statistics, w', w+-, the norm, the Adam step). Wall time of `steps` steps after a warm-up;
    returns (names, one list of seconds per step)."""
    import torch

    from nasir.api import load
    from nasir.search.architect import Architect, weight_step
    from nasir.search.runner import keep_freed_memory
    from nasir.search.supernet import build_supernet

    keep_freed_memory()
    times: list[float] = []

    class Timed(Architect):
        def _loss(self, batch, *args, **kwargs):
            t = time.perf_counter()
            out = super()._loss(batch, *args, **kwargs)
            times.append(time.perf_counter() - t)
            return out

        def _grad(self, loss, params):
            t = time.perf_counter()
            out = super()._grad(loss, params)
            times.append(time.perf_counter() - t)
            return out

    train, valid = batches(batch)  # the batches of the timed variants' arch2
    model = build_supernet(load(ROOT / "examples" / "darts.cell"), seed=0)
    model.train()
    w_opt = torch.optim.SGD(model.weight_parameters(), 0.025, momentum=0.9, weight_decay=3e-4)
    arch = Timed(model, w_opt, order=2)
    weight_step(model, w_opt, train)
    names = ["unrolled fwd", "unrolled bwd (w)", "w' fwd", "w' bwd (alpha, w)", "w+ fwd", "w+ bwd (alpha)",
             "w- fwd", "w- bwd (alpha)", "rest", "step"]  # fmt: skip
    rows = []
    for i in range(steps + 1):
        times.clear()
        t = time.perf_counter()
        arch.step(train, valid, xi=0.025)
        total = time.perf_counter() - t
        if i and len(times) == 8:
            rows.append([*times, total - sum(times), total])
    return names, rows


def _fmt(v: float | None, unit: str = "s") -> str:
    return "-" if v is None else f"{v:.2f} {unit}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batches", type=int, nargs="+", default=[32, 64])
    p.add_argument("--steps", type=int, default=3, help="timed steps per kind (after one warm-up; the median is reported)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--variants", help="comma-separated, each `name` or `name:kind+kind` "
                   f"(default with --original: {GOALS}; without: every variant but 'original')")
    p.add_argument("--kinds", default=",".join(KINDS), help="the kinds of a variant that names none")
    p.add_argument("--arch-batches", type=int, nargs="+",
                   help="run architecture steps only at these batch sizes (default: every batch; with --original "
                        "and no --variants: the first batch only, as the goals ask for the weight step alone at 64)")
    p.add_argument("--original", type=Path, help="a copy of the original DARTS search code (quark0/darts cnn/) to time beside nasir")
    p.add_argument("--json", type=Path, help="also write the rows to this file")
    p.add_argument("--stacking", action="store_true",
                   help="time stacked (grouped) convolutions across the edges leaving a state against edge by edge, and exit")  # fmt: skip
    p.add_argument("--dwgrad", action="store_true",
                   help="time the fused supernet's depthwise gradients against the stock ones, at 2 and 1 threads, and exit")
    p.add_argument("--passes", action="store_true",
                   help="time nasir's second-order step pass by pass (forward and backward of each of its four passes), and exit")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    kinds = a.kinds.split(",")
    if a.child:
        import torch

        torch.set_num_threads(a.threads)
        print(json.dumps(child(a.child, a.batch, a.steps, kinds, a.original)))
        return 0
    if a.stacking:
        import torch

        torch.set_num_threads(a.threads)
        print(f"4 edges leaving one state, C = 16, batch {a.batches[0]}, 32 x 32, channels_last, {a.threads} thread(s), CPU time")
        print(f"{'part':<10}{'kernel':>8}{'per edge':>11}{'stacked':>10}{'ratio':>8}")
        for what, k, d, t0, t1 in stacking(batch=a.batches[0]):
            print(f"{what:<10}{f'{k}x{k} d{d}':>8}{t0:>8.1f} ms{t1:>7.1f} ms{t1 / t0:>7.2f}x")
        return 0
    if a.dwgrad:
        print(f"depthwise gradients, batch {a.batches[0]}, channels_last, wall time (median, interleaved), "
              f"load {os.getloadavg()[0]:.1f}; 'before': oneDNN's at stride 1 and 5x5, the per-tap sums for dilated stride 2")
        print(f"{'':<34}{'weight gradient':-^37}{'input gradient':-^27}")
        print(f"{'input':<10}{'kernel':>8}{'route':>8}{'threads':>8}{'before':>10}{'route':>10}{'ratio':>7}{'rel. diff':>10}"
              f"{'oneDNN':>10}{'fused':>10}{'ratio':>7}")
        for size, C, k, d, s, route, n, t0, t1, diff, i0, i1 in dwgrad(batch=a.batches[0]):
            print(f"{f'{size}x{size}x{C}':<10}{f'{k}x{k}d{d}s{s}':>8}{route:>8}{n:>8}{t0:>7.2f} ms{t1:>7.2f} ms{t1 / t0:>6.2f}x"
                  f"{diff:>10.1e}{i0:>7.2f} ms{i1:>7.2f} ms{i1 / i0:>6.2f}x")
        print(f"load {os.getloadavg()[0]:.1f}")
        return 0
    if a.passes:
        import torch

        torch.set_num_threads(a.threads)
        names, rows = passes(batch=a.batches[0], steps=a.steps)
        if not rows:
            raise SystemExit("search_step.py: error: the second-order step no longer calls Architect._loss and _grad "
                             "four times each; passes() needs updating")  # fmt: skip
        print(f"nasir's second-order step by pass, batch {a.batches[0]}, {a.threads} thread(s), wall time, "
              f"median of {len(rows)} steps after a warm-up")
        for j, name in enumerate(names):
            print(f"{name:<20}{statistics.median(r[j] for r in rows):>8.3f} s")
        print(f"load {os.getloadavg()[0]:.1f}")
        return 0
    if a.original is not None:
        original_code(a.original)  # a wrong path fails here, before any child runs
    goals = a.variants is None and a.original is not None
    variants = a.variants or (GOALS if goals else ",".join(v for v in VARIANTS if v != "original"))
    arch_batches = a.arch_batches or (a.batches[:1] if goals else a.batches)
    plan = []
    for item in variants.split(","):
        name, _, own = item.partition(":")
        if name not in VARIANTS:
            p.error(f"unknown variant '{name}' (one of {', '.join(VARIANTS)})")
        if name == "original" and a.original is None:
            p.error("the 'original' variant needs --original PATH")
        ks = own.split("+") if own else kinds
        if set(ks) - set(KINDS):
            p.error(f"unknown step kind in '{item}' (kinds: {', '.join(KINDS)})")
        plan.append((name, ks))
    rows = []
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads)}
    print(f"DARTS supernet, C = 16, 8 layers, 32 x 32; {a.threads} threads; median of {a.steps} steps after a warm-up")
    print(f"{'variant':<14}{'batch':>6}{'weight':>10}{'arch1':>10}{'arch2':>10}{'arch2/1':>9}{'peak RSS (weight)':>19}{'(all)':>10}{'load':>6}")
    for batch in a.batches:
        for v, ks in plan:
            ks = ks if batch in arch_batches else [k for k in ks if k == "weight"]
            if not ks:
                continue
            cmd = [sys.executable, __file__, "--child", v, "--batch", str(batch), "--steps", str(a.steps),
                   "--threads", str(a.threads), "--kinds", ",".join(ks)]  # fmt: skip
            if a.original is not None:
                cmd += ["--original", str(a.original.resolve())]
            res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
            if res.returncode != 0:
                print(f"{v:<14}{batch:>6}  failed: {res.stderr.strip().splitlines()[-1] if res.stderr else res.returncode}")
                continue
            r = json.loads(res.stdout.strip().splitlines()[-1])
            rows.append(r)
            ratio = r["arch2"] / r["arch1"] if "arch1" in r and "arch2" in r else None
            print(f"{v:<14}{batch:>6}{_fmt(r.get('weight')):>10}{_fmt(r.get('arch1')):>10}{_fmt(r.get('arch2')):>10}"
                  f"{'-' if ratio is None else f'{ratio:.2f}x':>9}{_fmt(r.get('rss_weight_gib'), 'GiB'):>19}"
                  f"{_fmt(r['rss_gib'], 'GiB'):>10}{r['load']:>6.1f}", flush=True)  # fmt: skip
            if v == "nasir-compile":
                print(f"{'':<14}{'':>6}  compile (warm-up step) " + ", ".join(f"{k} {r[k + '_warmup']:.0f} s" for k in ks), flush=True)
    base = "original" if any(r["variant"] == "original" for r in rows) else "reference"
    print(f"\nratios against the {base} of the same batch (and against docs/performance.md's original figures):")
    for r in rows:
        ref = next((x for x in rows if x["variant"] == base and x["batch"] == r["batch"]), None)
        orig = ORIGINAL.get(r["batch"], {})
        parts = []
        for k in ("weight", "arch1", "arch2"):
            if k in r:
                vs = f"{r[k] / ref[k]:.2f}x" if ref and k in ref else "-"
                vo = f"{r[k] / orig[k]:.2f}x" if k in orig else "-"
                parts.append(f"{k} {vs} ({vo})")
        mem = f"{r['rss_weight_gib'] / ref['rss_weight_gib']:.2f}x" if ref and "rss_weight_gib" in r and "rss_weight_gib" in ref else "-"
        memo = f"{r['rss_weight_gib'] / orig['rss_gib']:.2f}x" if "rss_gib" in orig and "rss_weight_gib" in r else "-"
        print(f"  {r['variant']:<14} batch {r['batch']:>3}: " + ", ".join(parts) + f", peak RSS {mem} ({memo})")
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
