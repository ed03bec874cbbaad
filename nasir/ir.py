"""The nasir IR: immutable data, one class per concept, every element keeps its source span.

Passes rewrite the IR by building new objects (`attrs.evolve`); nothing here mutates. Spans are
excluded from equality so that parse -> print -> parse compares equal. networkx graphs are built
on demand as views (`Cell.graph()`), never stored.
"""

from __future__ import annotations

from typing import Union

import attrs

from nasir.source import Span, span_field


# ---- expressions (network parameters, settings) ---------------------------------------------
@attrs.frozen
class Num:
    value: int | float
    text: str | None = attrs.field(default=None, eq=False)
    span: Span | None = span_field()


@attrs.frozen
class Bool:
    value: bool
    span: Span | None = span_field()


@attrs.frozen
class Var:
    name: str
    span: Span | None = span_field()


@attrs.frozen
class BinOp:
    op: str  # one of + - * /
    left: Expr
    right: Expr
    span: Span | None = span_field()


@attrs.frozen
class Neg:
    operand: Expr
    span: Span | None = span_field()


Expr = Union[Num, Bool, Var, BinOp, Neg]


@attrs.frozen
class Arg:
    """A call argument: positional (`name is None`) or keyword."""

    name: str | None
    value: Expr
    span: Span | None = span_field()


@attrs.frozen
class Call:
    name: str
    args: tuple[Arg, ...] = ()
    span: Span | None = span_field()

    def kwargs(self) -> dict[str, Expr]:
        return {a.name: a.value for a in self.args if a.name is not None}

    def positional(self) -> list[Expr]:
        return [a.value for a in self.args if a.name is None]


# ---- op sets and cells ------------------------------------------------------------------------
@attrs.frozen
class OpSet:
    name: str
    ops: tuple[str, ...]
    expr: str  # canonical text of the defining set expression
    span: Span | None = span_field()


@attrs.frozen
class Choice:
    """The candidate ops of a searchable edge; `expr` is the set expression as canonically printed."""

    ops: tuple[str, ...]
    expr: str
    span: Span | None = span_field()


@attrs.frozen
class Node:
    name: str
    span: Span | None = span_field()


@attrs.frozen
class Edge:
    """src -> dst carrying either one fixed op or a choice of ops (exactly one of the two)."""

    src: str
    dst: str
    op: str | None = None
    choice: Choice | None = None
    # Set by passes/mixed_ops.py: the row of the cell kind's architecture variables (alpha) this
    # edge reads; by passes/zero_ops.py: the candidates actually computed (`none` left out).
    alpha: int | None = None
    computed: tuple[str, ...] | None = None
    span: Span | None = span_field()

    @property
    def is_choice(self) -> bool:
        return self.choice is not None

    @property
    def candidates(self) -> tuple[str, ...]:
        return self.choice.ops if self.choice is not None else (self.op,)  # type: ignore[return-value]


@attrs.frozen
class Output:
    kind: str  # "concat" | "node" | "mean" (a recurrent cell: the mean of the states, docs/recurrent.md)
    nodes: tuple[str, ...]
    span: Span | None = span_field()


@attrs.frozen
class Topology:
    """Stretchable-cell topology variables: node picks `k` inputs / `k` outputs / any outputs."""

    kind: str  # "inputs" | "outputs" | "any"
    k: int | None = None
    span: Span | None = span_field()


@attrs.frozen
class BetaRow:
    """Topology variables of one deciding node (passes/topology.py, stretchable-cells Eq. 3-13).

    For `topology inputs k` the deciding node is the destination and each code names the sources it
    keeps; for `outputs k` / `outputs any` it is the source and each code names the successors it
    feeds. One beta per code; softmax over the codes of a row.
    """

    node: str
    codes: tuple[tuple[str, ...], ...]


@attrs.frozen
class Cell:
    name: str
    inputs: tuple[Node, ...]
    nodes: tuple[Node, ...]
    edges: tuple[Edge, ...]
    output: Output | None
    reduction: bool = False  # `stride 2 from inputs`
    keep: int | None = None  # `keep k inputs per node`
    keep_span: Span | None = span_field()
    topology: Topology | None = None
    # Set by passes/mixed_ops.py: one row of candidate op names per mixed edge, shared by every
    # stacked copy of this cell kind (DARTS shares alpha_normal / alpha_reduce the same way).
    alpha_rows: tuple[tuple[str, ...], ...] | None = None
    beta_rows: tuple[BetaRow, ...] | None = None
    # `recurrent`: DARTS' recurrent cell (docs/recurrent.md): one input s0 computed from x_t and
    # h_(t-1), gated edges s_p + sigmoid(c) * (f(g) - s_p), ops from nasir/rnn/space.py, mean output.
    recurrent: bool = False
    span: Span | None = span_field()

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(n.name for n in self.inputs)

    @property
    def node_names(self) -> tuple[str, ...]:
        return tuple(n.name for n in self.nodes)

    @property
    def states(self) -> tuple[str, ...]:
        """Inputs then intermediate nodes, the order in which a cell computes its states."""
        return self.input_names + self.node_names

    @property
    def is_search_space(self) -> bool:
        return any(e.is_choice for e in self.edges) or self.topology is not None

    def stride(self, edge: Edge) -> int:
        return 2 if self.reduction and edge.src in self.input_names else 1

    def in_edges(self, node: str) -> tuple[Edge, ...]:
        return tuple(e for e in self.edges if e.dst == node)

    def out_edges(self, node: str) -> tuple[Edge, ...]:
        return tuple(e for e in self.edges if e.src == node)

    def graph(self):
        """A networkx MultiDiGraph view (states as nodes, `out` as the cell output)."""
        import networkx as nx

        g = nx.MultiDiGraph()
        g.add_nodes_from(self.states)
        for e in self.edges:
            g.add_edge(e.src, e.dst, op=e.op, choice=e.choice.ops if e.choice else None)
        if self.output is not None:
            g.add_node("<output>")
            for n in self.output.nodes:
                g.add_edge(n, "<output>")
        return g

    def node_span(self, name: str) -> Span | None:
        for n in self.inputs + self.nodes:
            if n.name == name:
                return n.span
        return self.span


# ---- networks ---------------------------------------------------------------------------------
@attrs.frozen
class Param:
    name: str
    default: Expr | None = None
    span: Span | None = span_field()


@attrs.frozen
class Layer:
    """A macro layer of a stem or head: conv3x3(C, stride = 2), bn, relu, global_avg_pool, linear(k)."""

    name: str
    args: tuple[Arg, ...] | None = None  # None: written without parentheses
    span: Span | None = span_field()


@attrs.frozen
class Frac:
    num: int
    den: int
    span: Span | None = span_field()


@attrs.frozen
class Stack:
    """`stack COUNT cells(C): CELL [, REDUCE at 1/3, 2/3]` — DARTS-style stacking; C doubles at a reduction."""

    count: Expr
    channels: Expr
    cell: str
    reduce: str | None = None
    at: tuple[Frac, ...] = ()
    span: Span | None = span_field()


@attrs.frozen
class Residual:
    """NAS-Bench-201's residual reduction block to `channels` channels (stride 2)."""

    channels: Expr
    span: Span | None = span_field()


@attrs.frozen
class Auxiliary:
    style: str  # "cifar" | "imagenet"
    at: Frac
    when: Expr | None = None
    span: Span | None = span_field()


@attrs.frozen
class LanguageModel:
    """`language_model CELL(tokens = .., ninp = .., nhid = .., dropout = .., ...)`: embedding, the recurrent
    cell unrolled over the sequence, decoder tied to the embedding (docs/recurrent.md)."""

    cell: str
    args: tuple[Arg, ...] = ()
    span: Span | None = span_field()


@attrs.frozen
class Network:
    name: str
    params: tuple[Param, ...]
    input: tuple[Expr, Expr, Expr] | None
    stems: tuple[tuple[Layer, ...], ...]
    body: tuple[Stack | Residual, ...]
    auxiliary: Auxiliary | None
    head: tuple[Layer, ...]
    language_model: LanguageModel | None = None  # a language-model network has this and no stems/stacks/head
    span: Span | None = span_field()

    def param(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)


# ---- search -----------------------------------------------------------------------------------
@attrs.frozen
class Setting:
    name: str
    value: Call | Expr
    span: Span | None = span_field()


@attrs.frozen
class Limit:
    op: str
    max: int
    span: Span | None = span_field()


@attrs.frozen
class Budget:
    kind: str  # "params" | "macs"
    value: Num
    span: Span | None = span_field()


@attrs.frozen
class SearchConfig:
    settings: tuple[Setting, ...] = ()
    limits: tuple[Limit, ...] = ()
    budgets: tuple[Budget, ...] = ()
    span: Span | None = span_field()

    def setting(self, name: str) -> Setting | None:
        return next((s for s in self.settings if s.name == name), None)


# ---- the whole spec ---------------------------------------------------------------------------
@attrs.frozen
class Include:
    path: str
    span: Span | None = span_field()


@attrs.frozen
class OpFile:
    """`ops "myops.py"`: a Python file of the user's own ops (docs/ops.md, "Your own ops"). `path` as
    written (relative to the file that names it); `resolved`: the absolute path that was loaded."""

    path: str
    resolved: str = attrs.field(default="", eq=False)
    span: Span | None = span_field()


@attrs.frozen
class Spec:
    """A parsed `.cell` file with its includes merged in; elements keep the file they came from."""

    file: str = attrs.field(eq=False)
    includes: tuple[Include, ...] = ()
    opsets: tuple[OpSet, ...] = ()
    cells: tuple[Cell, ...] = ()
    networks: tuple[Network, ...] = ()
    search: SearchConfig | None = None
    warnings: tuple = attrs.field(default=(), eq=False, repr=False)
    # The op files the spec and its includes name, in load order (docs/ops.md); at the end so that
    # positional construction keeps working.
    op_files: tuple[OpFile, ...] = ()
    # What the passes run so far have established (e.g. "mixed_ops", "zero_ops"); see nasir/pipeline.py.
    properties: frozenset[str] = attrs.field(default=frozenset(), eq=False, repr=False)

    def cell(self, name: str) -> Cell | None:
        return next((c for c in self.cells if c.name == name), None)

    def opset(self, name: str) -> OpSet | None:
        return next((o for o in self.opsets if o.name == name), None)

    def network(self, name: str | None = None) -> Network | None:
        if name is None:
            return self.networks[0] if self.networks else None
        return next((n for n in self.networks if n.name == name), None)

    def replace_cell(self, cell: Cell) -> Spec:
        return attrs.evolve(self, cells=tuple(cell if c.name == cell.name else c for c in self.cells))

    @property
    def is_search_space(self) -> bool:
        return any(c.is_search_space for c in self.cells)
