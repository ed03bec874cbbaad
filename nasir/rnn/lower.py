"""The IR of a recurrent spec (`cell ... { recurrent ... }`, `network ... { language_model CELL(...) }`)
lowered to the runtime's description (space.py), with the checks a recurrent cell needs (docs/recurrent.md).

State indices: the cell's one input is s0 (index 0), its nodes are 1..N in declaration order. A search
cell has a choice on every edge from every earlier state to every node (the DARTS space; alpha rows in
IR edge order, which is the runtime's (destination, source) order); a derived cell has exactly one
fixed edge into every node (k = 1).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from nasir import ir
from nasir.diagnostics import DiagnosticBag
from nasir.rnn.check import (  # noqa: F401 - the checks live in nasir/rnn/check.py; names kept for importers
    LM_ARGS,
    LM_HINT,
    RECURRENT_INPUT,
    RECURRENT_ONLY_OPS,
    check_cell,
    check_network,
    is_recurrent,
    is_recurrent_cell,
    language_model_decl,
)
from nasir.rnn.space import Genotype, LanguageModel, SearchSpace


# ---- lowering ---------------------------------------------------------------------------------------
@attrs.frozen
class Lowered:
    cell: ir.Cell
    network: ir.Network
    lm: LanguageModel
    space: SearchSpace | None = None
    genotype: Genotype | None = None


def env_of(n: ir.Network, overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    from nasir.macro import bind_params

    bag = DiagnosticBag()
    env = bind_params(n, dict(overrides or {}), None, bag)
    bag.check()
    assert env is not None
    return env


def lower(spec: ir.Spec, overrides: Mapping[str, Any] | None = None) -> Lowered:
    """A verified recurrent spec -> cell + language model description. DiagnosticError on anything else."""
    net = spec.network()
    bag = DiagnosticBag()
    if net is None or language_model_decl(net) is None:
        bag.error(net.span if net else None, "a recurrent spec needs a network with a 'language_model' statement", LM_HINT)
        bag.check()
    lm = check_network(spec, net, env_of(net, overrides), bag)  # type: ignore[arg-type]
    bag.check()
    cell = spec.cell(language_model_decl(net).cell)  # type: ignore[union-attr]
    check_cell(cell, bag)  # type: ignore[arg-type]
    bag.check()
    assert cell is not None and lm is not None and cell.output is not None
    index = {s: i for i, s in enumerate(cell.states)}
    concat = tuple(index[s] for s in cell.output.nodes)
    if cell.is_search_space:
        from nasir.passes.mixed_ops import MixedOps

        # the alpha rows as passes/mixed_ops.py numbers them (IR edge order), shared with CNN searches
        mixed = MixedOps().run(attrs.evolve(spec, cells=(cell,))).spec.cells[0]
        row = {(e.src, e.dst): e.alpha for e in mixed.edges}
        states = cell.states
        space = SearchSpace(len(cell.nodes), mixed.alpha_rows[0], concat)  # type: ignore[index]
        rows = tuple(row[(states[p], states[i])] for p, i in space.edges)
        return Lowered(cell, net, lm, space=attrs.evolve(space, rows=rows))  # type: ignore[arg-type]
    from nasir.genotype import recurrent_genotype_of_cell

    return Lowered(cell, net, lm, genotype=recurrent_genotype_of_cell(cell).cell)


def derived_spec(spec: ir.Spec, low: Lowered, genotype: Genotype, overrides: Mapping[str, Any] | None = None) -> ir.Spec:
    """The derived IR: the search cell with one fixed edge per node (k = 1), the network with the sizes
    searched (`overrides` become parameter defaults; `tokens` is the data's vocabulary), no search block."""
    from nasir.passes.dead_nodes import eliminate

    states = low.cell.states
    edges = tuple(ir.Edge(states[p], states[i], op=op) for i, (op, p) in enumerate(genotype.recurrent, start=1))
    cell = eliminate(attrs.evolve(low.cell, edges=edges, keep=None, keep_span=None, alpha_rows=None))
    values = dict(overrides or {})
    tokens_arg = next((a.value for a in low.network.language_model.args if a.name == "tokens"), None)
    lm_args = low.network.language_model.args
    if isinstance(tokens_arg, ir.Var) and low.network.param(tokens_arg.name) is not None:
        values[tokens_arg.name] = low.lm.tokens
    else:
        lm_args = tuple(attrs.evolve(a, value=ir.Num(low.lm.tokens)) if a.name == "tokens" else a for a in lm_args)
    params = tuple(attrs.evolve(p, default=ir.Num(values[p.name]) if not isinstance(values[p.name], bool) else ir.Bool(values[p.name]))
                   if p.name in values else p for p in low.network.params)  # fmt: skip
    net = attrs.evolve(low.network, params=params, language_model=attrs.evolve(low.network.language_model, args=lm_args))
    return attrs.evolve(spec, cells=(cell,), networks=(net,), search=None, opsets=(), includes=(), properties=frozenset())


def derived_text(derived: ir.Spec, header: str) -> str:
    from nasir import printer

    return f"# {header}\n" + "\n\n".join([printer.cell(c) for c in derived.cells] + [printer.network(n) for n in derived.networks]) + "\n"


def genotype_of(spec: ir.Spec) -> Genotype:
    """The derived cell of a recurrent spec in the authors' Genotype form."""
    from nasir.diagnostics import error_at

    low = lower(spec)
    if low.genotype is None:
        raise error_at(low.cell.span, f"cell '{low.cell.name}' is a search space (it has choice edges)", "derive it first, e.g. with nasir search")
    return low.genotype
