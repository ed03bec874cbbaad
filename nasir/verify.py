"""The verifier: IR invariants that a wrong spec would break, every violation a diagnostic.

Runs after the front end and, in tests, after every pass. It collects all problems before
reporting. Rules (each has a failing-spec test in tests/test_verify.py):
duplicate names; edges into inputs; cycles; nodes unreachable from the inputs or not reaching the
output; duplicate choice edges; stride and channel consistency of stacked cells; unknown cells,
layers and parameters in networks; parameters without value; derivation constraints that no
architecture can meet; unknown search settings.
"""

from __future__ import annotations

import graphlib
from collections import Counter, defaultdict
from typing import Any

from nasir import ir, ops
from nasir.diagnostics import DiagnosticBag, did_you_mean
from nasir.macro import bind_params, elaborate
from nasir.rnn import check as recurrent
from nasir.source import Span

# The search block's settings. Method, select and smooth take the names of the registry (nasir/methods),
# which `_search` asks; the others take a value of the right kind (checked where they are read).
SEARCH_SETTINGS: tuple[str, ...] = (
    "method", "select", "smooth",
    "epochs", "batch_size", "early_stop", "hessian", "seed", "warmup", "lr", "lr_min", "momentum",
    "weight_decay", "arch_lr", "arch_weight_decay", "bptt",  # bptt: a recurrent search's truncated-BPTT length (docs/recurrent.md)
)
BUDGET_KINDS = ("params", "macs")


def verify(spec: ir.Spec, overrides: dict[str, Any] | None = None,
           override_spans: dict[str, Span] | None = None, bag: DiagnosticBag | None = None,
           skip_cells: set[str] = frozenset()) -> DiagnosticBag:  # fmt: skip
    """Check every invariant; `skip_cells` are cells the front end already reported errors in."""
    bag = bag if bag is not None else DiagnosticBag()
    _duplicates(bag, "cell", spec.cells)
    _duplicates(bag, "network", spec.networks)
    for c in spec.cells:
        if c.name not in skip_cells:
            verify_cell(c, bag)
    for n in spec.networks:
        _network(spec, n, bag, overrides if n is spec.networks[0] else None, override_spans, skip_cells)
    if overrides and not spec.networks:
        bag.error(None, "--set given but the spec declares no network")
    if spec.search is not None:
        _search(spec, bag)
    return bag


def _duplicates(bag: DiagnosticBag, what: str, items) -> None:
    first: dict[str, Any] = {}
    for x in items:
        if x.name in first:
            bag.error(x.span, f"{what} '{x.name}' is defined twice", f"first defined at {first[x.name].span}")
        else:
            first[x.name] = x


def verify_cell(c: ir.Cell, bag: DiagnosticBag) -> None:
    _duplicates(bag, f"node of cell '{c.name}',", c.inputs + c.nodes)
    inputs = set(c.input_names)
    states = set(c.states)
    for e in c.edges:
        if e.dst in inputs:
            bag.error(e.span, f"edge {e.src} -> {e.dst} enters the cell input '{e.dst}'", "inputs are computed by the previous cells")
        for end in (e.src, e.dst):
            if end not in states:
                bag.error(e.span, f"edge names unknown node '{end}'", did_you_mean(end, states))
        if e.choice is not None and not e.choice.ops:
            bag.error(e.choice.span or e.span, "the op set of this choice is empty")
        for name in e.candidates if not c.recurrent else ():  # a recurrent cell's ops: recurrent.check_cell
            if name in recurrent.RECURRENT_ONLY_OPS:
                bag.error(e.span, f"'{name}' is a recurrent op; it exists only in a 'recurrent' cell",
                          "add 'recurrent' to the cell, or use the convolutional ops")  # fmt: skip
            elif name is not None and name not in ops.REGISTRY:
                bag.error(e.span, f"unknown op '{name}'", ops.unknown_op_hint(name))
    pairs = Counter((e.src, e.dst) for e in c.edges if e.is_choice)
    for e in c.edges:
        if e.is_choice and pairs[(e.src, e.dst)] > 1:
            bag.error(e.span, f"two searchable edges {e.src} -> {e.dst}", "one choice per pair of nodes")
            pairs[(e.src, e.dst)] = 0
    # graphlib and a breadth-first walk rather than networkx: `nasir check` must start fast.
    succ: dict[str, set[str]] = defaultdict(set)
    pred: dict[str, set[str]] = defaultdict(set)
    for e in c.edges:
        if e.src in states and e.dst in states and e.dst not in inputs:
            succ[e.src].add(e.dst)
            pred[e.dst].add(e.src)
    try:
        graphlib.TopologicalSorter({n: pred[n] for n in c.states}).prepare()
    except graphlib.CycleError as err:
        cycle = list(reversed(err.args[1]))  # graphlib lists it against the edge direction
        at = next((e.span for e in c.edges if (e.src, e.dst) == (cycle[0], cycle[1])), c.span)
        bag.error(at, "cycle: " + " -> ".join(cycle), "cells are acyclic; an edge must go from an earlier node to a later one")
        return
    if c.output is None:
        return
    reach_in = _walk(c.input_names, succ)
    outs = [n for n in c.output.nodes if n in states]
    reach_out = _walk(outs, pred) | set(outs)
    for n in c.nodes:
        if n.name not in reach_in:
            bag.error(n.span, f"node '{n.name}' is unreachable from the inputs of cell '{c.name}'", "give it an input edge")
        elif n.name not in reach_out:
            bag.error(n.span, f"node '{n.name}' does not reach the output of cell '{c.name}'", "use it in the output or as an input of a later node")
    if c.output.kind == "node" and c.output.nodes and c.output.nodes[0] in inputs:
        bag.error(c.output.span, "the cell output is one of its inputs")
    recurrent.check_cell(c, bag)
    if not c.recurrent:
        _constraints(c, pred, bag)


def _walk(start, edges: dict[str, set[str]]) -> set[str]:
    """Every node reachable from `start` (excluded) along `edges`."""
    seen: set[str] = set()
    todo = list(start)
    while todo:
        for m in edges[todo.pop()]:
            if m not in seen:
                seen.add(m)
                todo.append(m)
    return seen


def _constraints(c: ir.Cell, pred: dict[str, set[str]], bag: DiagnosticBag) -> None:
    if c.keep is not None:
        if c.keep < 1:
            bag.error(c.keep_span, "keep must be at least 1")
        for n in c.nodes:
            preds = len(pred[n.name])
            if preds < c.keep:
                bag.error(c.keep_span, f"no architecture can keep {c.keep} inputs for node '{n.name}': it has {preds} predecessor{'s' * (preds != 1)}",
                          f"node '{n.name}' reads from {', '.join(sorted(pred[n.name])) or 'nothing'}")  # fmt: skip
                break
    t = c.topology
    if t is not None:
        if not any(e.is_choice for e in c.edges):
            bag.error(t.span, "topology variables need searchable edges", "write the edges as choice(...)")
        if t.kind == "inputs":
            for n in c.nodes:
                preds = len(pred[n.name])
                if preds < (t.k or 0):
                    bag.error(t.span, f"node '{n.name}' has {preds} predecessors, fewer than the {t.k} inputs it must pick")
                    break
        if t.k is not None and t.k < 1:
            bag.error(t.span, "a topology must pick at least one edge")
        if any("none" in e.candidates for e in c.edges):
            bag.warning(t.span, "stretchable cells remove 'none' from the op set (topology variables decide which edges exist)")


def _network(spec: ir.Spec, n: ir.Network, bag: DiagnosticBag, overrides, override_spans, skip_cells) -> None:
    if n.language_model is not None:  # docs/recurrent.md
        env = bind_params(n, overrides, override_spans, bag)
        if env is not None and n.language_model.cell not in skip_cells:
            recurrent.check_network(spec, n, env, bag)
        return
    cells = {c.name: c for c in spec.cells}
    for b in n.body:
        if not isinstance(b, ir.Stack):
            continue
        for name, must_reduce in ((b.cell, False), (b.reduce, True)):
            if name is None:
                continue
            c = cells.get(name)
            if c is None:
                bag.error(b.span, f"network '{n.name}' stacks unknown cell '{name}'", did_you_mean(name, cells))
                continue
            if name in skip_cells:
                continue
            if c.reduction != must_reduce:
                what = "is a reduction cell (stride 2)" if c.reduction else "does not reduce (no 'stride 2 from inputs')"
                bag.error(b.span, f"inconsistent strides: cell '{name}' {what} but is stacked as a {'reduction' if must_reduce else 'normal'} cell")
            if not c.inputs:  # n >= 1 inputs read the n previous outputs (docs/network.md "Cells with more than two inputs")
                bag.error(c.span, f"cell '{name}' has no inputs; a stacked cell reads at least the previous output")
            if len(c.inputs) == 1 and c.output is not None and (c.output.kind == "concat" and len(c.output.nodes) != 1):
                bag.error(c.output.span, f"inconsistent channels: one-input cell '{name}' must keep its channels, but its output concatenates {len(c.output.nodes)} nodes",
                          "write 'output NODE'")  # fmt: skip
        if b.reduce is not None and not b.at:
            bag.error(b.span, "a reduction cell needs positions, e.g. 'at 1/3, 2/3'")
    if not n.head or not any(x.name == "linear" for x in n.head):
        bag.error(n.span, f"network '{n.name}' has no classifier", "add e.g. 'head global_avg_pool, linear(classes)'")
    plan = elaborate(spec, n, overrides, override_spans, bag)
    if plan is not None:
        for d in search_space_problems(spec, plan, n):
            bag.items.append(d)
        for d in chain_problems(spec, plan, n):
            bag.items.append(d)


def _search(spec: ir.Spec, bag: DiagnosticBag) -> None:
    from nasir import methods  # the registry of methods, selections, smoothings (imports no torch)

    s = spec.search
    assert s is not None
    seen: set[str] = set()
    for st in s.settings:
        if st.name in seen:
            bag.error(st.span, f"search setting '{st.name}' is given twice")
        seen.add(st.name)
        if st.name not in SEARCH_SETTINGS:
            bag.error(st.span, f"unknown search setting '{st.name}'", did_you_mean(st.name, SEARCH_SETTINGS) or "known: " + ", ".join(SEARCH_SETTINGS))
            continue
        if st.name in methods.KINDS:  # method, select, smooth: the registry's names (nasir/methods)
            value = methods.choice(st.value)[0]
            if methods.lookup(st.name, value) is None:
                allowed = methods.names(st.name)
                bag.error(st.span, f"'{st.name}' must be one of {', '.join(allowed)}", did_you_mean(str(value), methods.spellings(st.name)))
            continue
    searchable = {op for c in spec.cells for e in c.edges if e.is_choice for op in e.candidates}
    for lim in s.limits:
        if lim.op not in ops.REGISTRY:
            bag.error(lim.span, f"unknown op '{lim.op}'", ops.unknown_op_hint(lim.op))
        elif lim.op not in searchable and searchable:
            bag.warning(lim.span, f"'{lim.op}' is not a candidate of any searchable edge; the limit has no effect")
        elif lim.max == 0:
            # Unsatisfiable if some node can only choose the forbidden op.
            for c in spec.cells:
                for n in c.node_names:
                    cands = {op for e in c.in_edges(n) for op in e.candidates if op != "none"}
                    if cands == {lim.op}:
                        bag.error(lim.span, f"no architecture meets this limit: node '{n}' of cell '{c.name}' can only choose '{lim.op}'")
                        break
    for b in s.budgets:
        if b.kind not in BUDGET_KINDS:
            bag.error(b.span, f"unknown budget '{b.kind}'", did_you_mean(b.kind, BUDGET_KINDS) or "known: params, macs")
        if b.value.value <= 0:
            bag.error(b.value.span, "a budget must be positive")


def search_space_problems(spec: ir.Spec, plan, network: ir.Network | None = None) -> list:
    """Problems of an elaborated network that would otherwise surface as a failure at the first step
    (issue 14, item 9), as diagnostics: a network input too small for its reductions (a factorized
    reduction of a 1-pixel map has nothing to read); and, for a search space, a searchable cell kind
    the network does not use (`--set layers=2` can drop the reduction cells: their architecture
    variables would never learn) and an auxiliary head (the supernet has none)."""
    from nasir.diagnostics import Diagnostic

    network = network if network is not None else spec.network()
    span = network.span if network is not None else None
    out: list[Diagnostic] = []
    h, w = plan.input[1], plan.input[2]
    for lp in plan.stems[0] if plan.stems else ():
        stride = lp.kw("stride", 1)
        if isinstance(stride, int) and stride > 1:
            h, w = -(-h // stride), -(-w // stride)
    k = 0
    for b in plan.body:
        reduces = getattr(b, "reduction", False) or (getattr(b, "C_in", None) is not None)
        if not reduces:
            continue
        k += 1
        if min(h, w) < 2:
            out.append(Diagnostic(f"the input {plan.input} is too small for the network's reductions: reduction {k} would get a "
                                  f"{h}x{w} feature map (a reduction needs at least 2x2)", span,
                                  "use a larger input or fewer reductions (layers, or the 'at' positions)"))  # fmt: skip
            break
        h, w = -(-h // 2), -(-w // 2)
    if spec.is_search_space:
        used = {c.cell for c in plan.cells}
        stacked = {name for b in (network.body if network is not None else ()) if isinstance(b, ir.Stack) for name in (b.cell, b.reduce) if name}
        for name in sorted(stacked - used):
            c = spec.cell(name)
            if c is not None and c.is_search_space:
                env = ", ".join(f"{k_}={v}" for k_, v in plan.env)
                out.append(Diagnostic(f"cell '{name}' is searchable but the network with {env} stacks none of it: "
                                      "its architecture variables would never learn", span,
                                      "stack at least one (e.g. more layers), or search a space without it"))  # fmt: skip
        if plan.aux_after is not None:
            aux = next((b for b in (network.body if network is not None else ()) if isinstance(b, ir.Auxiliary)), None)
            out.append(Diagnostic("a search space's network cannot have an auxiliary head: the supernet has none",
                                  aux.span if aux is not None else span,
                                  "switch it off for the search (e.g. --set auxiliary=false) and train the derived network with it"))  # fmt: skip
    return out


def chain_problems(spec: ir.Spec, plan, network: ir.Network) -> list:
    """Channel problems of one-input cells (chain stages, docs/network.md "Chain spaces"), from the
    channels the Plan records: a one-input reduction cell widens through a 1 x 1 projection, but a
    one-input normal cell must read as many channels as it has (C_p == C). Reported by `nasir check`
    at the stack that places the cell, rather than when the network is built."""
    from nasir.diagnostics import Diagnostic

    out: list[Diagnostic] = []
    stacks = [b for b in network.body if isinstance(b, ir.Stack)]
    for b in plan.cells:
        c = spec.cell(b.cell)
        if c is None or len(c.inputs) != 1 or c.reduction or b.C_p == b.C:
            continue
        at = next((s for s in stacks if s.cell == b.cell), None)
        out.append(Diagnostic(f"inconsistent channels: cell '{b.cell}' expects {b.C} channels, gets {b.C_p}",
                              at.span if at is not None else c.span,
                              "a one-input cell keeps its channels; widen in a reduction cell ('stride 2 from inputs') "
                              "or a 'residual' block"))  # fmt: skip
        break  # the first one: later cells read what it would have made
    return out

