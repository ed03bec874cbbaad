"""The in-process PyTorch target: a `Plan` (elaborated macro) plus IR cells -> an nn.Module.

One builder serves both the derived (evaluation) network and the search supernet: every edge's
module comes from `make_op(edge, C, stride)`, so the search runtime swaps in mixed ops without a
second network class. Module and parameter names follow the DARTS reference implementation
(`stem`, `cells.i.preprocess0`, `cells.i._ops.k`, `classifier`, `auxiliary_head`), so that a
reference checkpoint's state_dict maps onto a nasir network.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from nasir import ir, ops
from nasir.diagnostics import error_at
from nasir.layers import LAYERS
from nasir.macro import CellPlan, LayerPlan, Plan, ResidualPlan, history_window
from nasir.targets import blocks

MakeOp = Callable[[ir.Edge, int, int], nn.Module]


def fixed_op_factory(affine: bool = True) -> MakeOp:
    def make(edge: ir.Edge, C: int, stride: int) -> nn.Module:
        if edge.op is None:
            raise error_at(edge.span, f"edge {edge.src} -> {edge.dst} is searchable; derive an architecture first",
                           "or build the supernet with nasir.search")  # fmt: skip
        return ops.REGISTRY[edge.op].build(C, stride, affine)

    return make


class CellModule(nn.Module):
    """One stacked copy of an IR cell: preprocessing, one module per edge, node sums, output."""

    def __init__(self, cell: ir.Cell, C_pp: int, C_p: int, C: int, reduction_prev: bool, make_op: MakeOp, affine: bool,
                 in_channels: tuple[int, ...] = (), in_reductions: tuple[int, ...] = ()):  # fmt: skip
        super().__init__()
        self.reduction = cell.reduction
        self.n_inputs = len(cell.inputs)
        self.two_inputs = self.n_inputs == 2
        if self.n_inputs > 2:
            # docs/network.md "Cells with more than two inputs": input j (oldest first) is brought to
            # C channels at the last input's resolution, as DARTS brings s0 (model.py, Cell.__init__).
            if len(in_channels) != self.n_inputs or len(in_reductions) != self.n_inputs:
                raise error_at(cell.span, f"cell '{cell.name}' has {self.n_inputs} inputs; the plan feeds {len(in_channels)}")
            for j, (c_in, r) in enumerate(zip(in_channels, in_reductions)):
                self.add_module(f"preprocess{j}", input_preprocess(c_in, C, r, affine))
        elif self.two_inputs:
            self.preprocess0 = (blocks.FactorizedReduce(C_pp, C, affine) if reduction_prev
                                else blocks.ReLUConvBN(C_pp, C, 1, 1, 0, affine))  # fmt: skip
            self.preprocess1 = blocks.ReLUConvBN(C_p, C, 1, 1, 0, affine)
        elif C_p != C:
            # A one-input reduction cell that widens (a chain stage, docs/network.md "Chain spaces"):
            # a 1 x 1 projection C_p -> C as DARTS' preprocess1, then the cell's ops at C.
            self.preprocess1 = blocks.ReLUConvBN(C_p, C, 1, 1, 0, affine)
        self._project = not self.two_inputs and C_p != C
        index = {s: i for i, s in enumerate(cell.states)}
        self._ops = nn.ModuleList(make_op(e, C, cell.stride(e)) for e in cell.edges)
        # The schedule: for each intermediate node, the (edge index, source state index) it sums.
        self._schedule = [
            [(k, index[e.src]) for k, e in enumerate(cell.edges) if e.dst == n] for n in cell.node_names
        ]
        self._identity = [isinstance(op, nn.Identity) for op in self._ops]
        assert cell.output is not None
        self._concat = [index[n] for n in cell.output.nodes]
        self.multiplier = len(self._concat) if cell.output.kind == "concat" else 1
        self.drop_prob = 0.0

    def input_states(self, s0: torch.Tensor, s1: torch.Tensor | None = None, earlier: Sequence[torch.Tensor] = ()) -> list[torch.Tensor]:
        """The cell's input states after preprocessing (two inputs; or one, projected if it widens; or
        more: `earlier` are the states before s0, oldest first)."""
        if self.n_inputs > 2:
            return [getattr(self, f"preprocess{j}")(x) for j, x in enumerate((*earlier, s0, s1))]
        if self.two_inputs:
            return [self.preprocess0(s0), self.preprocess1(s1)]
        return [self.preprocess1(s0) if self._project else s0]

    def forward(self, s0: torch.Tensor, s1: torch.Tensor | None = None, weights=None,
                earlier: Sequence[torch.Tensor] = ()) -> torch.Tensor:  # fmt: skip
        states = self.input_states(s0, s1, earlier)
        for schedule in self._schedule:
            total = None
            for k, src in schedule:
                op = self._ops[k]
                h = op(states[src]) if weights is None else op(states[src], weights[k])
                if self.training and self.drop_prob > 0.0 and not self._identity[k]:
                    h = blocks.drop_path(h, self.drop_prob, True)
                total = h if total is None else total + h
            if total is None:  # a node without inputs contributes nothing (it cannot pass the verifier)
                total = torch.zeros_like(states[-1])
            states.append(total)
        if len(self._concat) == 1:
            return states[self._concat[0]]
        return torch.cat([states[i] for i in self._concat], dim=1)


def input_preprocess(C_in: int, C: int, reductions: int, affine: bool = True) -> nn.Module:
    """One input of a cell with more than two inputs, brought to C channels at the cell's resolution
    (docs/network.md "Cells with more than two inputs"): a 1 x 1 ReLUConvBN as DARTS's preprocess0
    when no reduction lies between, a FactorizedReduce per reduction otherwise (the first C_in -> C,
    the rest C -> C)."""
    if reductions == 0:
        return blocks.ReLUConvBN(C_in, C, 1, 1, 0, affine)
    if reductions == 1:
        return blocks.FactorizedReduce(C_in, C, affine)
    return nn.Sequential(*(blocks.FactorizedReduce(C_in if i == 0 else C, C, affine) for i in range(reductions)))


def cell_call(m: nn.Module, history: list[torch.Tensor], weights=None) -> torch.Tensor:
    """Run block `m` on the states it reads from `history` (stem outputs, then every block's output):
    a cell with n inputs the last n (nasir.macro.history_window), anything else the last one."""
    if not isinstance(m, CellModule):
        return m(history[-1])
    if m.n_inputs == 1:
        return m(history[-1], None, weights)
    xs = [history[j] for j in history_window(len(history), m.n_inputs)]
    return m(xs[-2], xs[-1], weights, xs[:-2])


def _layers(layers: tuple[LayerPlan, ...]) -> list[nn.Module]:
    """Each layer's module from the layer registry (nasir/layers.py): a straight walk over the plan."""
    return [LAYERS[x.name].build(x) for x in layers]


class Network(nn.Module):
    """A stacked network from a `Plan`. forward(x) -> logits, or (logits, aux_logits) in training with an auxiliary head."""

    def __init__(self, spec: ir.Spec, plan: Plan, make_op: MakeOp | None = None, affine: bool = True):
        super().__init__()
        make_op = make_op or fixed_op_factory(affine)
        self.plan = plan
        if len(plan.stems) == 2:
            self.stem0 = nn.Sequential(*_layers(plan.stems[0]))
            self.stem1 = nn.Sequential(*_layers(plan.stems[1]))
        else:
            self.stem = nn.Sequential(*_layers(plan.stems[0] if plan.stems else ()))
        self.cells = nn.ModuleList()
        self.cell_kinds: list[str] = []
        self.auxiliary_head: nn.Module | None = None
        for i, b in enumerate(plan.body):
            if isinstance(b, ResidualPlan):
                self.cells.append(blocks.ResidualBlock(b.C_in, b.C_out))
                self.cell_kinds.append("")
            else:
                assert isinstance(b, CellPlan)
                cell = spec.cell(b.cell)
                if cell is None:
                    raise error_at(None, f"unknown cell '{b.cell}'")
                if len(cell.inputs) == 1 and b.C_p != b.C and not cell.reduction:
                    raise error_at(cell.span, f"inconsistent channels: cell '{cell.name}' expects {b.C} channels, gets {b.C_p}")
                self.cells.append(CellModule(cell, b.C_pp, b.C_p, b.C, b.reduction_prev, make_op, affine,
                                             b.in_channels, b.in_reductions))  # fmt: skip
                self.cell_kinds.append(cell.name)
            if i == plan.aux_after and plan.aux_style is not None:
                head_cls = blocks.AuxiliaryHeadCIFAR if plan.aux_style == "cifar" else blocks.AuxiliaryHeadImageNet
                self.auxiliary_head = head_cls(b.C_out, plan.classes)
        parts: dict[str, list[nn.Module]] = {"pre": [], "post": [], "classifier": [nn.Identity()]}
        for x, m in zip(plan.head, _layers(plan.head)):
            parts[x.slot].append(m)
        pre, post = parts["pre"], parts["post"]
        self.classifier: nn.Module = parts["classifier"][-1]
        self.head_pre = nn.Sequential(*pre)
        self.head_post = nn.Sequential(*post)
        self.out_channels = plan.out_channels

    @property
    def drop_path_prob(self) -> float:
        cells = [m for m in self.cells if isinstance(m, CellModule)]
        return cells[0].drop_prob if cells else 0.0

    @drop_path_prob.setter
    def drop_path_prob(self, p: float) -> None:
        for m in self.cells:
            if isinstance(m, CellModule):
                m.drop_prob = p

    def stem_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if hasattr(self, "stem0"):
            s0 = self.stem0(x)
            return s0, self.stem1(s0)
        s = self.stem(x)
        return s, s

    def features(self, x: torch.Tensor, weights: dict | None = None) -> tuple[torch.Tensor, torch.Tensor | None, list[torch.Tensor]]:
        """Run stems and cells; returns the last state, the auxiliary input (or None) and every cell output."""
        history = list(self.stem_forward(x))
        aux_in = None
        for i, (kind, m) in enumerate(zip(self.cell_kinds, self.cells)):
            w = weights.get(kind) if weights is not None and isinstance(m, CellModule) else None
            history.append(cell_call(m, history, w))
            if i == self.plan.aux_after:
                aux_in = history[-1]
        return history[-1], aux_in, history[2:]

    def forward(self, x: torch.Tensor, weights: dict | None = None):
        s, aux_in, _ = self.features(x, weights)
        logits = self.classifier(self.head_post(torch.flatten(self.head_pre(s), 1)))
        if self.training and self.auxiliary_head is not None and aux_in is not None:
            return logits, self.auxiliary_head(aux_in)
        return logits


def build(spec: ir.Spec, plan: Plan | None = None, *, network: str | None = None, overrides=None,
          seed: int | None = None) -> Network:  # fmt: skip
    """`nasir.build(spec)`: the derived network as an nn.Module (seeded initialisation if `seed`)."""
    from nasir.macro import plan as make_plan

    plan = plan or make_plan(spec, network, overrides)
    if seed is not None:
        torch.manual_seed(seed)
    return Network(spec, plan)
