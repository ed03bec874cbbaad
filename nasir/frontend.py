"""Front end: `.cell` text -> syntax tree (lark, positions kept) -> resolved IR (`nasir.ir.Spec`).

Resolution expands what the surface syntax abbreviates (node ranges, edge patterns, `like`,
set expressions, includes) so that the IR is explicit. Every problem becomes a `Diagnostic` with
the span of the offending text; all problems of a file are collected before anything is raised.
"""

from __future__ import annotations

import gc
import re
from contextlib import contextmanager
from functools import cache
from importlib import resources
from pathlib import Path
from typing import TypeVar, Union

from lark import Lark, Token, Transformer, Tree, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken, VisitError

from nasir import ir, limits, ops, scan
from nasir import syntax as syn
from nasir.diagnostics import Diagnostic, DiagnosticBag, DiagnosticError, did_you_mean
from nasir.rnn.space import PRIMITIVES as RECURRENT_OPS
from nasir.source import SourceFile, Span


# Op names a set or an edge may use: the convolutional registry of the current scope (built-ins and the
# op files loaded, docs/ops.md) and the recurrent ops (docs/recurrent.md); the verifier checks that each
# cell uses the ops of its kind.
def known_op(name: str) -> bool:
    return name in RECURRENT_OPS or name in ops.REGISTRY


@cache
def parser(start: str = "start") -> Lark:
    text = resources.files("nasir.grammar").joinpath("cell.lark").read_text(encoding="utf-8")
    # cache=True keeps the LALR tables in the temp directory, keyed by the grammar: `nasir check` starts fast.
    return Lark(text, parser="lalr", start=start, propagate_positions=True, maybe_placeholders=True, cache=True)


# ---- syntax errors ----------------------------------------------------------------------------
_TOKEN_WORDS = {
    "NAME": "a name", "GLOB": "a name pattern", "INT": "an integer", "NUMBER": "a number",
    "STRING": "a quoted path", "$END": "end of file",
}  # fmt: skip


def describe_expected(p: Lark, expected: set[str], token_words: dict[str, str] = _TOKEN_WORDS) -> tuple[str, set[str]]:
    """Lark's expected terminal names as words a user reads ("'{', a name"), and the literal strings among them."""
    words, literals = set(), set()
    for name in expected:
        if name in token_words:
            words.add(token_words[name])
            continue
        try:
            pattern = p.get_terminal(name).pattern
        except KeyError:
            words.add(name.lower())
            continue
        if pattern.type == "str":
            literals.add(pattern.value)
            words.add(f"'{pattern.value}'")
        else:
            words.add(name.lower())
    items = sorted(words)
    if len(items) > 8:
        items = items[:8] + ["..."]
    return ", ".join(items), literals


def _describe_expected(p: Lark, expected: set[str]) -> str:
    return describe_expected(p, expected)[0]


def syntax_diagnostic(source: SourceFile, err: UnexpectedInput, p: Lark) -> Diagnostic:
    if isinstance(err, UnexpectedToken) and err.token.type == "$END":
        err = UnexpectedEOF(err.expected)  # type: ignore[assignment]
    if isinstance(err, UnexpectedEOF):
        end = len(source.text.rstrip())
        return Diagnostic(
            "unexpected end of file; expected " + _describe_expected(p, set(err.expected)),
            source.span(max(0, end - 1), end),
            "is a '}' or ')' missing?",
        )
    if isinstance(err, UnexpectedCharacters):
        ch = source.text[err.pos_in_stream] if err.pos_in_stream < len(source.text) else "?"
        if not source.quote:  # a file that is not a .cell file: name the place, never the content
            return Diagnostic("unexpected character; this is not .cell text", source.span(err.pos_in_stream))
        hint = "comments start with '#'" if ch in "/;" else None
        return Diagnostic(f"unexpected character {ch!r}", source.span(err.pos_in_stream), hint)
    assert isinstance(err, UnexpectedToken)
    tok = err.token
    start = tok.start_pos or 0
    if not source.quote:
        return Diagnostic("unexpected text; this is not .cell text", source.span(start, start + max(1, len(tok.value))))
    # Inside a block the contextual lexer reads a declaration keyword as a name; say what happened.
    line_start = source.text.rfind("\n", 0, start) + 1
    m = _TOP_KEYWORDS.match(source.text[line_start:start].lstrip())
    if m and start > line_start and _depth_at(source.text, line_start) > 0:
        at = line_start + (len(source.text[line_start:start]) - len(source.text[line_start:start].lstrip()))
        return Diagnostic(
            f"'{m.group(1)}' cannot appear inside a block", source.span(at, at + len(m.group(1))),
            "is a '}' missing above?",
        )
    return Diagnostic(
        f"unexpected {tok.value!r}; expected " + _describe_expected(p, set(err.expected)),
        source.span(start, start + max(1, len(tok.value))),
    )


_TOP_KEYWORDS = re.compile(r"\b(include|ops|opset|cell|network|search)\b")


def _depth_at(text: str, offset: int) -> int:
    """How many braces are open at `offset` (comments and strings skipped; nasir/scan.py)."""
    return scan.depth_at(text, offset, scan.CELL)


def _top_level_chunks(text: str) -> list[tuple[int, int]]:
    """(start, end) of each top-level declaration, to re-parse it alone after a syntax error (nasir/scan.py)."""
    return scan.top_level_chunks(text, _TOP_KEYWORDS, scan.CELL)


def parse_tree(source: SourceFile) -> Tree:
    """Parse, or raise every syntax error: one per broken top-level declaration."""
    p = parser()
    try:
        return p.parse(source.text)
    except UnexpectedInput as first:
        diags = [syntax_diagnostic(source, first, p)]
    # Re-parse each top-level declaration alone, blanked into place so positions stay right, to
    # report the errors of the other declarations too (as a compiler resynchronises at `}`).
    seen = {(diags[0].span.line, diags[0].span.col)} if diags[0].span else set()
    for a, b in _top_level_chunks(source.text):
        blank = re.sub(r"[^\n]", " ", source.text[:a]) + source.text[a:b]
        try:
            p.parse(blank)
        except UnexpectedInput as err:
            d = syntax_diagnostic(source, err, p)
            key = (d.span.line, d.span.col) if d.span else None
            if key not in seen and not (d.message.startswith("unexpected end") and b < len(source.text)):
                seen.add(key)
                diags.append(d)
    raise DiagnosticError(diags)


# ---- tree -> raw syntax tree (nasir/syntax.py) ----------------------------------------------
def _build_transformer(source: SourceFile) -> Transformer:
    def sp(meta) -> Span | None:
        if getattr(meta, "empty", True):
            return None
        return source.span(meta.start_pos, meta.end_pos)

    def tsp(tok: Token) -> Span:
        return source.span(tok.start_pos, tok.end_pos)

    def node(tok: Token) -> ir.Node:
        return ir.Node(str(tok), span=tsp(tok))

    def given(items) -> tuple:  # optional children lark leaves as None (maybe_placeholders)
        return tuple(x for x in items if x is not None)

    @v_args(meta=True)
    class T(Transformer):
        def start(self, meta, decls):
            return list(decls)

        def include(self, meta, c):
            return syn.IncludeDecl(str(c[0])[1:-1], span=sp(meta))

        def op_file(self, meta, c):
            return syn.OpsDecl(str(c[0])[1:-1], span=sp(meta))

        def op_plain(self, meta, c):
            return syn.OpItem(str(c[0]), span=tsp(c[0]))

        def op_call(self, meta, c):
            name, *args = c
            return syn.OpItem(str(name), given(args), span=sp(meta))

        def op_arg(self, meta, c):
            v = c[1]
            value = v.value if isinstance(v, ir.Num | ir.Bool) else v.name
            return syn.OpArg(str(c[0]), value, span=sp(meta))

        # op sets
        def opset(self, meta, c):
            return syn.OpsetDecl(str(c[0]), c[1], name_span=tsp(c[0]), span=sp(meta))

        def set_ref(self, meta, c):
            return syn.SetRef(str(c[0]), span=sp(meta))

        def set_lit(self, meta, c):
            return syn.SetLit(given(c), span=sp(meta))

        def set_diff(self, meta, c):
            return syn.SetDiff(c[0], c[1], span=sp(meta))

        def set_union(self, meta, c):
            return syn.SetUnion(c[0], c[1], span=sp(meta))

        # cells
        def cell(self, meta, c):
            name, like, *stmts = c
            return syn.CellDecl(str(name), str(like) if like else None, tuple(stmts),
                                like_span=tsp(like) if like else None, span=sp(meta))  # fmt: skip

        def inputs(self, meta, c):
            return syn.InputsStmt(tuple(node(t) for t in c), span=sp(meta))

        def nodes(self, meta, c):
            return syn.NodesStmt(c[0], span=sp(meta))

        def node_list(self, meta, c):
            return tuple(c)

        def node_one(self, meta, c):
            return syn.NodeOne(node(c[0]))

        def node_range(self, meta, c):
            return syn.NodeRange(node(c[0]), node(c[1]), span=sp(meta))

        def edges(self, meta, c):
            return syn.EdgesStmt(c[0], c[1], c[2], span=sp(meta))

        def ep_any(self, meta, c):
            return syn.Endpoint("any", "*", span=sp(meta))

        def ep_inputs(self, meta, c):
            return syn.Endpoint("inputs", "inputs", span=sp(meta))

        def ep_name(self, meta, c):
            return syn.Endpoint("name", str(c[0]), span=tsp(c[0]))

        def ep_glob(self, meta, c):
            return syn.Endpoint("glob", str(c[0]), span=tsp(c[0]))

        def edge_choice(self, meta, c):
            return syn.EdgeChoice(c[0], span=sp(meta))

        def edge_fixed(self, meta, c):
            return syn.EdgeFixed(c[0], span=c[0].span)

        def equation(self, meta, c):
            return syn.EquationStmt(node(c[0]), tuple(c[1:]), span=sp(meta))

        def term(self, meta, c):
            return syn.Term(str(c[0]), str(c[1]), op_span=tsp(c[0]), src_span=tsp(c[1]), span=sp(meta))

        def output_concat(self, meta, c):
            return syn.OutputStmt("concat", c[0], span=sp(meta))

        def output_node(self, meta, c):
            return syn.OutputStmt("node", (syn.NodeOne(node(c[0])),), span=sp(meta))

        def output_mean(self, meta, c):
            return syn.OutputStmt("mean", c[0], span=sp(meta))

        def recurrent(self, meta, c):
            return syn.RecurrentStmt(span=sp(meta))

        def keep(self, meta, c):
            return syn.KeepStmt(int(c[0]), span=sp(meta))

        def stride(self, meta, c):
            return syn.StrideStmt(int(c[0]), stride_span=tsp(c[0]), span=sp(meta))

        def topo_inputs(self, meta, c):
            return syn.TopologyStmt(ir.Topology("inputs", int(c[0]), span=sp(meta)), span=sp(meta))

        def topo_outputs(self, meta, c):
            return syn.TopologyStmt(ir.Topology("outputs", int(c[0]), span=sp(meta)), span=sp(meta))

        def topo_any(self, meta, c):
            return syn.TopologyStmt(ir.Topology("any", None, span=sp(meta)), span=sp(meta))

        # networks
        def network(self, meta, c):
            name, *rest = c
            params = tuple(x for x in rest if isinstance(x, ir.Param))
            stmts = tuple(x for x in rest if x is not None and not isinstance(x, ir.Param))
            return syn.NetworkDecl(str(name), params, stmts, name_span=tsp(name), span=sp(meta))

        def param(self, meta, c):
            return ir.Param(str(c[0]), c[1], span=tsp(c[0]))

        def net_input(self, meta, c):
            return syn.InputStmt(tuple(c), span=sp(meta))  # type: ignore[arg-type]

        def stem(self, meta, c):
            return syn.StemStmt(tuple(c), span=sp(meta))

        def head(self, meta, c):
            return syn.HeadStmt(tuple(c), span=sp(meta))

        def layer(self, meta, c):
            name, *args = c
            if len(args) == 1 and args[0] is None:  # written without parentheses
                return ir.Layer(str(name), None, span=sp(meta))
            return ir.Layer(str(name), given(args), span=sp(meta))

        def stack(self, meta, c):
            count, channels, cell, reduce, *fracs = c
            return syn.StackStmt(count, channels, str(cell), str(reduce) if reduce else None, given(fracs),
                                 cell_span=tsp(cell), reduce_span=tsp(reduce) if reduce else None, span=sp(meta))  # fmt: skip

        def frac(self, meta, c):
            return ir.Frac(int(c[0]), int(c[1]), span=sp(meta))

        def residual(self, meta, c):
            return syn.ResidualStmt(c[0], span=sp(meta))

        def auxiliary(self, meta, c):
            return syn.AuxiliaryStmt(str(c[0]), c[1], c[2], style_span=tsp(c[0]), span=sp(meta))

        def language_model(self, meta, c):
            name, *args = c
            return syn.LanguageModelStmt(str(name), given(args), span=sp(meta))

        # search
        def search(self, meta, c):
            return syn.SearchDecl(tuple(c), span=sp(meta))

        def limit(self, meta, c):
            return ir.Limit(str(c[0]), int(c[1]), span=sp(meta))

        def budget(self, meta, c):
            return ir.Budget(str(c[0]), c[1], span=sp(meta))

        def setting(self, meta, c):
            v = c[1]
            if isinstance(v, ir.BinOp) and v.op == "-" and isinstance(v.left, ir.Var) and isinstance(v.right, ir.Var):
                # `select strength-star`: one dashed name (README "Search methods"), not a subtraction of two
                # names, so that the canonical text prints it as one word (it printed `strength - star`)
                v = ir.Var(f"{v.left.name}-{v.right.name}", span=v.span)
            return ir.Setting(str(c[0]), v, span=sp(meta))

        def call(self, meta, c):
            name, *args = c
            return ir.Call(str(name), tuple(a for a in args if a is not None), span=sp(meta))

        def arg_pos(self, meta, c):
            return ir.Arg(None, c[0], span=sp(meta))

        def arg_kw(self, meta, c):
            return ir.Arg(str(c[0]), c[1], span=sp(meta))

        # expressions
        def number(self, meta, c):
            return ir.Num(parse_number(str(c[0])), str(c[0]), span=sp(meta))

        def var(self, meta, c):
            return ir.Var(str(c[0]), span=sp(meta))

        def true(self, meta, c):
            return ir.Bool(True, span=sp(meta))

        def false(self, meta, c):
            return ir.Bool(False, span=sp(meta))

        def neg(self, meta, c):
            return ir.Neg(c[0], span=sp(meta))

        def _bin(op):  # noqa: N805 - a factory used in the class body
            def f(self, meta, c):
                return ir.BinOp(op, c[0], c[1], span=sp(meta))

            return f

        add, sub, mul, div = _bin("+"), _bin("-"), _bin("*"), _bin("/")

    return T()


_SUFFIX = {"k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9}


def parse_number(text: str) -> int | float:
    scale = 1.0
    if text[-1] in _SUFFIX:
        scale, text = _SUFFIX[text[-1]], text[:-1]
    if scale == 1.0 and re.fullmatch(r"[0-9]+", text):
        return int(text)
    value = float(text) * scale
    return int(value) if scale != 1.0 and value.is_integer() else value


# `atom` is a parenthesised expression in the trees of nasir fmt (keep_all_tokens keeps it a node).
_NESTING_RULES = frozenset({"add", "sub", "mul", "div", "neg", "set_diff", "set_union", "atom"})


def _check_nesting(source: SourceFile, tree: Tree) -> None:
    """Refuse expressions nested deeper than limits.MAX_EXPR_DEPTH before anything recurses over them.

    The LALR parser is iterative, but the tree transformer, the printer and the evaluator recurse:
    a 600-term sum `1 + 1 + ...` would end in RecursionError. Heights are computed iteratively.
    """
    height: dict[int, int] = {}
    stack: list[tuple[Tree, bool]] = [(tree, False)]
    while stack:
        t, done = stack.pop()
        kids = [c for c in t.children if isinstance(c, Tree)]
        if not done:
            stack.append((t, True))
            stack.extend((c, False) for c in kids)
            continue
        own = 1 if t.data in _NESTING_RULES else 0
        height[id(t)] = own + max((height[id(c)] for c in kids), default=0)
    diags = []
    todo = [tree]
    while todo:  # report the outermost too-deep expressions only
        t = todo.pop()
        if t.data in _NESTING_RULES and height[id(t)] > limits.MAX_EXPR_DEPTH:
            span = source.span(t.meta.start_pos, t.meta.end_pos) if not getattr(t.meta, "empty", True) else None
            diags.append(Diagnostic(f"expression nested {height[id(t)]} levels deep; at most {limits.MAX_EXPR_DEPTH}", span,
                                    "split it with a network parameter, e.g. 'a = ...' then use 'a'"))  # fmt: skip
            continue
        todo.extend(c for c in t.children if isinstance(c, Tree))
    if diags:
        raise DiagnosticError(diags)


def parse_decls(source: SourceFile) -> list:
    tree = parse_tree(source)
    _check_nesting(source, tree)
    try:
        return _build_transformer(source).transform(tree)
    except VisitError as e:  # never show lark internals
        if isinstance(e.orig_exc, DiagnosticError):
            raise e.orig_exc from None
        raise


# ---- resolution -----------------------------------------------------------------------------
_RANGE = re.compile(r"^(.*?)(\d+)$")
_T = TypeVar("_T")
# Statements a cell has at most once (a second one is an error; `like` replaces an inherited one).
_SINGLE_CELL_STMTS = (syn.InputsStmt, syn.OutputStmt, syn.KeepStmt, syn.StrideStmt, syn.TopologyStmt, syn.RecurrentStmt)


class _Singles(dict):
    """The last statement of each once-only kind, keyed by its class."""

    def get_(self, cls: type[_T]) -> _T | None:
        return self.get(cls)


class Resolver:
    def __init__(self, bag: DiagnosticBag):
        self.bag = bag
        self.opsets: dict[str, ir.OpSet] = {}
        self.raw_cells: dict[str, syn.CellDecl] = {}

    def op_name(self, item: syn.OpItem) -> str | None:
        """The op an item names (a parametric op: its canonical text), or None after reporting why not."""
        if item.args is None:
            if not known_op(item.name):
                self.bag.error(item.span, f"unknown op '{item.name}'", ops.unknown_op_hint(item.name))
                return None
            fam = ops.active().family(item.name)
            if fam is not None and fam.signature:
                problems = fam.check_args([])
                if problems:
                    self.bag.error(item.span, problems[0][1], f"write {fam.name}(name = value, ...)")
                    return None
            return item.name
        fam = ops.active().family(item.name)
        if fam is None:
            self.bag.error(item.span, f"unknown op '{item.name}'", ops.unknown_op_hint(item.name))
            return None
        problems = fam.check_args([(a.name, a.value) for a in item.args])
        for i, message in problems:
            span = item.args[i].span if 0 <= i < len(item.args) else item.span
            hint = None if fam.signature else "it is not a parametric op"
            self.bag.error(span, message, hint)
        if problems:
            return None
        return fam.bind({a.name: a.value for a in item.args}).name

    # op sets
    def eval_set(self, e: syn.SetExpr) -> tuple[str, ...] | None:
        if isinstance(e, syn.SetRef):
            if e.name in self.opsets:
                return self.opsets[e.name].ops
            if known_op(e.name):
                return (e.name,)
            self.bag.error(e.span, f"unknown op or op set '{e.name}'", did_you_mean(e.name, [*self.opsets, *ops.REGISTRY, *RECURRENT_OPS]))
            return None
        if isinstance(e, syn.SetLit):
            out: list[str] = []
            for item in e.items:
                name = self.op_name(item)
                if name is None:
                    continue
                if name in out:
                    self.bag.error(item.span, f"op '{name}' listed twice")
                else:
                    out.append(name)
            return tuple(out)
        a, b = self.eval_set(e.left), self.eval_set(e.right)
        if a is None or b is None:
            return None
        if isinstance(e, syn.SetDiff):
            for name in b:
                if name not in a:
                    self.bag.warning(e.right.span, f"'{name}' is not in '{e.left.text()}'; removing it changes nothing")
            return tuple(x for x in a if x not in b)
        return a + tuple(x for x in b if x not in a)

    def opset(self, d: syn.OpsetDecl) -> ir.OpSet | None:
        name, expr, span, name_span = d.name, d.expr, d.span, d.name_span
        if known_op(name):
            self.bag.error(name_span, f"op set '{name}' has the name of an op")
        result = self.eval_set(expr)
        if result is None:
            return None
        if not result:
            self.bag.error(expr.span, f"op set '{name}' is empty")
        os_ = ir.OpSet(name, result, expr.text(), span=span)
        if name in self.opsets:
            self.bag.error(name_span, f"op set '{name}' is defined twice", f"first defined at {self.opsets[name].span}")
        else:
            self.opsets[name] = os_
        return os_

    # cells
    def cell_stmts(self, raw: syn.CellDecl, chain: tuple[str, ...] = ()) -> list[syn.CellStmt]:
        if raw.like is None:
            return list(raw.stmts)
        if raw.like in chain or raw.like == raw.name:
            self.bag.error(raw.like_span, f"cell '{raw.name}' is derived from itself through 'like'")
            return list(raw.stmts)
        base = self.raw_cells.get(raw.like)
        if base is None:
            self.bag.error(raw.like_span, f"'like' names an unknown cell '{raw.like}'", did_you_mean(raw.like, self.raw_cells))
            return list(raw.stmts)
        inherited = self.cell_stmts(base, chain + (raw.name,))
        own_kinds = {s.kind for s in raw.stmts}
        graph = {"nodes", "edges", "equation"}
        replaced = own_kinds | (graph if own_kinds & graph else set())
        return [s for s in inherited if s.kind not in replaced] + list(raw.stmts)

    def expand(self, items: tuple[syn.NodeItem, ...]) -> list[ir.Node]:
        out: list[ir.Node] = []
        for item in items:
            if isinstance(item, syn.NodeOne):
                out.append(item.node)
                continue
            a, b, span = item.first, item.last, item.span
            ma, mb = _RANGE.match(a.name), _RANGE.match(b.name)
            if not (ma and mb and ma.group(1) == mb.group(1)):
                self.bag.error(span, f"cannot expand range '{a.name}..{b.name}'", "a range runs over one prefix with numbers, like n0..n3")
                continue
            lo, hi = int(ma.group(2)), int(mb.group(2))
            if lo > hi:
                self.bag.error(span, f"range '{a.name}..{b.name}' is empty")
            if hi - lo + 1 > limits.MAX_RANGE:
                self.bag.error(span, f"range '{a.name}..{b.name}' has {hi - lo + 1:,} nodes; a range has at most {limits.MAX_RANGE:,}")
                continue
            out.extend(ir.Node(f"{ma.group(1)}{i}", span=span) for i in range(lo, hi + 1))
        return out

    def cell(self, raw: syn.CellDecl) -> ir.Cell:
        before = self.bag.error_count
        stmts = self.cell_stmts(raw)
        if self.bag.error_count > before:  # a broken 'like': its consequences would only be noise
            return ir.Cell(raw.name, (), (), (), None, span=raw.span)
        singles = _Singles()
        for s in stmts:
            if isinstance(s, _SINGLE_CELL_STMTS):
                if type(s) in singles and s in raw.stmts and singles[type(s)] in raw.stmts:
                    self.bag.error(s.span, f"cell '{raw.name}' has a second '{s.kind}' statement")
                singles[type(s)] = s
        inputs_stmt = singles.get_(syn.InputsStmt)
        inputs = inputs_stmt.nodes if inputs_stmt is not None else ()
        if not inputs:
            self.bag.error(raw.span, f"cell '{raw.name}' declares no inputs", "add e.g. 'inputs c_k2, c_k1'")
        nodes: list[ir.Node] = []
        for s in stmts:
            if isinstance(s, syn.NodesStmt):
                nodes.extend(self.expand(s.items))
            elif isinstance(s, syn.EquationStmt) and s.target.name not in {n.name for n in nodes}:
                nodes.append(s.target)
        if len(nodes) > limits.MAX_NODES_PER_CELL:
            self.bag.error(raw.span, f"cell '{raw.name}' has {len(nodes):,} nodes; a cell has at most {limits.MAX_NODES_PER_CELL:,}")
            return ir.Cell(raw.name, (), (), (), None, span=raw.span)
        states = [n.name for n in inputs] + [n.name for n in nodes]
        node_names = [n.name for n in nodes]
        edges: list[ir.Edge] = []
        defined_by_equation: dict[str, Span | None] = {}
        for s in stmts:
            if isinstance(s, syn.EdgesStmt):
                edges.extend(self.edge_pattern(s, inputs, node_names, states))
            elif isinstance(s, syn.EquationStmt):
                target = s.target
                if target.name in defined_by_equation:
                    self.bag.error(target.span, f"node '{target.name}' is defined twice", f"first defined at {defined_by_equation[target.name]}")
                    continue
                defined_by_equation[target.name] = target.span
                for t in s.terms:
                    if not known_op(t.op):
                        self.bag.error(t.op_span, f"unknown op '{t.op}'", ops.unknown_op_hint(t.op))
                        continue
                    if t.src not in states:
                        self.bag.error(t.src_span, f"unknown node '{t.src}' in cell '{raw.name}'", did_you_mean(t.src, states))
                        continue
                    edges.append(ir.Edge(t.src, target.name, op=t.op, span=t.span))
        output = None
        out_stmt = singles.get_(syn.OutputStmt)
        if out_stmt is not None:
            names = self.expand(out_stmt.items)
            for n in names:
                if n.name not in states:
                    self.bag.error(n.span, f"output names unknown node '{n.name}'", did_you_mean(n.name, states))
            output = ir.Output(out_stmt.form, tuple(n.name for n in names), span=out_stmt.span)
        else:
            hint = "add 'output mean(...)'" if syn.RecurrentStmt in singles else "add 'output concat(...)' or 'output NODE'"
            self.bag.error(raw.span, f"cell '{raw.name}' has no output", hint)
        keep, stride, topo = singles.get_(syn.KeepStmt), singles.get_(syn.StrideStmt), singles.get_(syn.TopologyStmt)
        if stride is not None and stride.stride not in (1, 2):
            self.bag.error(stride.stride_span, f"stride {stride.stride} is not supported", "cells reduce by 'stride 2 from inputs'")
        if topo is not None:
            codes = topology_codes(topo.topology, edges)
            if codes > limits.MAX_TOPOLOGY_CODES:
                self.bag.error(topo.span, f"this topology has {codes:,} codes (topology variables); a cell has at most {limits.MAX_TOPOLOGY_CODES:,}",
                               "'outputs any' has 2**n codes for a node with n successors; pick k with 'outputs k' or 'inputs k'")  # fmt: skip
        return ir.Cell(
            raw.name, inputs, tuple(nodes), tuple(edges), output,
            reduction=stride is not None and stride.stride == 2,
            keep=keep.k if keep else None, keep_span=keep.span if keep else None,
            topology=topo.topology if topo else None, recurrent=syn.RecurrentStmt in singles, span=raw.span,
        )  # fmt: skip

    def edge_pattern(self, s: syn.EdgesStmt, inputs, node_names: list[str], states: list[str]) -> list[ir.Edge]:
        skind, sname, sspan = s.src.kind, s.src.name, s.src.span
        dkind, dname, dspan = s.dst.kind, s.dst.name, s.dst.span
        op = s.op
        input_names = [n.name for n in inputs]

        def match(kind: str, name: str, span, pool: list[str], role: str) -> list[str] | None:
            if kind == "any":
                return list(pool)
            if kind == "inputs":
                if role == "destination":
                    self.bag.error(span, "edges cannot enter a cell input", "inputs are computed by the previous cells")
                    return None
                return list(input_names)
            if kind == "glob":
                found = [x for x in pool if x.startswith(name[:-1])]
                if not found:
                    self.bag.error(span, f"pattern '{name}' matches no {role} node")
                    return None
                return found
            if name not in states:
                self.bag.error(span, f"unknown node '{name}'", did_you_mean(name, states))
                return None
            return [name]

        srcs = match(skind, sname, sspan, states, "source")
        dsts = match(dkind, dname, dspan, node_names if dkind != "name" else states, "destination")
        if isinstance(op, syn.EdgeChoice):
            cands = self.eval_set(op.ops)
            if cands is not None and not cands:
                self.bag.error(op.ops.span, "the op set of this choice is empty")
            choice = ir.Choice(cands or (), op.ops.text(), span=op.span) if cands is not None else None
            fixed = None
        else:
            choice = None
            item = op.op
            if item.args is None and item.name in self.opsets:
                self.bag.error(op.span, f"unknown op '{item.name}'", f"'{item.name}' is an op set; write choice({item.name})")
                fixed = None
            else:
                fixed = self.op_name(item)
        if srcs is None or dsts is None or (choice is None and fixed is None):
            return []
        if len(srcs) * len(dsts) > 4 * limits.MAX_EDGES_PER_CELL:  # too many even before ordering: do not build them
            self.bag.error(s.span, f"this edge pattern makes up to {len(srcs) * len(dsts):,} edges; a cell has at most {limits.MAX_EDGES_PER_CELL:,}")
            return []
        patterned = skind != "name" or dkind != "name"
        order = {x: i for i, x in enumerate(states)}
        out = [
            ir.Edge(a, b, op=fixed, choice=choice, span=s.span)
            for b in dsts
            for a in srcs
            if not patterned or order[a] < order[b]
        ]
        if not out:
            self.bag.error(s.span, "this edge pattern matches no edge", "sources must come before destinations")
        if len(out) > limits.MAX_EDGES_PER_CELL:
            self.bag.error(s.span, f"this edge pattern makes {len(out):,} edges; a cell has at most {limits.MAX_EDGES_PER_CELL:,}")
            return []
        return out


def topology_codes(t: ir.Topology, edges: list[ir.Edge]) -> int:
    """How many topology variables (beta) passes/topology.py will create, counted without listing them:
    per deciding node, C(n, min(k, n)) codes for `inputs k`, C(n, k) for `outputs k` (none when
    n < k), 2**n for `outputs any`, where n is the number of distinct predecessors (successors) over
    searchable edges."""
    from math import comb

    around: dict[str, set[str]] = {}
    for e in edges:
        if e.is_choice:
            key, other = (e.dst, e.src) if t.kind == "inputs" else (e.src, e.dst)
            around.setdefault(key, set()).add(other)
    if t.kind == "any":
        return sum(2 ** len(v) for v in around.values())
    if t.kind == "outputs":  # a state with fewer than k successors has no code: C(n, k) = 0
        return sum(comb(len(v), t.k or 0) for v in around.values())
    return sum(comb(len(v), min(t.k or 0, len(v))) for v in around.values())


def _network(bag: DiagnosticBag, d: syn.NetworkDecl) -> ir.Network:
    name = d.name
    singles = _Singles()
    stems: list[tuple[ir.Layer, ...]] = []
    body: list[ir.Stack | ir.Residual] = []
    for s in d.stmts:
        if isinstance(s, syn.InputStmt | syn.HeadStmt | syn.AuxiliaryStmt):
            if type(s) in singles:
                bag.error(s.span, f"network '{name}' has a second '{s.kind}' statement")
            singles[type(s)] = s
        elif isinstance(s, syn.StemStmt):
            stems.append(s.layers)
        elif isinstance(s, syn.StackStmt):
            body.append(ir.Stack(s.count, s.channels, s.cell, s.reduce, s.at, span=s.span))
        elif isinstance(s, syn.ResidualStmt):
            body.append(ir.Residual(s.channels, span=s.span))
        elif isinstance(s, syn.LanguageModelStmt):
            if type(s) in singles:
                bag.error(s.span, f"network '{name}' has a second 'language_model' statement")
            singles[type(s)] = s
    lm = singles.get_(syn.LanguageModelStmt)
    if lm is not None:  # a language model (docs/recurrent.md): the recurrent cell is the whole body
        for other in [x for x in d.stmts if x.kind != "language_model"]:
            bag.error(other.span, f"a language-model network has no '{other.kind}' statement",
                      "the language_model statement is the whole network: embedding, recurrent cell, tied decoder")  # fmt: skip
    elif len(stems) > 2:
        bag.error(d.span, f"network '{name}' has {len(stems)} stems; at most two (CIFAR: one, ImageNet: two)")
    if not body and lm is None:
        bag.error(d.name_span, f"network '{name}' stacks no cells", "add e.g. 'stack layers cells(C): normal, reduce at 1/3, 2/3'")
    inp, aux, head = singles.get_(syn.InputStmt), singles.get_(syn.AuxiliaryStmt), singles.get_(syn.HeadStmt)
    return ir.Network(
        name, d.params, inp.shape if inp else None, tuple(stems), tuple(body),
        ir.Auxiliary(aux.style, aux.at, aux.when, span=aux.span) if aux else None, head.layers if head else (),
        language_model=ir.LanguageModel(lm.cell, lm.args, span=lm.span) if lm is not None else None, span=d.span,
    )  # fmt: skip


# ---- entry points ---------------------------------------------------------------------------
@contextmanager
def gc_paused():
    """Pause Python's cyclic garbage collector while a spec is parsed and resolved.

    Parsing builds many small objects (tokens, trees, spans) and frees nothing cyclic; the collector's
    repeated passes over the growing heap made a 16x larger file take ~24x as long (measured with
    benchmarks/scaling.py; the call count grows exactly 4x per 4x input). Reference counting still
    frees everything; the collector runs again afterwards. Nested uses are harmless.
    """
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


# What load_decls returns: resolved file references, and the other declarations as written.
Loaded = Union[ir.Include, ir.OpFile, syn.OpsetDecl, syn.CellDecl, syn.NetworkDecl, syn.SearchDecl]


def load_decls(path: Path, source: SourceFile, bag: DiagnosticBag, stack: tuple[Path, ...] = (), *,
               root: Path | None = None, allow_outside: bool = False, loaded: set[Path] | None = None) -> list[Loaded]:  # fmt: skip
    """Parse a file and, depth first, the files it includes; included declarations come first.
    Includes and op files come back resolved (`ir.Include`, `ir.OpFile`), the rest as written (nasir/syntax.py).

    An include resolves relative to the including file and must stay inside `root` (the directory
    of the file nasir was given) unless `allow_outside`; only regular files are read (issue 14.11).
    A file is read once per spec (`loaded`): a second include of it, directly or through another
    file, adds nothing, so a diamond or a file included twice costs one read, not 2**depth;
    at most limits.MAX_INCLUDES files are included in all.
    """
    root = root if root is not None else path.resolve().parent
    loaded = loaded if loaded is not None else set()
    decls = parse_decls(source)
    out: list[Loaded] = []
    for d in decls:
        if isinstance(d, syn.OpsDecl):
            op_file = _op_file(path, d, bag, root, allow_outside)
            if op_file is not None:
                out.append(op_file)
            continue
        if isinstance(d, syn.IncludeDecl):
            include = ir.Include(d.path, span=d.span)
            if "\x00" in d.path:
                bag.error(d.span, "an include path cannot contain a NUL character")
                continue
            target = (path.parent / d.path).resolve()
            if target in stack or target == path.resolve():
                bag.error(d.span, f"'{d.path}' includes itself")
                continue
            if not allow_outside and not target.is_relative_to(root):
                bag.error(d.span, f"'{d.path}' is outside {root}, the directory of the spec",
                          "includes stay in the spec's directory tree; pass --allow-include-outside "
                          "(API: allow_include_outside=True) to read it")  # fmt: skip
                continue
            if Path(d.path).suffix != ".cell":
                bag.error(d.span, f"cannot include '{d.path}': only .cell files are included")
                continue
            if target in loaded:
                out.append(include)
                continue
            if len(loaded) >= limits.MAX_INCLUDES:
                bag.error(d.span, f"cannot include '{d.path}': a spec includes at most {limits.MAX_INCLUDES} files")
                continue
            loaded.add(target)
            try:
                sub = read_regular(target, name=str(path.parent / d.path))
            except ReadError as e:
                bag.error(d.span, f"cannot include '{d.path}': {e}")
                continue
            try:
                sub_decls = load_decls(target, sub, bag, stack + (path.resolve(),), root=root, allow_outside=allow_outside,
                                       loaded=loaded)  # fmt: skip
                out.extend(x for x in sub_decls if not isinstance(x, ir.Include))
            except DiagnosticError as e:
                bag.items.extend(e.diagnostics)
            out.append(include)
            continue
        out.append(d)
    return out


def _op_file(path: Path, d: syn.OpsDecl, bag: DiagnosticBag, root: Path, allow_outside: bool) -> ir.OpFile | None:
    """`ops "FILE"`: resolved like an include (relative to the naming file, inside the spec's directory
    tree unless allowed), a regular `.py` file; loaded later by `_load_op_files`."""
    if "\x00" in d.path:
        bag.error(d.span, "an ops path cannot contain a NUL character")
        return None
    target = (path.parent / d.path).resolve()
    if not allow_outside and not target.is_relative_to(root):
        bag.error(d.span, f"'{d.path}' is outside {root}, the directory of the spec",
                  "op files stay in the spec's directory tree like includes; pass --allow-include-outside "
                  "(API: allow_include_outside=True) to load it")  # fmt: skip
        return None
    if Path(d.path).suffix != ".py":
        bag.error(d.span, f"cannot load ops from '{d.path}': an op file is a Python file (.py)")
        return None
    if not target.is_file():
        why = "no such file" if not target.exists() else "not a regular file"
        bag.error(d.span, f"cannot load ops from '{d.path}': {why}")
        return None
    return ir.OpFile(d.path, resolved=str(target), span=d.span)


def _load_op_files(files: list[ir.OpFile], bag: DiagnosticBag) -> list[ir.OpFile]:
    """Import each op file once into the current scope's registry (nasir/ops.py): this runs the
    user's code, which the spec named explicitly (docs/ops.md, "Your own ops")."""
    out: list[ir.OpFile] = []
    for f in files:
        if any(g.resolved == f.resolved for g in out):
            continue
        try:
            ops.load_file(f.resolved)
        except ops.OpFileError as e:
            bag.error(f.span, f"cannot load ops from '{f.path}': {e}")
            continue
        out.append(f)
    return out


class ReadError(Exception):
    """Why a file was not read (its message completes "cannot read 'PATH': ...")."""


def read_regular(path: Path, name: str | None = None) -> SourceFile:
    """The text of a regular file, at most limits.MAX_SOURCE_BYTES; its lines are quoted in diagnostics
    only if it is a .cell file. A FIFO, a device (/dev/zero), a directory is refused without reading:
    the file is opened non-blocking (a FIFO without writer would block) and checked by fstat."""
    import os
    import stat

    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        raise ReadError(e.strerror or str(e)) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = "a directory" if stat.S_ISDIR(st.st_mode) else "a FIFO" if stat.S_ISFIFO(st.st_mode) else "not a regular file"
            raise ReadError(f"{kind}; only regular files are read" if kind != "not a regular file" else kind)
        if st.st_size > limits.MAX_SOURCE_BYTES:
            raise ReadError(f"{st.st_size:,} bytes; a spec is at most {limits.MAX_SOURCE_BYTES:,}")
        chunks, total = [], 0
        while True:  # read to the end, but never more than the limit (the file may grow meanwhile)
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            total += len(chunk)
            if total > limits.MAX_SOURCE_BYTES:
                raise ReadError(f"more than {limits.MAX_SOURCE_BYTES:,} bytes; a spec is at most that")
            chunks.append(chunk)
    except OSError as e:
        raise ReadError(e.strerror or str(e)) from None
    finally:
        os.close(fd)
    name = str(path) if name is None else name
    return SourceFile(name, decode_text(b"".join(chunks)), quote=name.endswith(".cell"))


def decode_text(data: bytes) -> str:
    """UTF-8 bytes -> text. A leading UTF-8 byte-order mark (some Windows editors write one) is not part
    of the text: it is dropped, so line 1, column 1 is the first character written (issue 16)."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ReadError("not UTF-8 text") from None


STDIN_NAME = "<stdin>"


def read_stdin() -> SourceFile:
    """Standard input as a spec (`nasir check -`), named `<stdin>` as `nasir import -` names it; at most
    limits.MAX_SOURCE_BYTES, UTF-8, a byte-order mark dropped (`decode_text`). Its includes and op files
    resolve from the current directory, the spec's directory tree being that directory."""
    import sys

    stream = getattr(sys.stdin, "buffer", None)
    try:
        if stream is not None:
            data = stream.read(limits.MAX_SOURCE_BYTES + 1)
            too_long = len(data) > limits.MAX_SOURCE_BYTES
            text = "" if too_long else decode_text(data)
        else:  # a text stream without bytes underneath (an embedding program's own stdin)
            text = sys.stdin.read(limits.MAX_SOURCE_BYTES + 1) if sys.stdin is not None else ""
            too_long = len(text.encode("utf-8")) > limits.MAX_SOURCE_BYTES
            text = text.removeprefix("\ufeff")
    except ReadError as e:
        raise DiagnosticError([Diagnostic(f"cannot read {STDIN_NAME}: {e}")]) from None
    except OSError as e:
        raise DiagnosticError([Diagnostic(f"cannot read {STDIN_NAME}: {e.strerror or e}")]) from None
    if too_long:
        raise DiagnosticError([Diagnostic(f"cannot read {STDIN_NAME}: more than {limits.MAX_SOURCE_BYTES:,} bytes; a spec is at most that")])
    return SourceFile(STDIN_NAME, text)


def resolve_spec(source: SourceFile, bag: DiagnosticBag, path: Path | None = None, *,
                 allow_include_outside: bool | None = None) -> tuple[ir.Spec, set[str]]:  # fmt: skip
    """Text -> IR, reporting into `bag`; returns the spec and the names of cells that had errors
    (so that the verifier can skip them rather than report consequences of the same mistake).
    `allow_include_outside`: may includes leave the spec's directory tree? None: the ambient
    setting (`limits.ALLOW_INCLUDE_OUTSIDE`, which the CLI's --allow-include-outside sets)."""
    path = path or Path(source.name)
    if allow_include_outside is None:
        allow_include_outside = limits.ALLOW_INCLUDE_OUTSIDE.get()
    with gc_paused():
        return _resolve(source, bag, path, allow_include_outside)


def _resolve(source: SourceFile, bag: DiagnosticBag, path: Path, allow_include_outside: bool) -> tuple[ir.Spec, set[str]]:
    broken: set[str] = set()
    decls = load_decls(path, source, bag, allow_outside=allow_include_outside)
    res = Resolver(bag)
    includes: list[ir.Include] = []
    op_files = _load_op_files([d for d in decls if isinstance(d, ir.OpFile)], bag)
    opsets, networks = [], []
    search = None
    raw_cells: list[syn.CellDecl] = []
    for d in decls:
        if isinstance(d, ir.Include):
            if d.span is None or d.span.file == source.name:
                includes.append(d)
        elif isinstance(d, ir.OpFile):
            continue
        elif isinstance(d, syn.CellDecl):
            raw_cells.append(d)
            res.raw_cells.setdefault(d.name, d)
        elif isinstance(d, syn.OpsetDecl):
            o = res.opset(d)
            if o is not None:
                opsets.append(o)
        elif isinstance(d, syn.NetworkDecl):
            networks.append(_network(bag, d))
        elif isinstance(d, syn.SearchDecl):
            if search is not None:
                bag.error(d.span, "a second 'search' block", f"the first is at {search.span}")
            search = ir.SearchConfig(
                tuple(x for x in d.items if isinstance(x, ir.Setting)),
                tuple(x for x in d.items if isinstance(x, ir.Limit)),
                tuple(x for x in d.items if isinstance(x, ir.Budget)),
                span=d.span,
            )
    cells = []
    for rc in raw_cells:
        before = bag.error_count
        cells.append(res.cell(rc))
        if bag.error_count > before:
            broken.add(rc.name)
    spec = ir.Spec(source.name, tuple(includes), tuple(opsets), tuple(cells), tuple(networks), search, tuple(bag.items),
                   op_files=tuple(op_files))  # fmt: skip
    return spec, broken


def parse_spec(source: SourceFile, path: Path | None = None, *, allow_include_outside: bool | None = None) -> ir.Spec:
    """Text -> resolved IR. Raises DiagnosticError with every problem found (the verifier runs separately)."""
    bag = DiagnosticBag()
    spec, _ = resolve_spec(source, bag, path, allow_include_outside=allow_include_outside)
    bag.check()
    return spec


def parse_text(text: str, name: str = "<string>") -> ir.Spec:
    return parse_spec(SourceFile(name, text))


def read_source(path: str | Path) -> SourceFile:
    """A spec or genotype file given by the user: a regular file (no FIFO, no device), at most
    limits.MAX_SOURCE_BYTES; lines of a file not named .cell are not quoted in diagnostics."""
    p = Path(path)
    try:
        return read_regular(p)
    except ReadError as e:
        raise DiagnosticError([Diagnostic(f"cannot read '{p}': {e}")]) from None


def parse_file(path: str | Path, *, allow_include_outside: bool | None = None) -> ir.Spec:
    return parse_spec(read_source(path), Path(path), allow_include_outside=allow_include_outside)
