"""The standalone PyTorch target: a derived spec and its `Plan` -> the text of a Python module needing only torch.

The module is what a person would write by hand for the architecture: the building blocks it uses
(copied as source from `nasir.targets.blocks`, so each has one definition), one `Cell_<name>` class per
cell kind with straight-line `forward` code, and a `Network` class with the concrete channel counts of
the Plan. Module names and construction order are those of `nasir.targets.network.Network`, so the
two have the same state-dict keys (weights load into either) and, under the same `torch.manual_seed`,
the same initial weights.
"""

from __future__ import annotations

import inspect
import keyword
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from nasir import ir, ops
from nasir.diagnostics import error_at
from nasir.layers import LAYERS
from nasir.macro import CellPlan, LayerPlan, Plan, ResidualPlan, history_window
from nasir.targets import blocks


@attrs.frozen
class OpCode:
    """How the generated module constructs one op: an expression in `C`, and the blocks it needs."""

    expr: str
    needs: tuple[str, ...] = ()
    identity: bool = False  # exempt from drop-path (docs/ops.md, "A DARTS cell")


def _pool(stride: int, p: Mapping[str, Any]) -> OpCode:
    k = p.get("kernel", 3)
    if p.get("kind", "max") == "max":
        return OpCode(f"nn.MaxPool2d({k}, stride={stride}, padding={k // 2})")
    return OpCode(f"nn.AvgPool2d({k}, stride={stride}, padding={k // 2}, count_include_pad=False)")


def _skip(stride: int, p: Mapping[str, Any]) -> OpCode:
    return OpCode("Identity()", ("Identity",), identity=True) if stride == 1 else OpCode("FactorizedReduce(C, C)", ("FactorizedReduce",))


def _sep(stride: int, p: Mapping[str, Any]) -> OpCode:
    k = p.get("kernel", 3)
    return OpCode(f"SepConv(C, C, {k}, {stride}, {k // 2})", ("SepConv",))


def _dil(stride: int, p: Mapping[str, Any]) -> OpCode:
    k, d = p.get("kernel", 3), p.get("dilation", 2)
    return OpCode(f"DilConv(C, C, {k}, {stride}, {d * (k - 1) // 2}, {d})", ("DilConv",))


def _relu_conv_bn(stride: int, p: Mapping[str, Any]) -> OpCode:
    k = p.get("kernel", 3)
    return OpCode(f"ReLUConvBN(C, C, {k}, {stride}, {k // 2})", ("ReLUConvBN",))


def _dual_sep(stride: int, p: Mapping[str, Any]) -> OpCode:
    k = p.get("kernel", 3)
    return OpCode(f"DualSepConv(C, C, {k}, {stride}, {k // 2}, 1)", ("DualSepConv",))


def _mbconv(stride: int, p: Mapping[str, Any]) -> OpCode:
    k, e, se, act = p.get("kernel", 3), p.get("expand", 6), p.get("se", 0.0), p.get("act", "relu6")
    return OpCode(f"MBConv(C, C, {k}, {stride}, {e}, {float(se)!r}, {act!r})", ("MBConv",))


# Registry builder name -> emitter (stride, op params) -> OpCode. The expressions spell out what the
# builders of nasir.targets.blocks construct; tests/targets/test_torch_source.py checks every op of the
# registry at stride 1 and 2 against `OpDef.build`, so a drift between the two fails there.
EMITTERS: Mapping[str, Callable[[int, Mapping[str, Any]], OpCode]] = {
    "zero": lambda stride, p: OpCode(f"Zero({stride})", ("Zero",)),
    "skip_connect": _skip,
    "pool": _pool,
    "sep_conv": _sep,
    "dil_conv": _dil,
    "conv_7x1_1x7": lambda stride, p: OpCode(f"conv_7x1_1x7(C, {stride}, True)", ("conv_7x1_1x7",)),
    "relu_conv_bn": _relu_conv_bn,
    "conv_3x1_1x3": lambda stride, p: OpCode(f"conv_3x1_1x3(C, {stride}, True)", ("conv_3x1_1x3",)),
    "dual_sep_conv": _dual_sep,
    "mbconv": _mbconv,
}

# Blocks that may be copied into a generated module, in an order where each follows what it uses.
BLOCKS = (
    "drop_path", "Identity", "Zero", "ReLUConvBN", "DilConv", "SepConv", "FactorizedReduce", "conv_7x1_1x7",
    "conv_3x1_1x3", "DualSepConv", "MBConv", "AuxiliaryHeadCIFAR", "AuxiliaryHeadImageNet", "ResidualBlock",
)  # fmt: skip
_DEPENDS = {"ResidualBlock": ("ReLUConvBN",), "DualSepConv": ("DilConv",), "input_preprocess": ("ReLUConvBN", "FactorizedReduce")}

# A user's op (docs/ops.md, "Your own ops") is not copied: the generated module imports the op file by
# its absolute path when it builds the network (which needs that file, and nasir for its decorator).
USER_OP_HELPER = '''\
def user_op(path: str, builder: str):
    """The builder `builder` of the op file `path` (imported once; importing it runs that file)."""
    import importlib.util
    import re
    import sys

    name = "nasir_generated_ops_" + re.sub(r"[^A-Za-z0-9_]", "_", path)
    module = sys.modules.get(name)
    if module is None:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return getattr(module, builder)'''


# The inputs of a cell with more than two inputs (docs/network.md "Cells with more than two inputs"),
# as nasir.targets.network.input_preprocess builds them (tests/test_multi_input.py compares the two).
PREPROCESS_HELPER = '''\
def input_preprocess(C_in: int, C: int, reductions: int) -> nn.Module:
    """A cell input brought to C channels at the cell's resolution: a 1 x 1 ReLUConvBN when no
    reduction lies between the input and the cell, else one FactorizedReduce per reduction."""
    if reductions == 0:
        return ReLUConvBN(C_in, C, 1, 1, 0)
    if reductions == 1:
        return FactorizedReduce(C_in, C)
    return nn.Sequential(*(FactorizedReduce(C_in if i == 0 else C, C) for i in range(reductions)))'''


def _user_op(d: ops.OpDef, stride: int) -> OpCode:
    assert d.factory is not None
    kwargs = "".join(f", {k}={v!r}" for k, v in d.params.items())
    return OpCode(f"user_op({d.origin!r}, {d.factory.__name__!r})(C, {stride}, True{kwargs})", ("user_op",))


def op_code(name: str, stride: int) -> OpCode:
    """The constructor expression of registry op `name` at `stride` (channels `C`)."""
    d = ops.REGISTRY[name]
    if d.signature:  # a family's bare name: its defaults
        d = d.bind({})
    if d.factory is not None:
        return _user_op(d, stride)
    return EMITTERS[d.builder](stride, d.params)


def block_source(names: set[str]) -> str:
    """The source of the named blocks (and what they use), taken from nasir.targets.blocks."""
    wanted = set(names)
    for n in list(wanted):
        wanted.update(_DEPENDS.get(n, ()))
    parts = [inspect.getsource(getattr(blocks, n)).rstrip() for n in BLOCKS if n in wanted]
    if "user_op" in wanted:
        parts.append(USER_OP_HELPER)
    if "input_preprocess" in wanted:
        parts.append(PREPROCESS_HELPER)
    return "\n\n\n".join(parts)


def class_name(cell: ir.Cell) -> str:
    return f"Cell_{cell.name}"


_RESERVED = {"self", "torch", "nn", "s0", "s1", "C", "C_p", "C_pp", "x"}


def _state_names(cell: ir.Cell) -> dict[str, str]:
    """IR state -> Python variable: inputs are s0 (, s1); nodes keep their names where they are safe."""
    names = {n: f"s{i}" for i, n in enumerate(cell.input_names)}
    used = set(names.values())
    for i, n in enumerate(cell.node_names):
        safe = n.isidentifier() and not keyword.iskeyword(n) and n not in _RESERVED and not n.startswith("_")
        var = n if safe and n not in used else f"node{i}"
        while var in used:
            var += "_"
        names[n] = var
        used.add(var)
    return names


def _equation(cell: ir.Cell, node: str) -> str:
    return f"{node} = " + " + ".join(f"{e.op}({e.src})" for e in cell.in_edges(node))


def cell_class(cell: ir.Cell) -> tuple[str, set[str]]:
    """The `Cell_<name>` class of a derived cell, and the blocks it needs."""
    if cell.is_search_space:
        raise error_at(cell.span, f"cell '{cell.name}' is a search space; derive an architecture first")
    two = len(cell.inputs) == 2
    many = len(cell.inputs) > 2  # docs/network.md "Cells with more than two inputs"
    var = _state_names(cell)
    needs: set[str] = set()
    doc = [f'    """Cell \'{cell.name}\'' + (" (reduction: the ops that read the inputs have stride 2)" if cell.reduction else "") + "."]
    doc.append("")
    doc += [f"    {_equation(cell, n)}" for n in cell.node_names]
    assert cell.output is not None
    out = cell.output
    doc.append(f"    output {'concat(' + ', '.join(out.nodes) + ')' if out.kind == 'concat' else out.nodes[0]}")
    if two:
        doc.append(f"    In forward, s0 and s1 are {cell.input_names[0]} and {cell.input_names[1]} after preprocessing.")
    elif many:
        ins = [var[n] for n in cell.input_names]
        doc.append(f"    In forward, {', '.join(ins[:-1])} and {ins[-1]} are {', '.join(cell.input_names[:-1])} and "
                   f"{cell.input_names[-1]} after preprocessing.")
    else:
        doc.append(f"    In forward, s0 is the cell input {cell.input_names[0]}.")
    doc.append('    """')
    lines = [f"class {class_name(cell)}(nn.Module):", *doc, ""]
    if many:
        lines.append("    def __init__(self, C_in: tuple[int, ...], reductions: tuple[int, ...], C: int, drop_prob: float = 0.0) -> None:")
    else:
        lines.append("    def __init__(self, C_pp: int, C_p: int, C: int, reduction_prev: bool, drop_prob: float = 0.0) -> None:")
    lines.append("        super().__init__()")
    lines.append("        self.drop_prob = drop_prob")
    if many:
        needs.add("input_preprocess")
        lines += [f"        self.preprocess{j} = input_preprocess(C_in[{j}], C, reductions[{j}])" for j in range(len(cell.inputs))]
    if two:
        needs.update({"FactorizedReduce", "ReLUConvBN"})
        lines.append("        self.preprocess0 = FactorizedReduce(C_pp, C) if reduction_prev else ReLUConvBN(C_pp, C, 1, 1, 0)")
        lines.append("        self.preprocess1 = ReLUConvBN(C_p, C, 1, 1, 0)")
    widens = len(cell.inputs) == 1 and cell.reduction  # a one-input reduction cell (a chain stage) may widen: docs/network.md
    if widens:
        needs.add("ReLUConvBN")
        lines.append("        self.project = C_p != C  # a 1 x 1 projection widens the input first (docs/network.md)")
        lines.append("        if self.project:")
        lines.append("            self.preprocess1 = ReLUConvBN(C_p, C, 1, 1, 0)")
    lines.append("        self._ops = nn.ModuleList([")
    identity: list[bool] = []
    for k, e in enumerate(cell.edges):
        code = op_code(e.op, cell.stride(e))  # type: ignore[arg-type]
        needs.update(code.needs)
        identity.append(code.identity)
        lines.append(f"            {code.expr},  # {k}: {e.src} -> {e.dst}, {e.op}")
    lines.append("        ])")
    lines.append("")
    lines.append("    def drop(self, h: torch.Tensor) -> torch.Tensor:")
    lines.append('        """Drop-path in training (docs/ops.md, "A DARTS cell"); identity ops never pass through here."""')
    lines.append("        return drop_path(h, self.drop_prob, self.training)")
    lines.append("")
    needs.add("drop_path")
    if two:
        lines.append("    def forward(self, s0: torch.Tensor, s1: torch.Tensor) -> torch.Tensor:")
        lines.append("        s0 = self.preprocess0(s0)")
        lines.append("        s1 = self.preprocess1(s1)")
    elif many:
        ins = [var[n] for n in cell.input_names]
        lines.append(f"    def forward(self, {', '.join(f'{v}: torch.Tensor' for v in ins)}) -> torch.Tensor:")
        lines += [f"        {v} = self.preprocess{j}({v})" for j, v in enumerate(ins)]
    else:
        lines.append("    def forward(self, s0: torch.Tensor) -> torch.Tensor:")
        if widens:
            lines.append("        if self.project:")
            lines.append("            s0 = self.preprocess1(s0)")
    index = {id(e): k for k, e in enumerate(cell.edges)}
    for n in cell.node_names:
        terms = []
        for e in cell.in_edges(n):
            k = index[id(e)]
            call = f"self._ops[{k}]({var[e.src]})"
            terms.append(call if identity[k] else f"self.drop({call})")
        lines.append(f"        {var[n]} = " + " + ".join(terms))
    outs = [var[n] for n in out.nodes]
    lines.append(f"        return torch.cat([{', '.join(outs)}], dim=1)" if len(outs) > 1 else f"        return {outs[0]}")
    return "\n".join(lines), needs


def _layers(layers: tuple[LayerPlan, ...]) -> list[str]:
    """Each layer's constructor expression from the layer registry (nasir/layers.py)."""
    return [LAYERS[x.name].emit(x) for x in layers]


def _sequential(attr: str, mods: list[str]) -> list[str]:
    if not mods:
        return [f"        self.{attr} = nn.Sequential()"]
    return [f"        self.{attr} = nn.Sequential(", *(f"            {m}," for m in mods), "        )"]


def _describe_env(plan: Plan) -> str:
    def fmt(v: Any) -> str:
        return str(v).lower() if isinstance(v, bool) else str(v)

    return ", ".join(f"{k} = {fmt(v)}" for k, v in plan.env)


def network_class(spec: ir.Spec, plan: Plan) -> tuple[str, set[str]]:
    """The `Network` class: stems, the stacked cells with concrete channels, auxiliary head, head."""
    needs: set[str] = set()
    init: list[str] = []
    fwd: list[str] = []
    two_stems = len(plan.stems) == 2
    if two_stems:
        init += _sequential("stem0", _layers(plan.stems[0])) + _sequential("stem1", _layers(plan.stems[1]))
    else:
        init += _sequential("stem", _layers(plan.stems[0] if plan.stems else ()))
    cells = {c_.name: c_ for c_ in spec.cells}
    any_two = any(len(cells[b.cell].inputs) == 2 for b in plan.cells)
    # A cell with more than two inputs: forward keeps the history `h` of states (stem outputs, then every
    # block's output) and each block reads by position (nasir.macro.history_window), as
    # Network.features does (docs/network.md "Cells with more than two inputs").
    many = any(len(cells[b.cell].inputs) > 2 for b in plan.cells)
    if many:
        fwd.append("        s0 = self.stem0(x)\n        h = [s0, self.stem1(s0)]" if two_stems else "        h = [self.stem(x)] * 2")
    elif any_two:
        fwd.append("        s0 = self.stem0(x)\n        s1 = self.stem1(s0)" if two_stems else "        s0 = s1 = self.stem(x)")
    else:
        fwd.append("        s = self.stem0(x)\n        s = self.stem1(s)" if two_stems else "        s = self.stem(x)")
    last = "h[-1]" if many else "s1" if any_two else "s"
    init.append("        self.cells = nn.ModuleList()")
    has_aux = False
    for i, b in enumerate(plan.body):
        if isinstance(b, ResidualPlan):
            needs.add("ResidualBlock")
            init.append(f"        self.cells.append(ResidualBlock({b.C_in}, {b.C_out}))  # {i}: residual reduction")
            call = f"self.cells[{i}]({last})"
            reads = [i + 1]
        else:
            assert isinstance(b, CellPlan)
            cell = cells[b.cell]
            assert cell.output is not None
            note = " (stride 2)" if b.reduction else ""
            args = f"{b.in_channels}, {b.in_reductions}" if len(cell.inputs) > 2 else f"{b.C_pp}, {b.C_p}"
            args += f", {b.C}" + (f", {b.reduction_prev}" if len(cell.inputs) <= 2 else "")
            init.append(f"        self.cells.append({class_name(cell)}({args}, drop_path_prob))"
                        f"  # {i}: {cell.name}{note}")  # fmt: skip
            call = f"self.cells[{i}](s0, s1)" if len(cell.inputs) == 2 else f"self.cells[{i}]({last})"
            reads = history_window(i + 2, len(cell.inputs))
        if many:
            fwd.append(f"        h.append(self.cells[{i}]({', '.join(f'h[{j}]' for j in reads)}))")
        else:
            fwd.append(f"        s0, s1 = s1, {call}" if any_two else f"        s = {call}")
        if i == plan.aux_after and plan.aux_style is not None:
            head = "AuxiliaryHeadCIFAR" if plan.aux_style == "cifar" else "AuxiliaryHeadImageNet"
            needs.add(head)
            has_aux = True
            init.append(f"        self.auxiliary_head = {head}({b.C_out}, {plan.classes})  # reads the output of cell {i}")
            fwd.append(f"        aux_in = {last}")
    parts: dict[str, list[str]] = {"pre": [], "post": [], "classifier": ["nn.Identity()"]}
    for x, code in zip(plan.head, _layers(plan.head)):
        parts[x.slot].append(code)
    pre, post, classifier = parts["pre"], parts["post"], parts["classifier"][-1]
    init.append(f"        self.classifier = {classifier}")
    init += _sequential("head_pre", pre) + _sequential("head_post", post)
    fwd.append(f"        logits = self.classifier(self.head_post(torch.flatten(self.head_pre({last}), 1)))")
    if has_aux:
        fwd.append("        if self.training:\n            return logits, self.auxiliary_head(aux_in)")
    fwd.append("        return logits")
    ret = "torch.Tensor | tuple[torch.Tensor, torch.Tensor]" if has_aux else "torch.Tensor"
    doc = f"network '{plan.network}' ({_describe_env(plan)}) on {plan.input[0]} x {plan.input[1]} x {plan.input[2]} inputs"
    lines = [
        "class Network(nn.Module):",
        f'    """The {doc}.',
        "",
        "    forward(x) returns the logits" + (", and in training also the auxiliary logits." if has_aux else "."),
        '    """',
        "",
        "    def __init__(self, drop_path_prob: float = 0.0) -> None:",
        "        super().__init__()",
        *init,
        "",
        "    @property",
        "    def drop_path_prob(self) -> float:",
        "        cells = [m for m in self.cells if hasattr(m, \"drop_prob\")]",
        "        return cells[0].drop_prob if cells else 0.0",
        "",
        "    @drop_path_prob.setter",
        "    def drop_path_prob(self, p: float) -> None:",
        "        for m in self.cells:",
        "            if hasattr(m, \"drop_prob\"):",
        "                m.drop_prob = p",
        "",
        f"    def forward(self, x: torch.Tensor) -> {ret}:",
        *fwd,
    ]
    return "\n".join(lines), needs


_MAIN = '''\
if __name__ == "__main__":
    model = Network().eval()
    with torch.no_grad():
        out = model(torch.zeros(1, {c}, {h}, {w}))
    print(f"{{sum(p.numel() for p in model.parameters()):,}} parameters; logits {{tuple(out.shape)}}")
'''


def generate(spec: ir.Spec, plan: Plan, source_name: str | None = None) -> str:
    """The text of a standalone Python module (torch only) defining `Network` for `plan`."""
    kinds: list[str] = []
    for b in plan.cells:
        if b.cell not in kinds:
            kinds.append(b.cell)
    needs: set[str] = set()
    classes = []
    for name in kinds:
        cell = spec.cell(name)
        if cell is None:
            raise error_at(None, f"unknown cell '{name}'")
        text, n = cell_class(cell)
        classes.append(text)
        needs |= n
    net, n = network_class(spec, plan)
    needs |= n
    origin = f" from {source_name}" if source_name else ""
    header = f'''"""The '{plan.network}' network, generated by nasir{origin}.

Parameters: {_describe_env(plan)}; input {plan.input[0]} x {plan.input[1]} x {plan.input[2]}.
A standalone module that needs only torch. `Network()` builds the network with PyTorch's default
initialisation; its state-dict keys are those of `nasir.build`, so trained weights load with
`model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))`.
Run it (`python {{this file}}`) to print the parameter count.
"""

from __future__ import annotations

import torch
from torch import nn
'''
    classes[0] = _section("cells") + classes[0]
    body = [_section("building blocks (docs/ops.md)") + block_source(needs), *classes, _section("network") + net]
    c, h, w = plan.input
    return header + "\n\n" + "\n\n\n".join(body) + "\n\n\n" + _MAIN.format(c=c, h=h, w=w)


def _section(title: str) -> str:
    return f"# ---- {title} ".ljust(100, "-") + "\n"
