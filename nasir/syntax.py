"""The raw syntax tree of `.cell` text: what was written, before resolution (issue 11).

The parser's tree transformer (nasir/frontend.py) builds one small frozen class per construct, and the
resolver reads them by field name. Nothing here is resolved yet: node ranges, edge patterns, `like`,
set expressions and includes are kept as written; names are not checked. Every node keeps the spans
a diagnostic may point at (`span` for the whole construct, `*_span` for a part); spans take no part in
equality, as in the IR (nasir/ir.py).

Leaves the IR keeps exactly as written are built as their IR classes directly: expressions
(`ir.Num`, `ir.Var`, `ir.BinOp`, ...), call arguments (`ir.Arg`, `ir.Call`), network parameters
(`ir.Param`), layers of a stem or head (`ir.Layer`), fractions (`ir.Frac`), cell nodes (`ir.Node`) and
the search block's lines (`ir.Setting`, `ir.Limit`, `ir.Budget`).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal, Union

import attrs

from nasir import ir, ops
from nasir.source import Span, span_field


# ---- ops and op sets ------------------------------------------------------------------------
@attrs.frozen
class OpArg:
    """`k = 5` inside a parametric op; `value` is a number, a bool or a name (a string)."""

    name: str
    value: Any
    span: Span | None = span_field()


@attrs.frozen
class OpItem:
    """An op as written in a set or on an edge: a name, or a parametric op `mbconv(k = 5)` whose
    arguments keep the written order (docs/ops.md); `args` is None when written without parentheses."""

    name: str
    args: tuple[OpArg, ...] | None = None
    span: Span | None = span_field()

    def text(self) -> str:
        return self.name if self.args is None else ops.op_text(self.name, [(a.name, a.value) for a in self.args])


@attrs.frozen
class SetRef:
    """A name in a set expression: an op set or a single op."""

    name: str
    span: Span | None = span_field()

    def text(self) -> str:
        return self.name


@attrs.frozen
class SetLit:
    """`{a, b(k = 3), ...}`."""

    items: tuple[OpItem, ...]
    span: Span | None = span_field()

    def text(self) -> str:
        return "{" + ", ".join(i.text() for i in self.items) + "}"


@attrs.frozen
class SetDiff:
    """`left - right`: the ops of left that are not in right."""

    left: SetExpr
    right: SetExpr
    span: Span | None = span_field()

    def text(self) -> str:
        return f"{self.left.text()} - {self.right.text()}"


@attrs.frozen
class SetUnion:
    """`left + right`: the ops of left, then those of right not in left."""

    left: SetExpr
    right: SetExpr
    span: Span | None = span_field()

    def text(self) -> str:
        return f"{self.left.text()} + {self.right.text()}"


SetExpr = Union[SetRef, SetLit, SetDiff, SetUnion]


# ---- cell statements ------------------------------------------------------------------------
# `kind` is the statement's keyword: diagnostics name it, and `like` replaces inherited statements by kind.
@attrs.frozen
class InputsStmt:
    kind: ClassVar[str] = "inputs"
    nodes: tuple[ir.Node, ...]
    span: Span | None = span_field()


@attrs.frozen
class NodeOne:
    node: ir.Node


@attrs.frozen
class NodeRange:
    """`first..last`, expanded by the resolver (n0..n3 -> n0, n1, n2, n3)."""

    first: ir.Node
    last: ir.Node
    span: Span | None = span_field()


NodeItem = Union[NodeOne, NodeRange]


@attrs.frozen
class NodesStmt:
    kind: ClassVar[str] = "nodes"
    items: tuple[NodeItem, ...]
    span: Span | None = span_field()


@attrs.frozen
class Endpoint:
    """One end of an edge pattern: `*` (any), `inputs`, a node name, or a name pattern `n*` (glob)."""

    kind: Literal["any", "inputs", "name", "glob"]
    name: str
    span: Span | None = span_field()


@attrs.frozen
class EdgeChoice:
    """`choice(SET)`: a searchable edge."""

    ops: SetExpr
    span: Span | None = span_field()


@attrs.frozen
class EdgeFixed:
    """One op (maybe parametric): a fixed edge."""

    op: OpItem
    span: Span | None = span_field()


@attrs.frozen
class EdgesStmt:
    kind: ClassVar[str] = "edges"
    src: Endpoint
    dst: Endpoint
    op: EdgeChoice | EdgeFixed
    span: Span | None = span_field()


@attrs.frozen
class Term:
    """`op(src)` on the right of an equation."""

    op: str
    src: str
    op_span: Span | None = span_field()
    src_span: Span | None = span_field()
    span: Span | None = span_field()


@attrs.frozen
class EquationStmt:
    """`n2 = sep_conv_3x3(n0) + skip_connect(c_k1)`: fixed edges into a node it defines."""

    kind: ClassVar[str] = "equation"
    target: ir.Node
    terms: tuple[Term, ...]
    span: Span | None = span_field()


@attrs.frozen
class OutputStmt:
    """`output concat(...)`, `output NODE` (kind "node", one item), `output mean(...)`."""

    kind: ClassVar[str] = "output"
    form: Literal["concat", "node", "mean"]
    items: tuple[NodeItem, ...]
    span: Span | None = span_field()


@attrs.frozen
class RecurrentStmt:
    kind: ClassVar[str] = "recurrent"
    span: Span | None = span_field()


@attrs.frozen
class KeepStmt:
    """`keep K inputs per node`."""

    kind: ClassVar[str] = "keep"
    k: int
    span: Span | None = span_field()


@attrs.frozen
class StrideStmt:
    """`stride S from inputs`; the resolver accepts 1 and 2."""

    kind: ClassVar[str] = "stride"
    stride: int
    stride_span: Span | None = span_field()
    span: Span | None = span_field()


@attrs.frozen
class TopologyStmt:
    """`topology inputs K` / `outputs K` / `outputs any` (the stretchable cell's topology variables)."""

    kind: ClassVar[str] = "topology"
    topology: ir.Topology
    span: Span | None = span_field()


CellStmt = Union[InputsStmt, NodesStmt, EdgesStmt, EquationStmt, OutputStmt, RecurrentStmt, KeepStmt, StrideStmt,
                 TopologyStmt]  # fmt: skip


# ---- network statements ---------------------------------------------------------------------
@attrs.frozen
class InputStmt:
    """`input(C, H, W)`."""

    kind: ClassVar[str] = "input"
    shape: tuple[ir.Expr, ir.Expr, ir.Expr]
    span: Span | None = span_field()


@attrs.frozen
class StemStmt:
    kind: ClassVar[str] = "stem"
    layers: tuple[ir.Layer, ...]
    span: Span | None = span_field()


@attrs.frozen
class HeadStmt:
    kind: ClassVar[str] = "head"
    layers: tuple[ir.Layer, ...]
    span: Span | None = span_field()


@attrs.frozen
class StackStmt:
    """`stack COUNT cells(C): CELL [, REDUCE at 1/3, 2/3]`."""

    kind: ClassVar[str] = "stack"
    count: ir.Expr
    channels: ir.Expr
    cell: str
    reduce: str | None
    at: tuple[ir.Frac, ...]
    cell_span: Span | None = span_field()
    reduce_span: Span | None = span_field()
    span: Span | None = span_field()


@attrs.frozen
class ResidualStmt:
    """`residual(C)`: NAS-Bench-201's residual reduction block."""

    kind: ClassVar[str] = "residual"
    channels: ir.Expr
    span: Span | None = span_field()


@attrs.frozen
class AuxiliaryStmt:
    """`auxiliary STYLE at FRAC [if EXPR]`."""

    kind: ClassVar[str] = "auxiliary"
    style: str
    at: ir.Frac
    when: ir.Expr | None
    style_span: Span | None = span_field()
    span: Span | None = span_field()


@attrs.frozen
class LanguageModelStmt:
    """`language_model CELL(tokens = .., ...)` (docs/recurrent.md)."""

    kind: ClassVar[str] = "language_model"
    cell: str
    args: tuple[ir.Arg, ...]
    span: Span | None = span_field()


NetStmt = Union[InputStmt, StemStmt, HeadStmt, StackStmt, ResidualStmt, AuxiliaryStmt, LanguageModelStmt]


# ---- top-level declarations -----------------------------------------------------------------
@attrs.frozen
class IncludeDecl:
    """`include "FILE.cell"`; `path` without the quotes, relative to the file that names it."""

    path: str
    span: Span | None = span_field()


@attrs.frozen
class OpsDecl:
    """`ops "FILE.py"`: a Python file of the user's own ops (docs/ops.md, "Your own ops")."""

    path: str
    span: Span | None = span_field()


@attrs.frozen
class OpsetDecl:
    """`opset NAME = SET`."""

    name: str
    expr: SetExpr
    name_span: Span | None = span_field()
    span: Span | None = span_field()


@attrs.frozen
class CellDecl:
    """`cell NAME [like BASE] { ... }`; the statements in the written order."""

    name: str
    like: str | None
    stmts: tuple[CellStmt, ...]
    like_span: Span | None = span_field()
    span: Span | None = span_field()


@attrs.frozen
class NetworkDecl:
    """`network NAME(PARAMS) { ... }`."""

    name: str
    params: tuple[ir.Param, ...]
    stmts: tuple[NetStmt, ...]
    name_span: Span | None = span_field()
    span: Span | None = span_field()


@attrs.frozen
class SearchDecl:
    """`search { ... }`: its lines in the written order (settings, `limit`s and `budget`s)."""

    items: tuple[ir.Setting | ir.Limit | ir.Budget, ...]
    span: Span | None = span_field()


Decl = Union[IncludeDecl, OpsDecl, OpsetDecl, CellDecl, NetworkDecl, SearchDecl]
