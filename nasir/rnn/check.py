"""The checks a recurrent spec needs (docs/recurrent.md), called by the verifier: the rules of a recurrent
cell and of a `language_model` network. Kept apart from the lowering (nasir/rnn/lower.py), which runs passes,
so that the verifier depends on no pass.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nasir import ir
from nasir.diagnostics import DiagnosticBag, did_you_mean
from nasir.rnn.space import PRIMITIVES, RECURRENT_INPUT, LanguageModel  # noqa: F401 - RECURRENT_INPUT kept for importers

LM_ARGS = ("tokens", "ninp", "nhid", "dropout", "dropouth", "dropoutx", "dropouti", "dropoute")
RECURRENT_ONLY_OPS = tuple(o for o in PRIMITIVES if o != "none")  # ops that exist only in recurrent cells
LM_HINT = "write e.g. 'language_model rnn(tokens = 10000, ninp = 300, nhid = 300)'"


def is_recurrent_cell(c: ir.Cell) -> bool:
    return bool(getattr(c, "recurrent", False))


def language_model_decl(n: ir.Network) -> Any:
    return getattr(n, "language_model", None)


def is_recurrent(spec: ir.Spec) -> bool:
    """A spec whose (first) network is a language model, or whose cells are all recurrent."""
    net = spec.network()
    if net is not None:
        return language_model_decl(net) is not None
    return bool(spec.cells) and all(is_recurrent_cell(c) for c in spec.cells)


# ---- checks (called by the verifier) ----------------------------------------------------------------
def check_cell(c: ir.Cell, bag: DiagnosticBag) -> None:
    """The rules of a recurrent cell; a CNN cell must not use a recurrent op or a mean output."""
    if not is_recurrent_cell(c):  # (its recurrent ops are reported by the verifier's op check)
        if c.output is not None and c.output.kind == "mean":
            bag.error(c.output.span, "'output mean(...)' is the output of a recurrent cell", "add 'recurrent' to the cell, or use 'output concat(...)'")
        return
    if len(c.inputs) != 1:
        bag.error(c.inputs[1].span if len(c.inputs) > 1 else c.span,
                  f"a recurrent cell has one input (s0, computed from x_t and h_(t-1)); '{c.name}' has {len(c.inputs)}")  # fmt: skip
    if c.output is not None and c.output.kind != "mean":
        bag.error(c.output.span, "a recurrent cell's output is the mean of its states", f"write 'output mean({', '.join(c.node_names)})'")
    if c.reduction:
        bag.error(c.span, "a recurrent cell has no stride")
    if c.topology is not None:
        bag.error(c.topology.span, "topology variables are for convolutional cells")
    if c.keep is not None and c.keep != 1:
        bag.error(c.keep_span, f"a recurrent cell keeps 1 input per node (DARTS: k = 1), not {c.keep}", "write 'keep 1 inputs per node'")
    order = {s: i for i, s in enumerate(c.states)}
    for e in c.edges:
        for o in e.candidates:
            if o not in PRIMITIVES:
                bag.error(e.span, f"'{o}' is not a recurrent op", f"the recurrent ops are {', '.join(PRIMITIVES)}")
                break
        if e.src in order and e.dst in order and order[e.src] >= order[e.dst]:
            bag.error(e.span, f"edge {e.src} -> {e.dst}: a node reads earlier states only")
        if e.op == "none":
            bag.error(e.span, "a fixed 'none' edge computes nothing", "drop the edge")
    if any(e.is_choice for e in c.edges):
        _check_space(c, bag)
    else:
        for n in c.nodes:
            k = len(c.in_edges(n.name))
            if k != 1:
                bag.error(n.span, f"node '{n.name}' of a derived recurrent cell has {k} inputs; it has exactly one (k = 1)")


def _check_space(c: ir.Cell, bag: DiagnosticBag) -> None:
    fixed = [e for e in c.edges if not e.is_choice]
    if fixed:
        bag.error(fixed[0].span, "a recurrent search cell has a choice on every edge", "write 'edges * -> s* : choice(rnn_ops)'")
        return
    ops = {e.choice.ops for e in c.edges}  # type: ignore[union-attr]
    if len(ops) > 1:
        bag.error(c.edges[-1].span, "every edge of a recurrent search cell has the same choice of ops")
    states = c.states
    want = [(p, n) for i, n in enumerate(states) if i > 0 for p in states[:i]]
    have = [(e.src, e.dst) for e in c.edges]
    if sorted(have) != sorted(want) or len(set(have)) != len(have):
        missing = [f"{a} -> {b}" for a, b in want if (a, b) not in have]
        bag.error(c.span, "a recurrent search cell reads every earlier state into every node (the DARTS space)",
                  f"missing {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}; write 'edges * -> s* : choice(...)'" if missing else None)  # fmt: skip
    if c.keep is None:
        bag.error(c.span, "a recurrent search cell says how many inputs a node keeps", "add 'keep 1 inputs per node'")


def check_network(spec: ir.Spec, n: ir.Network, env: Mapping[str, Any], bag: DiagnosticBag) -> LanguageModel | None:
    """The `language_model` statement: a recurrent cell and the model sizes; None if it has errors."""
    from nasir.macro import EvalError, evaluate

    lm = language_model_decl(n)
    cell = spec.cell(lm.cell)
    if cell is None:
        bag.error(lm.span, f"unknown cell '{lm.cell}'", did_you_mean(lm.cell, [c.name for c in spec.cells]))
        return None
    if not is_recurrent_cell(cell):
        bag.error(lm.span, f"cell '{lm.cell}' is not recurrent; a language model unrolls a recurrent cell", "add 'recurrent' to the cell")
        return None
    values: dict[str, Any] = {}
    ok = True
    for a in lm.args:
        if a.name is None:
            bag.error(a.span, "language_model arguments are named", f"name one of {', '.join(LM_ARGS)}")
            ok = False
            continue
        if a.name not in LM_ARGS:
            bag.error(a.span, f"language_model has no argument '{a.name}'", did_you_mean(a.name, LM_ARGS) or f"its arguments: {', '.join(LM_ARGS)}")
            ok = False
            continue
        if a.name in values:
            bag.error(a.span, f"'{a.name}' given twice")
            ok = False
            continue
        try:
            values[a.name] = evaluate(a.value, dict(env))
        except EvalError as e:
            bag.error(e.span, e.message, e.hint)
            ok = False
    for name in ("tokens", "ninp", "nhid"):
        if name in values:
            v = values[name]
            if isinstance(v, bool) or not (isinstance(v, int) or (isinstance(v, float) and v.is_integer())) or v < 1:
                bag.error(_arg_span(lm, name), f"'{name}' must be a whole number >= 1, got {v!r}")
                ok = False
            else:
                values[name] = int(v)
        elif ok:
            bag.error(lm.span, f"language_model needs '{name}'", LM_HINT)
            ok = False
    if not ok:
        return None
    try:
        return LanguageModel(**values)
    except ValueError as e:
        bag.error(lm.span, str(e))
        return None


def _arg_span(lm: Any, name: str):
    return next((a.span for a in lm.args if a.name == name), lm.span)
