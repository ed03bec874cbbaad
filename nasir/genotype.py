"""Genotypes: DARTS-family `Genotype(...)` text and NAS-Bench-201 strings <-> `.cell` text.

The text is parsed by a grammar (grammar/genotype.lark), never evaluated: a genotype file is the subset
of Python in which the DARTS, PC-DARTS, P-DARTS, SDARTS and AutoDL repositories write genotypes
(imports, assignments, literals, lists, tuples, calls). Every problem becomes a `Diagnostic` pointing at
line:column of the genotype text; all of them are collected before anything is raised.

State indices follow the DARTS code (model.py, `Cell._compile`): 0 and 1 are the cell inputs c_{k-2}
and c_{k-1}, state k + 2 is the k-th intermediate node, which sums the ops of genotype pairs 2k and 2k+1.
In a NAS-Bench-201 string `|op~i|` on node j means op(node i) feeds node j; node 0 is the cell input.
"""

from __future__ import annotations

import contextlib
import contextvars
import re
from collections.abc import Iterator, Sequence
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Union

import attrs
from lark import Lark, Token, Transformer, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken, VisitError

from nasir import ir, limits, ops, printer, scan
from nasir.diagnostics import Diagnostic, DiagnosticBag, DiagnosticError, did_you_mean, error_at
from nasir.frontend import describe_expected, gc_paused, read_source, read_stdin
from nasir.macros import MACRO_CELLS, macro_text
from nasir.source import SourceFile, Span, span_field

FIELDS = ("normal", "normal_concat", "reduce", "reduce_concat")
DARTS_INPUTS = ("c_k2", "c_k1")
NB201_INPUT = "x"

Pair = tuple[str, int]


def _pairs(xs: Sequence[Sequence[Any]]) -> tuple[Pair, ...]:
    return tuple((str(op), int(i)) for op, i in xs)


def _ints(xs: Sequence[Any]) -> tuple[int, ...]:
    return tuple(int(i) for i in xs)


def _nodes(ns: Sequence[Sequence[Sequence[Any]]]) -> tuple[tuple[Pair, ...], ...]:
    return tuple(_pairs(n) for n in ns)


@attrs.frozen
class Genotype:
    """A derived DARTS cell pair: (op, state index) pairs, two per node, and the states each cell concatenates."""

    normal: tuple[Pair, ...] = attrs.field(converter=_pairs)
    normal_concat: tuple[int, ...] = attrs.field(converter=_ints)
    reduce: tuple[Pair, ...] = attrs.field(converter=_pairs)
    reduce_concat: tuple[int, ...] = attrs.field(converter=_ints)
    span: Span | None = span_field()

    def __str__(self) -> str:
        """The string DARTS prints (namedtuple repr with lists), e.g. for `genotypes.py`."""

        def pairs(ps: tuple[Pair, ...]) -> str:
            return "[" + ", ".join(f"('{op}', {i})" for op, i in ps) + "]"

        def ints(xs: tuple[int, ...]) -> str:
            return "[" + ", ".join(str(i) for i in xs) + "]"

        return (
            f"Genotype(normal={pairs(self.normal)}, normal_concat={ints(self.normal_concat)}, "
            f"reduce={pairs(self.reduce)}, reduce_concat={ints(self.reduce_concat)})"
        )


@attrs.frozen
class NB201Arch:
    """A NAS-Bench-201 cell: for nodes 1..3, the (op, source node) pairs feeding it, as written."""

    nodes: tuple[tuple[Pair, ...], ...] = attrs.field(converter=_nodes)
    span: Span | None = span_field()

    def __str__(self) -> str:
        return "+".join("|" + "".join(f"{op}~{i}|" for op, i in node) for node in self.nodes)


@attrs.frozen
class RecurrentGenotype:
    """A derived DARTS recurrent cell: `Genotype(recurrent=[(op, predecessor), ...], concat=...)`
    (docs/recurrent.md); `cell` is the runtime's form (nasir/rnn/space.py)."""

    cell: Any  # nasir.rnn.space.Genotype
    span: Span | None = span_field()

    def __str__(self) -> str:
        return str(self.cell)


AnyGenotype = Union["Genotype", NB201Arch, RecurrentGenotype]


# ---- syntax ---------------------------------------------------------------------------------------
@cache
def parser() -> Lark:
    text = resources.files("nasir.grammar").joinpath("genotype.lark").read_text(encoding="utf-8")
    return Lark(text, parser="lalr", start=["start", "nb201"], propagate_positions=True, maybe_placeholders=True)


@attrs.frozen
class _Py:
    """A Python value as written. kind: str, int, float, none, bool, list, tuple, call, ref."""

    kind: str
    value: Any  # scalar value; tuple of _Py for list/tuple; the dotted name for call/ref
    span: Span | None
    args: tuple[_Arg, ...] = ()
    name_span: Span | None = None  # the callee of a call
    offsets: tuple[int, int] | None = None  # the contents of a string literal in the text


@attrs.frozen
class _Arg:
    name: str | None
    name_span: Span | None
    value: _Py


@attrs.frozen
class _Stmt:
    target: str | None  # None: a bare value
    value: _Py


@attrs.frozen
class _Pair:
    op: str
    op_span: Span | None
    index: int
    index_span: Span | None


_MAX_DEPTH = 64
_MAX_DIGITS = 18


def _unquote(s: str) -> str:
    out, i, body = [], 0, s[1:-1]
    while i < len(body):
        if body[i] == "\\" and i + 1 < len(body):
            out.append({"n": "\n", "t": "\t"}.get(body[i + 1], body[i + 1]))
            i += 2
        else:
            out.append(body[i])
            i += 1
    return "".join(out)


def _transformer(source: SourceFile, base: int = 0) -> Transformer:
    """Parse tree -> _Py values; `base` is the offset in `source` of the text that was parsed (one statement)."""

    def sp(meta) -> Span | None:
        return None if getattr(meta, "empty", True) else source.span(base + meta.start_pos, base + meta.end_pos)

    def tsp(tok: Token) -> Span:
        return source.span(base + tok.start_pos, base + tok.end_pos)

    def integer(tok: Token) -> int:
        if len(tok) > _MAX_DIGITS:
            raise error_at(tsp(tok), f"integer {tok[:8]}... is too large")
        return int(tok)

    @v_args(meta=True)
    class T(Transformer):
        def start(self, meta, c):
            return [x for x in c if x is not None]

        def assign(self, meta, c):
            return _Stmt(str(c[0]), c[1])

        def expr_stmt(self, meta, c):
            return _Stmt(None, c[0])

        def import_stmt(self, meta, c):
            return None

        def dotted(self, meta, c):
            return ".".join(str(t) for t in c), sp(meta)

        def ref(self, meta, c):
            return _Py("ref", c[0][0], c[0][1])

        def string(self, meta, c):
            tok = c[0]
            a, b = base + tok.start_pos + 1, base + tok.end_pos - 1
            return _Py("str", _unquote(str(tok)), source.span(a, b), offsets=(a, b))

        def integer(self, meta, c):
            return _Py("int", integer(c[0]), tsp(c[0]))

        def neg_integer(self, meta, c):
            return _Py("int", -integer(c[0]), sp(meta))

        def real(self, meta, c):
            return _Py("float", float(c[0]), tsp(c[0]))

        def neg_real(self, meta, c):
            return _Py("float", -float(c[0]), sp(meta))

        def none(self, meta, c):
            return _Py("none", None, sp(meta))

        def true(self, meta, c):
            return _Py("bool", True, sp(meta))

        def false(self, meta, c):
            return _Py("bool", False, sp(meta))

        def py_list(self, meta, c):
            return _Py("list", tuple(x for x in c if x is not None), sp(meta))

        def py_tuple(self, meta, c):
            return _Py("tuple", tuple(x for x in c if x is not None), sp(meta))

        def py_dict(self, meta, c):
            return _Py("dict", tuple(x for x in c if x is not None), sp(meta))

        def dict_item(self, meta, c):
            return c[0], c[1]

        def call(self, meta, c):
            (name, name_span), *args = c
            return _Py("call", name, sp(meta), tuple(a for a in args if a is not None), name_span)

        def pos_arg(self, meta, c):
            return _Arg(None, None, c[0])

        def kw_arg(self, meta, c):
            return _Arg(str(c[0]), tsp(c[0]), c[1])

        # NAS-Bench-201
        def nb201(self, meta, c):
            return list(c), sp(meta)

        def nb_node(self, meta, c):
            return tuple(c), sp(meta)

        def nb_edge(self, meta, c):
            return _Pair(str(c[0]), tsp(c[0]), integer(c[1]), tsp(c[1]))

    return T()


def _too_deep(source: SourceFile) -> Diagnostic | None:
    # The tree transformer recurses; refuse absurd nesting instead of overflowing the stack.
    at = scan.too_deep(source.text, _MAX_DEPTH, scan.PYTHON)
    return None if at is None else Diagnostic(f"brackets nested more than {_MAX_DEPTH} deep", source.span(at))


_TOKEN_WORDS = {
    "NAME": "a name",
    "INT": "an integer",
    "FLOAT": "a number",
    "STRING": "a string",
    "$END": "end of input",
}


def _expected(p: Lark, expected: set[str]) -> tuple[str, set[str]]:
    return describe_expected(p, expected, _TOKEN_WORDS)


def _syntax_diagnostic(source: SourceFile, err: UnexpectedInput, p: Lark, text: str | None = None,
                       end: int | None = None) -> Diagnostic:  # fmt: skip
    """`text`: the text that was parsed, at the offsets of `source` (parts blanked); `end`: where the parse ended."""
    text = source.text if text is None else text
    if isinstance(err, UnexpectedToken) and err.token.type == "$END":
        err = UnexpectedEOF(err.expected)  # type: ignore[assignment]
    if isinstance(err, UnexpectedEOF):
        still_open = scan.open_brackets(text, len(text) if end is None else end, scan.PYTHON)
        if still_open:
            ch, pos = still_open[-1]
            closer = scan.closer(ch, scan.PYTHON)
            return Diagnostic(f"'{ch}' is never closed", source.span(pos), f"add '{closer}' to close it")
        words, _ = _expected(p, set(err.expected))
        end = len(text.rstrip()) if end is None else len(text[:end].rstrip())
        return Diagnostic("unexpected end of input; expected " + words, source.span(max(0, end - 1), end))
    if isinstance(err, UnexpectedCharacters):
        pos = err.pos_in_stream
        ch = text[pos] if pos < len(text) else "?"
        if ch in "'\"":
            return Diagnostic("unterminated string", source.span(pos), f"close it with {ch} on the same line")
        hint = "a genotype is literals, lists, tuples and calls; nothing is evaluated" if ch in "{}*@:" else None
        return Diagnostic(f"unexpected character {ch!r}", source.span(pos), hint)
    assert isinstance(err, UnexpectedToken)
    tok = err.token
    start = tok.start_pos or 0
    words, literals = _expected(p, set(err.expected))
    hint = None
    still_open = scan.open_brackets(text, start, scan.PYTHON)
    if still_open:
        ch, pos = still_open[-1]
        closer = scan.closer(ch, scan.PYTHON)
        if closer in literals and str(tok) != closer:
            line, col = source.position(pos)
            hint = f"is a '{closer}' missing? the '{ch}' at {line}:{col} is still open"
    return Diagnostic(f"unexpected {str(tok)!r}; expected {words}", source.span(start, start + max(1, len(tok))), hint)


def _parse(source: SourceFile, start: str, text: str | None = None) -> Any:
    """Parse `text` (the source text, or a copy with parts blanked, same offsets) from rule `start`."""
    deep = _too_deep(source)
    if deep is not None:
        raise DiagnosticError([deep])
    p = parser()
    try:
        tree = p.parse(source.text if text is None else text, start=start)
    except UnexpectedInput as err:
        raise DiagnosticError([_syntax_diagnostic(source, err, p)]) from None
    return _transform(source, tree)


# ---- a genotypes.py with more than genotypes ------------------------------------------------------
# AutoDL's genotype files (docs/autodl.md)
# hold functions, classes and expressions beside the genotypes. The file is cut into top-level
# statements; definitions (def, class, if, for, ...), docstrings and plain statements the grammar cannot
# read are skipped with one note, unless they mention a genotype: a broken genotype is still an error at
# its line:col, never skipped.
_COMPOUND = re.compile(r"(?:def|class|if|for|while|with|try|async)\b|@")
_CONTINUES = re.compile(r"(?:elif|else|except|finally)\b")
_GENOTYPE_LIKE = re.compile(r"\b(?:Genotype|Structure|CellStructure)\s*\(|['\"]\s*\|\s*\w+\s*~")


@attrs.frozen
class _Statement:
    start: int
    end: int
    compound: bool  # a definition or a control-flow block: never genotype data


def _statements(text: str) -> list[_Statement]:
    """Top-level statements: a line at column 0 starts one; indented lines belong to the block above them."""
    out: list[_Statement] = []
    decorator = False  # the line before was `@decorator`: its def or class follows
    for a, b in scan.logical_lines(text, scan.PYTHON):
        first = scan.skip_trivia(text, scan.PYTHON, a)
        indented = first > a and text[first - 1] != "\n"
        if out and out[-1].compound and (indented or decorator or _CONTINUES.match(text, first)):
            out[-1] = attrs.evolve(out[-1], end=b)
        else:
            out.append(_Statement(first, b, bool(_COMPOUND.match(text, first)) and not indented))
        decorator = text.startswith("@", first) and not indented
    return out


def _kind(text: str, st: _Statement) -> str:
    """What a skipped statement is, for the note: def, class, if, ..., decorated, docstring, other."""
    if text.startswith("@", st.start):
        return "decorated"
    if st.compound:
        return text[st.start : st.end].split(None, 1)[0].rstrip(":(")
    return "docstring" if text.startswith(('"""', "'''"), st.start) else "other"


def _parse_file(source: SourceFile) -> tuple[list[_Stmt], list[_Statement], DiagnosticError | None]:
    """The statements of a genotype file the grammar reads, those skipped, and the first syntax error skipped."""
    deep = _too_deep(source)
    if deep is not None:
        raise DiagnosticError([deep])
    text, p = source.text, parser()
    try:  # the common case, a file of genotypes only: one parse
        return _transform(source, p.parse(text, start="start")), [], None
    except UnexpectedInput:
        pass
    stmts: list[_Stmt] = []
    skipped: list[_Statement] = []
    first_error: DiagnosticError | None = None
    for st in _statements(text):
        if st.compound or text.startswith(('"""', "'''"), st.start):
            skipped.append(st)
            continue
        chunk = text[st.start : st.end]
        try:
            tree = p.parse(chunk, start="start")
        except UnexpectedInput as err:
            blanked = scan.blank_outside(text, st.start, st.end)
            diag = DiagnosticError([_syntax_diagnostic(source, _shift(err, st.start), p, blanked, st.end)])
            if _GENOTYPE_LIKE.search(chunk):
                raise diag from None
            first_error = first_error or diag
            skipped.append(st)
            continue
        stmts.extend(_transform(source, tree, st.start))
    return stmts, skipped, first_error


def _shift(err: UnexpectedInput, base: int) -> UnexpectedInput:
    if isinstance(err, UnexpectedCharacters):
        err.pos_in_stream += base
    elif isinstance(err, UnexpectedToken) and err.token.type != "$END":
        tok = err.token
        err.token = Token(tok.type, str(tok), start_pos=(tok.start_pos or 0) + base, end_pos=(tok.end_pos or 0) + base)
    return err


def _transform(source: SourceFile, tree: Any, base: int = 0) -> Any:
    try:
        return _transformer(source, base).transform(tree)
    except VisitError as e:  # never show lark internals
        if isinstance(e.orig_exc, DiagnosticError):
            raise e.orig_exc from None
        raise


def _lines(source: SourceFile, skipped: list[_Statement]) -> str:
    ranges = []
    for st in skipped:
        a, b = source.position(st.start)[0], source.position(max(st.start, st.end - 1))[0]
        ranges.append(str(a) if a == b else f"{a}-{b}")
    return ", ".join(ranges[:8]) + (f", ... ({len(ranges) - 8} more)" if len(ranges) > 8 else "")


_NOTES: contextvars.ContextVar[list[Diagnostic] | None] = contextvars.ContextVar("genotype_notes", default=None)


@contextlib.contextmanager
def collect_notes() -> Iterator[list[Diagnostic]]:
    """Collect the notes genotype reading makes (what a genotypes.py had besides genotypes) into a list."""
    notes: list[Diagnostic] = []
    token = _NOTES.set(notes)
    try:
        yield notes
    finally:
        _NOTES.reset(token)


def _note(d: Diagnostic) -> None:
    notes = _NOTES.get()
    if notes is not None:
        notes.append(d)


# ---- meaning -----------------------------------------------------------------------------------
def _describe(v: _Py) -> str:
    if v.kind == "tuple":
        return f"a tuple of {len(v.value)}"
    return {
        "str": f"the string '{v.value}'", "int": f"the integer {v.value}", "float": f"the number {v.value}",
        "none": "None", "bool": str(v.value), "list": "a list", "dict": "a dict", "call": f"a call of '{v.value}'",
        "ref": f"the name '{v.value}'",
    }[v.kind]  # fmt: skip


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _is_genotype_call(v: _Py) -> bool:
    return v.kind == "call" and v.value.split(".")[-1] == "Genotype"


def _is_nb201_string(v: _Py) -> bool:
    return v.kind == "str" and v.value.lstrip().startswith("|")


_WHAT = "a Genotype(...) or a NAS-Bench-201 string"


def _is_structure_call(v: _Py) -> bool:
    """AutoDL's NAS-Bench-201 list form: `Structure([(('nor_conv_3x3', 0),), ...])` (docs/autodl.md)."""
    return v.kind == "call" and v.value.split(".")[-1] in ("Structure", "CellStructure")


def _is_genotype_data(v: _Py) -> bool:
    return _is_genotype_call(v) or _is_nb201_string(v) or _is_structure_call(v)


def _follow(source: SourceFile, env: dict[str, _Py], name: str, value: _Py) -> _Py:
    """Follow aliases (`DARTS = DARTS_V2`) to the value they name."""
    seen = [name]
    while value.kind == "ref":
        if value.value not in env:
            raise error_at(value.span, f"'{value.value}' is not defined in {source.name}", did_you_mean(value.value, env))
        if value.value in seen:
            raise error_at(value.span, "aliases refer to each other in a cycle: " + " -> ".join(seen + [value.value]))
        seen.append(value.value)
        value = env[value.value]
    return value


@attrs.frozen
class _Entry:
    """A genotype in a dict literal, AutoDL's `Networks = {'DARTS': DARTS_V2, ...}`."""

    table: str | None  # the name the dict is assigned to
    key: str
    value: _Py  # aliases followed


def _dict_entries(source: SourceFile, stmts: list[_Stmt], env: dict[str, _Py]) -> list[_Entry]:
    out = []
    for s in stmts:
        if s.value.kind != "dict":
            continue
        for k, v in s.value.value:
            if k.kind != "str":
                continue
            try:
                v = _follow(source, env, f"{s.target or 'dict'}['{k.value}']", v)
            except DiagnosticError:  # a dict of other things (names defined elsewhere) is not genotype data
                continue
            if _is_genotype_data(v):
                out.append(_Entry(s.target, k.value, v))
    return out


def _names_genotype(source: SourceFile, env: dict[str, _Py], name: str) -> bool:
    """Does `name` hold a genotype (aliases followed)?"""
    try:
        return _is_genotype_data(_follow(source, env, name, env[name]))
    except DiagnosticError:
        return False


def _select(source: SourceFile, stmts: list[_Stmt], name: str | None, first_error: DiagnosticError | None = None) -> _Py:
    env = {s.target: s.value for s in stmts if s.target is not None}
    entries = _dict_entries(source, stmts, env)
    if name is None:
        found = [s for s in stmts if _is_genotype_data(s.value)]
        distinct = {id(s.value): s.value for s in found} | {id(e.value): e.value for e in entries}
        if len(distinct) > 1:  # several genotypes: taking the first silently imported the wrong one (issue 14.5)
            names = [s.target for s in found if s.target is not None]
            listed = ", ".join(names) if names else "none of them is named"
            unnamed = len(found) - len(names)
            listed += f" (and {unnamed} unnamed)" if names and unnamed else ""
            tables: dict[str | None, list[str]] = {}
            for e in entries:
                tables.setdefault(e.table, []).append(e.key)
            for table, keys in tables.items():
                listed += f"; keys of {table or 'a dict'}: " + ", ".join(keys)
            second = list(distinct.values())[1]
            raise error_at(second.span, f"{source.name} defines {len(distinct)} genotypes; choose one with --name",
                           f"names: {listed}")  # fmt: skip
        if distinct:
            return next(iter(distinct.values()))
        if first_error is not None:  # nothing readable: the syntax error is the likelier reason
            raise first_error
        if not stmts:
            raise error_at(None, f"{source.name} is empty; expected {_WHAT}")
        first = stmts[0].value
        raise error_at(first.span, f"expected {_WHAT}, found {_describe(first)}")
    if name not in env:
        table, _, key = name.partition(".")
        by_key = [e for e in entries if e.key == (key if key and table in env else name) and (not key or e.table == table)]
        if len({id(e.value) for e in by_key}) == 1:
            return by_key[0].value
        if by_key:
            raise error_at(None, f"'{name}' is a key of several dicts with different genotypes",
                           "choose one as DICT.KEY: " + ", ".join(f"{e.table}.{e.key}" for e in by_key))  # fmt: skip
        known = [t for t in env if _names_genotype(source, env, t)]
        known += [e.key for e in entries if e.key not in known]
        if first_error is not None and not env:
            raise first_error
        # only genotypes are offered: `Genotype` (the namedtuple) and `PRIMITIVES` are names, not choices
        hint = did_you_mean(name, known) or ("genotypes: " + ", ".join(known) if known else "it defines no genotype")
        raise error_at(None, f"{source.name} defines no genotype named '{name}'", hint)
    value = _follow(source, env, name, env[name])
    if value.kind == "dict":
        keys = [e.key for e in entries if e.table == name]
        raise error_at(value.span, f"'{name}' is a dict, not {_WHAT}",
                       "choose one of its keys: --name " + (", ".join(keys) if keys else "(it holds no genotype)"))  # fmt: skip
    if not _is_genotype_data(value):
        raise error_at(value.span, f"'{name}' is {_describe(value)}, not {_WHAT}")
    return value


def _read_pair(bag: DiagnosticBag, item: _Py) -> _Pair | None:
    if item.kind != "tuple" or len(item.value) != 2 or item.value[0].kind != "str":
        bag.error(item.span, f"expected an (op, index) pair like ('sep_conv_3x3', 0), found {_describe(item)}")
        return None
    op, index = item.value
    if index.kind != "int":
        bag.error(index.span, f"expected a state index, found {_describe(index)}")
        return None
    return _Pair(op.value, op.span, index.value, index.span)


def _read_nodes(bag: DiagnosticBag, field: str, v: _Py) -> list[list[_Pair]] | None:
    """Flat form `[(op, i), (op, j), ...]` (two pairs per node) or node form `[((op, i), (op, j)), ...]`."""
    if v.kind not in ("list", "tuple"):
        bag.error(v.span, f"'{field}' must be a list of (op, index) pairs, found {_describe(v)}")
        return None
    items = v.value

    def is_node(x: _Py) -> bool:
        return x.kind == "tuple" and bool(x.value) and all(y.kind == "tuple" for y in x.value)

    node_form = bool(items) and is_node(items[0])
    ok = True
    nodes: list[list[_Pair]] = []
    flat: list[_Pair] = []
    for item in items:
        if is_node(item) != node_form:
            form = "nodes of two pairs" if node_form else "(op, index) pairs"
            bag.error(
                item.span,
                f"'{field}' mixes (op, index) pairs with nodes of pairs",
                f"the first element makes it a list of {form}",
            )
            ok = False
            continue
        if not node_form:
            pair = _read_pair(bag, item)
            ok = ok and pair is not None
            if pair is not None:
                flat.append(pair)
            continue
        pairs = [_read_pair(bag, x) for x in item.value]
        if len(pairs) != 2:
            bag.error(item.span, f"a node of '{field}' takes two (op, index) pairs, found {len(pairs)}")
            ok = False
        if any(p is None for p in pairs):
            ok = False
        nodes.append([p for p in pairs if p is not None])
    if not ok:
        return None
    if not node_form:
        if len(flat) % 2:
            bag.error(v.span, f"'{field}' has {_count(len(flat), '(op, index) pair')}; a DARTS cell takes two per node")
            return None
        nodes = [flat[k : k + 2] for k in range(0, len(flat), 2)]
    return nodes


def _read_concat(bag: DiagnosticBag, field: str, v: _Py) -> list[tuple[int, Span | None]] | None:
    if v.kind in ("list", "tuple"):
        out = []
        for item in v.value:
            if item.kind != "int":
                bag.error(item.span, f"'{field}' lists state indices, found {_describe(item)}")
                return None
            out.append((item.value, item.span))
        return out
    if v.kind == "call" and v.value == "range":
        bounds = [a.value for a in v.args]
        if any(a.name is not None for a in v.args) or not 1 <= len(bounds) <= 3 or any(b.kind != "int" for b in bounds):
            bag.error(v.span, "range(...) takes one to three integers, like range(2, 6)")
            return None
        values = [b.value for b in bounds]
        if len(values) == 3 and values[2] == 0:
            bag.error(bounds[2].span, "range() step must not be zero")
            return None
        if len(range(*values)) > 1000:
            bag.error(v.span, f"'{field}' has {len(range(*values))} states; a cell has far fewer")
            return None
        return [(i, v.span) for i in range(*values)]
    bag.error(v.span, f"'{field}' must be a list of state indices or range(a, b), found {_describe(v)}")
    return None


def _check_cell(bag: DiagnosticBag, field: str, nodes: list[list[_Pair]], concat: list[tuple[int, Span | None]] | None,
                anchor: Span | None) -> None:  # fmt: skip
    """The rules of a DARTS cell that the `.cell` text would otherwise reject without a genotype position."""
    if not nodes:
        bag.error(anchor, f"'{field}' has no nodes")
        return
    if len(nodes) > limits.MAX_NODES_PER_CELL:  # the .cell text would be refused by `nasir check`
        bag.error(anchor, f"'{field}' has {len(nodes):,} nodes; a cell has at most {limits.MAX_NODES_PER_CELL:,}")
        return
    read: set[int] = set()
    for k, node in enumerate(nodes):
        for p in node:
            if p.op not in ops.REGISTRY:
                bag.error(p.op_span, f"unknown op '{p.op}'", ops.unknown_op_hint(p.op))
            if not 0 <= p.index <= k + 1:
                bag.error(p.index_span, f"index {p.index} is out of range: node {k} of '{field}' may read states 0..{k + 1}",
                          "0 and 1 are the cell inputs, k + 2 is node k")  # fmt: skip
            read.add(p.index)
    if concat is None:
        return
    top = len(nodes) + 1
    if not concat:
        bag.error(anchor, f"'{field}_concat' is empty")
        return
    seen: set[int] = set()
    for i, span in concat:
        if not 0 <= i <= top:
            bag.error(span, f"concat index {i} is out of range: '{field}' has states 0..{top}")
        elif i in seen:
            bag.error(span, f"state {i} is listed twice in '{field}_concat'")
        seen.add(i)
    for s in range(2, top + 1):
        if s not in seen and s not in read:
            span = concat[0][1] if concat else anchor
            bag.error(span, f"node {s - 2} of '{field}' (state {s}) is neither in '{field}_concat' nor read by a later node",
                      "DARTS would compute it and discard it; a .cell cell may not have dead nodes")  # fmt: skip


def _recurrent_from_call(call: _Py) -> RecurrentGenotype:
    """`Genotype(recurrent=[...], concat=...)` of the DARTS recurrent cells (the authors' rnn/genotypes.py)."""
    from nasir.rnn.space import ACTIVATIONS
    from nasir.rnn.space import Genotype as Cell

    bag = DiagnosticBag()
    fields: dict[str, _Arg] = {}
    names = ("recurrent", "concat")
    for i, a in enumerate(x for x in call.args if x.name is None):
        if i < 2:
            fields[names[i]] = a
        else:
            bag.error(a.value.span, "a recurrent Genotype(...) takes two fields, recurrent and concat")
    for a in call.args:
        if a.name is None:
            continue
        if a.name in fields:
            bag.error(a.name_span, f"field '{a.name}' is given twice")
        elif a.name not in names:
            bag.error(a.name_span, f"a recurrent Genotype(...) has no field '{a.name}'", "its fields are recurrent and concat")
        else:
            fields[a.name] = a
    for f in names:
        if f not in fields:
            bag.error(call.name_span, f"Genotype(...) has no field '{f}'", "a recurrent genotype has the fields recurrent, concat")
    pairs: list[tuple[str, int]] = []
    if "recurrent" in fields:
        v = fields["recurrent"].value
        if v.kind not in ("list", "tuple") or not v.value:
            bag.error(v.span, f"'recurrent' must be a non-empty list of (op, predecessor) pairs, found {_describe(v)}")
        else:
            if len(v.value) > limits.MAX_NODES_PER_CELL:
                bag.error(v.span, f"'recurrent' has {len(v.value):,} nodes; a cell has at most {limits.MAX_NODES_PER_CELL:,}")
            for i, item in enumerate(v.value, start=1):
                p = _read_pair(bag, item)
                if p is None:
                    continue
                if p.op not in ACTIVATIONS:
                    bag.error(p.op_span, f"'{p.op}' is not a recurrent op", f"a derived recurrent cell uses {', '.join(ACTIVATIONS)}")
                if not 0 <= p.index < i:
                    bag.error(p.index_span, f"index {p.index} is out of range: node {i} reads one of the states 0..{i - 1}")
                pairs.append((p.op, p.index))
    concat = _read_concat(bag, "concat", fields["concat"].value) if "concat" in fields else None
    if concat is not None and pairs and len(pairs) == len(fields["recurrent"].value.value):
        for c, span in concat:
            if not 0 <= c <= len(pairs):
                bag.error(span, f"concat index {c} is out of range: the cell has states 0..{len(pairs)}")
        if not concat:
            bag.error(fields["concat"].value.span, "'concat' is empty")
    bag.check()
    return RecurrentGenotype(Cell(tuple(pairs), tuple(c for c, _ in concat or ())), span=call.span)


def _genotype_from_call(call: _Py) -> Genotype | RecurrentGenotype:
    if any(a.name == "recurrent" for a in call.args):
        return _recurrent_from_call(call)
    bag = DiagnosticBag()
    fields: dict[str, _Arg] = {}
    positional = [a for a in call.args if a.name is None]
    for i, a in enumerate(positional):
        if i < len(FIELDS):
            fields[FIELDS[i]] = a
        else:
            bag.error(
                a.value.span, f"Genotype(...) takes at most {len(FIELDS)} positional fields", "name the extra fields"
            )
    for a in call.args:
        if a.name is None:
            continue
        if a.name in fields:
            bag.error(a.name_span, f"field '{a.name}' is given twice")
            continue
        fields[a.name] = a
    extras = [f for f in fields if f not in FIELDS]
    for f in FIELDS:
        if f not in fields:
            hint = did_you_mean(f, extras) or "a DARTS genotype has the fields " + ", ".join(FIELDS)
            bag.error(call.name_span, f"Genotype(...) has no field '{f}'", hint)
    result: dict[str, Any] = {}
    for cell in ("normal", "reduce"):
        concat_field = f"{cell}_concat"
        nodes = _read_nodes(bag, cell, fields[cell].value) if cell in fields else None
        concat = _read_concat(bag, concat_field, fields[concat_field].value) if concat_field in fields else None
        if nodes is not None:
            _check_cell(bag, cell, nodes, concat, fields[cell].value.span)
            result[cell] = [(p.op, p.index) for node in nodes for p in node]
        if concat is not None:
            result[concat_field] = [i for i, _ in concat]
    bag.check()
    return Genotype(**result, span=call.span)


def _nb201_from_nodes(nodes: list[tuple[tuple[_Pair, ...], Span | None]], span: Span | None) -> NB201Arch:
    bag = DiagnosticBag()
    if len(nodes) != 3:
        bag.error(span, f"a NAS-Bench-201 string has 3 nodes, found {len(nodes)}",
                  "nodes are separated by '+': |op~0|+|op~0|op~1|+|op~0|op~1|op~2|")  # fmt: skip
    full: list[list[Pair]] = []
    for j, (edges, node_span) in enumerate(nodes, start=1):
        sources: dict[int, str] = {}
        if not edges:
            bag.error(node_span, f"node {j} has no edges; it reads at least one of nodes 0..{j - 1}")
        for p in edges:
            if p.op not in ops.REGISTRY:
                bag.error(p.op_span, f"unknown op '{p.op}'", ops.unknown_op_hint(p.op))
            if not 0 <= p.index < j:
                bag.error(p.index_span, f"index {p.index} is out of range: node {j} may read nodes 0..{j - 1}")
            elif p.index in sources:
                bag.error(p.index_span, f"node {j} reads node {p.index} twice", "NAS-Bench-201 has one op per edge")
            sources.setdefault(p.index, p.op)
        if len(sources) == j:
            full.append([(p.op, p.index) for p in edges])  # complete: as written
        else:  # AutoDL's short form leaves out `none` edges (Structure.str2fullstructure fills them in)
            full.append([(sources.get(i, "none"), i) for i in range(j)])
    bag.check()
    return NB201Arch(full, span=span)


def _nb201_from_structure(call: _Py) -> NB201Arch:
    """`Structure([((op, i), ...), ...])`: one tuple per node of the (op, input node) pairs feeding it."""
    bag = DiagnosticBag()
    arg = call.args[0].value if len(call.args) == 1 and call.args[0].name is None else None
    if arg is None or arg.kind not in ("list", "tuple"):
        raise error_at(call.span, "Structure(...) takes one list: a tuple of (op, input node) pairs per node",
                       "e.g. Structure([(('nor_conv_3x3', 0),), (('nor_conv_3x3', 1),), (('skip_connect', 0), ('skip_connect', 2))])")  # fmt: skip
    nodes = []
    for node in arg.value:
        if node.kind not in ("list", "tuple"):
            bag.error(node.span, f"a node of Structure(...) is a tuple of (op, input node) pairs, found {_describe(node)}")
            continue
        pairs = [_read_pair(bag, x) for x in node.value]
        nodes.append((tuple(p for p in pairs if p is not None), node.span))
    bag.check()
    return _nb201_from_nodes(nodes, call.span)


def parse_genotype(text: str, name: str | None = None, *, source_name: str = "<stdin>") -> AnyGenotype:
    """Genotype text -> `Genotype` or `NB201Arch`, without evaluating anything.

    `text` is a DARTS-style `Genotype(...)` (flat or node-pair form, optionally assigned to a name, possibly
    one of several assignments in a `genotypes.py`), or a NAS-Bench-201 string (optionally quoted).
    `name` selects an assignment (aliases like `DARTS = DARTS_V2` are followed); without it the text
    must define exactly one genotype (several: an error that lists their names). Raises `DiagnosticError` with every problem, at line:col of `text`.
    """
    with gc_paused():  # as for .cell text (nasir/frontend.py): linear time in the size of the genotype
        return _parse_genotype(text, name, source_name)


def _parse_genotype(text: str, name: str | None, source_name: str) -> AnyGenotype:
    source = SourceFile(source_name, text)
    start = scan.skip_trivia(text, scan.PYTHON)
    if start < len(text) and text[start] == "|":
        nodes, span = _parse(source, "nb201")
        return _nb201_from_nodes(nodes, span)
    stmts, skipped, first_error = _parse_file(source)
    value = _select(source, stmts, name, first_error)
    if skipped:
        kinds = sorted({_kind(source.text, st) for st in skipped})
        _note(Diagnostic(f"skipped {_count(len(skipped), 'statement')} of {source.name} that "
                         f"{'is' if len(skipped) == 1 else 'are'} not genotype data "
                         f"(lines {_lines(source, skipped)}: {', '.join(kinds)})", source.span(skipped[0].start),
                         severity="note"))  # fmt: skip
    if value.kind == "str":
        a, b = value.offsets  # type: ignore[misc]
        nodes, span = _parse(source, "nb201", scan.blank_outside(text, a, b))
        return _nb201_from_nodes(nodes, span)
    if _is_structure_call(value):
        return _nb201_from_structure(value)
    return _genotype_from_call(value)


def read_genotype(path: str | Path, name: str | None = None) -> AnyGenotype:
    """`parse_genotype` of a file; `-` reads standard input (reported as `<stdin>`)."""
    if str(path) == "-":
        return parse_genotype(read_stdin().text, name, source_name="<stdin>")
    source = read_source(path)
    return parse_genotype(source.text, name, source_name=source.name)


# ---- genotype -> .cell ---------------------------------------------------------------------------
def _check(g: Genotype | NB201Arch) -> Genotype | NB201Arch:
    """Validate a genotype built in code (parsed ones are already checked, with positions); missing NB201 edges -> none."""
    if isinstance(g, NB201Arch):
        return _nb201_from_nodes([(tuple(_Pair(op, None, i, None) for op, i in node), None) for node in g.nodes], None)
    bag = DiagnosticBag()
    for cell, pairs, concat in (("normal", g.normal, g.normal_concat), ("reduce", g.reduce, g.reduce_concat)):
        if len(pairs) % 2:
            bag.error(None, f"'{cell}' has {_count(len(pairs), '(op, index) pair')}; a DARTS cell takes two per node")
            continue
        flat = [_Pair(op, None, i, None) for op, i in pairs]
        _check_cell(bag, cell, [flat[k : k + 2] for k in range(0, len(flat), 2)], [(i, None) for i in concat], None)
    bag.check()
    return g


def _darts_cell(name: str, pairs: tuple[Pair, ...], concat: tuple[int, ...], reduction: bool) -> ir.Cell:
    steps = len(pairs) // 2
    states = DARTS_INPUTS + tuple(f"n{k}" for k in range(steps))
    edges = tuple(ir.Edge(states[i], f"n{k // 2}", op=op) for k, (op, i) in enumerate(pairs))
    return ir.Cell(
        name, tuple(ir.Node(s) for s in DARTS_INPUTS), tuple(ir.Node(s) for s in states[2:]), edges,
        ir.Output("concat", tuple(states[i] for i in concat)), reduction=reduction,
    )  # fmt: skip


def genotype_cells(g: Genotype | NB201Arch) -> tuple[ir.Cell, ...]:
    """The derived cells of a genotype: (normal, reduce) for DARTS, (nbcell,) for NAS-Bench-201."""
    g = _check(g)
    if isinstance(g, NB201Arch):
        states = (NB201_INPUT,) + tuple(f"n{j}" for j in range(1, len(g.nodes) + 1))
        edges = tuple(ir.Edge(states[i], states[j], op=op) for j, node in enumerate(g.nodes, start=1) for op, i in node)
        cell = ir.Cell("nbcell", (ir.Node(NB201_INPUT),), tuple(ir.Node(s) for s in states[1:]), edges,
                       ir.Output("node", (states[-1],)))  # fmt: skip
        return (cell,)
    return (
        _darts_cell("normal", g.normal, g.normal_concat, reduction=False),
        _darts_cell("reduce", g.reduce, g.reduce_concat, reduction=True),
    )


def genotype_to_spec_text(g: Genotype | NB201Arch, macro: str | None = None, source_name: str | None = None) -> str:
    """A complete `.cell` text: the genotype's cells in the macro network `macro` (see `nasir.macros`).

    `macro` defaults to `cifar` for a DARTS genotype and `nb201` for a NAS-Bench-201 string. A recurrent
    genotype goes into the authors' language model at evaluation size (docs/recurrent.md); it has no macro.
    """
    if isinstance(g, RecurrentGenotype):
        if macro is not None:
            raise error_at(g.span, f"a recurrent genotype is imported into a language model, not the '{macro}' network",
                           "drop --macro (sizes: --set size=..., --set tokens=...)")  # fmt: skip
        return recurrent_spec_text(g, source_name)
    nb201 = isinstance(g, NB201Arch)
    macro = macro if macro is not None else ("nb201" if nb201 else "cifar")
    network = macro_text(macro)
    cells = genotype_cells(g)
    if MACRO_CELLS[macro] != tuple(c.name for c in cells):
        fits = [m for m, names in MACRO_CELLS.items() if names == tuple(c.name for c in cells)]
        kind = "NAS-Bench-201 string" if nb201 else "DARTS genotype"
        raise error_at(
            g.span, f"the {kind} does not fit the macro network '{macro}'", "use --macro " + " or ".join(fits)
        )
    origin = f" from {source_name}" if source_name else ""
    header = f"# Imported{origin} by nasir into the '{macro}' network:\n# {g}\n"
    return header + "\n\n".join(printer.cell(c) for c in cells) + "\n\n" + network


def recurrent_cell(g: RecurrentGenotype, name: str = "rnn") -> ir.Cell:
    """The derived recurrent cell: input s0, nodes s1..sN, one edge into each node, output mean(concat)."""
    from nasir.rnn.space import RECURRENT_INPUT

    n = g.cell.nodes
    states = (RECURRENT_INPUT,) + tuple(f"s{i}" for i in range(1, n + 1))
    edges = tuple(ir.Edge(states[p], states[i], op=op) for i, (op, p) in enumerate(g.cell.recurrent, start=1))
    return ir.Cell(name, (ir.Node(states[0]),), tuple(ir.Node(s) for s in states[1:]), edges,
                   ir.Output("mean", tuple(states[i] for i in g.cell.concat)), recurrent=True)  # fmt: skip


def recurrent_spec_text(g: RecurrentGenotype, source_name: str | None = None) -> str:
    """A recurrent genotype in the language model at evaluation size (850/850, 10,000 words, the authors' dropouts)."""
    from nasir.rnn.space import EVAL_SIZE
    from nasir.rnn.text import network_text

    origin = f" from {source_name}" if source_name else ""
    header = f"# Imported{origin} by nasir into the language model at evaluation size:\n# {g}\n"
    return header + printer.cell(recurrent_cell(g)) + "\n\n" + network_text(EVAL_SIZE)


# ---- .cell -> genotype ---------------------------------------------------------------------------
def _derived(bag: DiagnosticBag, cell: ir.Cell, n_inputs: int) -> bool:
    if cell.is_search_space:
        bag.error(cell.span, f"cell '{cell.name}' is a search space (it has choice edges or topology variables)",
                  "derive it first, e.g. with nasir search")  # fmt: skip
        return False
    if len(cell.inputs) != n_inputs:
        bag.error(cell.span, f"cell '{cell.name}' has {len(cell.inputs)} inputs; the genotype format needs {n_inputs}")
        return False
    return True


def _in_edges(cell: ir.Cell) -> dict[str, list[ir.Edge]]:
    """Edges by destination in one pass (`Cell.in_edges` per node scans every edge: O(nodes x edges))."""
    out: dict[str, list[ir.Edge]] = {}
    for e in cell.edges:
        out.setdefault(e.dst, []).append(e)
    return out


def _darts_pairs(bag: DiagnosticBag, cell: ir.Cell, reduction: bool) -> tuple[list[Pair], list[int]]:
    pairs: list[Pair] = []
    concat: list[int] = []
    if not _derived(bag, cell, 2):
        return pairs, concat
    if cell.reduction != reduction:
        msg = (
            "does not reduce; add 'stride 2 from inputs'"
            if reduction
            else "reduces, but a genotype's normal cell keeps the resolution"
        )
        bag.error(cell.span, f"cell '{cell.name}' {msg}")
    index = {s: i for i, s in enumerate(cell.states)}
    into = _in_edges(cell)
    for k, node in enumerate(cell.node_names):
        edges = into.get(node, ())
        if len(edges) != 2:
            bag.error(cell.node_span(node), f"node '{node}' of cell '{cell.name}' has {_count(len(edges), 'input')}; a DARTS genotype takes exactly two",
                      "derive with 'keep 2 inputs per node'")  # fmt: skip
        for e in edges:
            if index[e.src] >= k + 2:
                bag.error(
                    e.span or cell.span,
                    f"node '{node}' reads the later node '{e.src}'; a genotype lists nodes in order",
                )
            pairs.append((e.op, index[e.src]))  # type: ignore[arg-type]
    if cell.output is None:
        bag.error(cell.span, f"cell '{cell.name}' has no output")
    else:
        concat = [index[n] for n in cell.output.nodes]
    return pairs, concat


def _darts_cell_pair(spec: ir.Spec) -> tuple[ir.Cell, ir.Cell]:
    normal, reduce = spec.cell("normal"), spec.cell("reduce")
    if normal is None or reduce is None:
        net = spec.network()
        stack = next((b for b in net.body if isinstance(b, ir.Stack) and b.reduce), None) if net else None
        if stack is not None:
            normal, reduce = spec.cell(stack.cell), spec.cell(stack.reduce)  # type: ignore[arg-type]
    if normal is None or reduce is None:
        raise error_at(spec.cells[0].span if spec.cells else None, "no DARTS cell pair: expected cells named 'normal' and 'reduce'",
                       "or a network that stacks a normal cell with a reduction cell")  # fmt: skip
    return normal, reduce


def genotype_from_spec(spec: ir.Spec) -> Genotype:
    """The DARTS genotype of a derived spec's cells `normal` and `reduce` (edges in IR order)."""
    normal, reduce = _darts_cell_pair(spec)
    bag = DiagnosticBag()
    n_pairs, n_concat = _darts_pairs(bag, normal, reduction=False)
    r_pairs, r_concat = _darts_pairs(bag, reduce, reduction=True)
    bag.check()
    return Genotype(n_pairs, n_concat, r_pairs, r_concat)


def recurrent_genotype_of_cell(cell: ir.Cell) -> RecurrentGenotype:
    """The authors' Genotype of a derived recurrent cell, read off the IR (the inverse of `recurrent_cell`):
    node i's one in-edge gives (op, index of its source); the output's states give concat. States are
    numbered as in nasir/rnn/space.py (the input 0, the nodes 1..N in declaration order)."""
    from nasir.rnn.space import Genotype as Cell

    if cell.is_search_space:
        raise error_at(cell.span, f"cell '{cell.name}' is a search space (it has choice edges)", "derive it first, e.g. with nasir search")
    bag = DiagnosticBag()
    if len(cell.inputs) != 1:
        bag.error(cell.span, f"a recurrent cell has one input; '{cell.name}' has {len(cell.inputs)}")
    if cell.output is None or cell.output.kind != "mean":
        bag.error(cell.output.span if cell.output else cell.span, f"the output of recurrent cell '{cell.name}' is not mean(...)")
    bag.check()
    index = {s: i for i, s in enumerate(cell.states)}
    into = _in_edges(cell)
    pairs = []
    for node in cell.node_names:
        edges = into.get(node, [])
        if len(edges) != 1:
            bag.error(cell.span, f"node '{node}' of a derived recurrent cell has {len(edges)} inputs; it has exactly one (k = 1)")
        else:
            pairs.append((edges[0].op, index[edges[0].src]))
    bag.check()
    assert cell.output is not None
    try:
        g = Cell(tuple(pairs), tuple(index[s] for s in cell.output.nodes))
    except ValueError as e:  # an unverified cell: an op that is not a recurrent activation, a later source
        raise error_at(cell.span, f"cell '{cell.name}': {e}") from None
    return RecurrentGenotype(g, span=cell.span)


def _recurrent_cell_of(spec: ir.Spec) -> ir.Cell | None:
    """The recurrent cell of a spec: the one its network's `language_model` runs, else its only cell, if recurrent."""
    net = spec.network()
    lm = net.language_model if net is not None else None
    if lm is not None:
        cell = spec.cell(lm.cell)
        if cell is None:
            raise error_at(lm.span, f"the language model runs cell '{lm.cell}', which the spec does not define")
        return cell
    if net is None and spec.cells and all(c.recurrent for c in spec.cells):
        if len(spec.cells) > 1:
            raise error_at(spec.cells[1].span, "several recurrent cells and no language model to choose one",
                           "add a network with 'language_model CELL(...)'")  # fmt: skip
        return spec.cells[0]
    return None


def spec_to_genotype(spec: ir.Spec) -> str:
    """The DARTS genotype string of a derived cell pair (or recurrent cell), as DARTS prints it."""
    rnn = _recurrent_cell_of(spec)
    if rnn is not None:
        return str(recurrent_genotype_of_cell(rnn))
    return str(genotype_from_spec(spec))


def nb201_from_spec(spec: ir.Spec) -> NB201Arch:
    """The NAS-Bench-201 architecture of a derived one-input cell of 3 nodes (a missing edge is `none`)."""
    cell = spec.cell("nbcell")
    if cell is None and len(spec.cells) == 1:
        cell = spec.cells[0]
    if cell is None:
        raise error_at(
            spec.cells[0].span if spec.cells else None, "no NAS-Bench-201 cell: expected a cell named 'nbcell'"
        )
    bag = DiagnosticBag()
    if not _derived(bag, cell, 1):
        bag.check()
    if len(cell.nodes) != 3:
        bag.error(cell.span, f"cell '{cell.name}' has {len(cell.nodes)} nodes; a NAS-Bench-201 cell has 3")
    if cell.output is None or cell.output.kind != "node" or cell.output.nodes != cell.node_names[-1:]:
        bag.error(
            cell.output.span if cell.output else cell.span, f"the output of cell '{cell.name}' must be its last node"
        )
    bag.check()
    index = {s: i for i, s in enumerate(cell.states)}
    nodes = []
    into = _in_edges(cell)
    for j, node in enumerate(cell.node_names, start=1):
        by_src: dict[int, str] = {}
        for e in into.get(node, ()):
            i = index[e.src]
            if i >= j:
                bag.error(e.span or cell.span, f"node '{node}' reads the later node '{e.src}'")
            elif i in by_src:
                bag.error(e.span or cell.span, f"two edges {e.src} -> {node}; NAS-Bench-201 has one op per edge")
            by_src[i] = e.op  # type: ignore[assignment]
        nodes.append([(by_src.get(i, "none"), i) for i in range(j)])
    bag.check()
    return NB201Arch(nodes)


def spec_to_nb201(spec: ir.Spec) -> str:
    """The NAS-Bench-201 string `|op~0|+|op~0|op~1|+|op~0|op~1|op~2|` of a derived cell.

    A recurrent spec (also one input per cell) answers with its recurrent Genotype instead."""
    if _recurrent_cell_of(spec) is not None:
        return spec_to_genotype(spec)
    return str(nb201_from_spec(spec))
