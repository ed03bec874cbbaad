"""The description of a recurrent cell and its language model, independent of the DSL (docs/recurrent.md).

A recurrent cell (DARTS Sec. 2.1/3.1.2; docs/recurrent.md "The cell"): the initial state s0 is computed
from x_t and h_{t-1}; nodes s_1..s_N each read earlier states through edges
    [c, g] = s_p W_i ,  s_i = s_p + sigmoid(c) * (f(g) - s_p)
with f in {none, tanh, relu, sigmoid, identity}; the output (next hidden state) is the mean of the
`concat` states. A search space has, per node i, a choice on every edge from s_0..s_{i-1}; a derived cell
has one (op, predecessor) per node (k = 1, "k = 1 for recurrent cell", darts-slides).
"""

from __future__ import annotations

import ast
import re

import attrs

# The candidate ops in the DARTS authors' order (their rnn PRIMITIVES); alpha columns follow the
# order of the space's choice, which examples/ptb.cell writes in this order.
PRIMITIVES = ("none", "tanh", "relu", "sigmoid", "identity")
ACTIVATIONS = ("tanh", "relu", "sigmoid", "identity")
RECURRENT_INPUT = "s0"  # the state name of the cell's one input in the DSL (state 0; docs/recurrent.md)


@attrs.frozen
class SearchSpace:
    """N nodes, every earlier state feeding every node; `ops` the candidates of each edge (alpha columns).

    Edges (and alpha rows) are ordered by destination, then source: node i's rows are (0, i), ..., (i-1, i)
    for i = 1..N, as in the authors' offset layout (36 rows for N = 8).
    """

    nodes: int = 8
    ops: tuple[str, ...] = PRIMITIVES
    concat: tuple[int, ...] | None = None  # None: all nodes 1..N
    # rows[k]: the alpha row of the k-th edge in (destination, source) order -- the IR's edge order when the
    # space comes from a .cell file (passes/mixed_ops.py numbers the rows); None: the same order.
    rows: tuple[int, ...] | None = None

    def __attrs_post_init__(self):
        if self.nodes < 1:
            raise ValueError("a recurrent cell needs at least one node")
        bad = [o for o in self.ops if o not in PRIMITIVES]
        if bad:
            raise ValueError(f"unknown recurrent ops {bad}; the recurrent ops are {', '.join(PRIMITIVES)}")
        if not any(o != "none" for o in self.ops):
            raise ValueError("a recurrent choice needs an op other than 'none'")
        n = self.nodes * (self.nodes + 1) // 2
        if self.rows is not None and sorted(self.rows) != list(range(n)):
            raise ValueError(f"rows must be a permutation of the {n} alpha rows")

    @property
    def edges(self) -> tuple[tuple[int, int], ...]:
        return tuple((p, i) for i in range(1, self.nodes + 1) for p in range(i))

    @property
    def row_index(self) -> tuple[int, ...]:
        return self.rows if self.rows is not None else tuple(range(len(self.edges)))

    def row_edges(self) -> tuple[tuple[int, int], ...]:
        """The (source, destination) of each alpha row, in row order."""
        out: list[tuple[int, int]] = [(0, 0)] * len(self.edges)
        for e, r in zip(self.edges, self.row_index):
            out[r] = e
        return tuple(out)

    @property
    def output(self) -> tuple[int, ...]:
        return self.concat if self.concat is not None else tuple(range(1, self.nodes + 1))


@attrs.frozen
class Genotype:
    """A derived recurrent cell: `recurrent[i-1] = (op, p)` is node i = s_p + sigmoid(c) * (op(g) - s_p)."""

    recurrent: tuple[tuple[str, int], ...]
    concat: tuple[int, ...]

    def __attrs_post_init__(self):
        for i, (op, p) in enumerate(self.recurrent, start=1):
            if op not in ACTIVATIONS:
                raise ValueError(f"node {i}: op '{op}' is not a recurrent activation ({', '.join(ACTIVATIONS)})")
            if not 0 <= p < i:
                raise ValueError(f"node {i}: predecessor {p} must be an earlier state (0..{i - 1})")
        if not self.concat:
            raise ValueError("the cell output (concat) is empty")
        for c in self.concat:
            if not 0 <= c <= len(self.recurrent):
                raise ValueError(f"concat state {c} does not exist (0..{len(self.recurrent)})")

    @property
    def nodes(self) -> int:
        return len(self.recurrent)

    def depth(self) -> int:
        """The longest chain of matmul steps from s0 to the output (s0 itself is depth 1: the W0 step)."""
        d = [1]
        for _, p in self.recurrent:
            d.append(d[p] + 1)
        return max(d[c] for c in self.concat)

    def __str__(self) -> str:
        rec = ", ".join(f"('{op}', {p})" for op, p in self.recurrent)
        lo, hi = min(self.concat), max(self.concat)
        concat = f"range({lo}, {hi + 1})" if self.concat == tuple(range(lo, hi + 1)) else str(list(self.concat))
        return f"Genotype(recurrent=[{rec}], concat={concat})"


@attrs.frozen
class LanguageModel:
    """The authors' RNNModel (docs/recurrent.md "The language model"): tied embedding/decoder, one cell layer."""

    tokens: int = 10000
    ninp: int = 850
    nhid: int = 850
    dropout: float = 0.75  # locked dropout on the cell outputs
    dropouth: float = 0.25  # per-sequence mask on h inside the cell
    dropoutx: float = 0.75  # per-sequence mask on x inside the cell
    dropouti: float = 0.2  # locked dropout on the embedded input
    dropoute: float = 0.1  # embedding dropout (whole words)

    def __attrs_post_init__(self):
        if self.ninp != self.nhid:
            raise ValueError(f"the tied decoder needs ninp == nhid (the authors assert it); got {self.ninp} and {self.nhid}")
        for name in ("dropout", "dropouth", "dropoutx", "dropouti", "dropoute"):
            v = getattr(self, name)
            if not 0 <= v < 1:
                raise ValueError(f"{name} must lie in [0, 1), got {v}")


SEARCH_SIZE = LanguageModel(tokens=10000, ninp=300, nhid=300, dropout=0.75, dropouth=0.25, dropoutx=0.75, dropouti=0.2, dropoute=0.0)
EVAL_SIZE = LanguageModel()


# ---- the authors' genotype text, without eval -------------------------------------------------------------
_GENOTYPE = re.compile(r"^\s*(?:([A-Za-z_][A-Za-z0-9_]*)\s*=\s*)?Genotype\s*\((.*)\)\s*$", re.S)


def parse_genotype(text: str) -> tuple[str | None, Genotype]:
    """`Genotype(recurrent=[('sigmoid', 0), ...], concat=range(1, 9))`, optionally `NAME = ...`.

    Parsed with `ast` (literals only; `range(a, b)` is the one call allowed), never evaluated.
    Raises ValueError with a message on anything else.
    """
    m = _GENOTYPE.match(text)
    if not m:
        raise ValueError("expected Genotype(recurrent=[...], concat=...) or NAME = Genotype(...)")
    try:
        call = ast.parse(f"f({m.group(2)})", mode="eval").body
    except SyntaxError as e:
        raise ValueError(f"not a Genotype call: {e.msg}") from None
    assert isinstance(call, ast.Call)
    if call.args:
        raise ValueError("Genotype arguments must be named: recurrent=..., concat=...")
    kw = {k.arg: k.value for k in call.keywords}
    if set(kw) != {"recurrent", "concat"}:
        raise ValueError(f"a recurrent Genotype has recurrent= and concat=; got {', '.join(sorted(map(str, kw)))}")
    try:
        rec = ast.literal_eval(kw["recurrent"])
    except ValueError:
        raise ValueError("recurrent= must be a list of (op, predecessor) pairs") from None
    if not isinstance(rec, list | tuple) or not all(
        isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], str) and isinstance(x[1], int) and not isinstance(x[1], bool)
        for x in rec
    ):
        raise ValueError("recurrent= must be a list of (op, predecessor) pairs")
    concat = _concat(kw["concat"])
    return m.group(1), Genotype(tuple(rec), concat)


def _concat(node: ast.expr) -> tuple[int, ...]:
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "range" and not node.keywords:
        try:
            args = [ast.literal_eval(a) for a in node.args]
        except ValueError:
            args = []
        if 1 <= len(args) <= 3 and all(isinstance(a, int) and not isinstance(a, bool) for a in args):
            return tuple(range(*args))
        raise ValueError("concat=range(...) takes whole numbers")
    try:
        v = ast.literal_eval(node)
    except ValueError:
        raise ValueError("concat= must be range(a, b) or a list of state indices") from None
    if not isinstance(v, list | tuple) or not all(isinstance(x, int) and not isinstance(x, bool) for x in v):
        raise ValueError("concat= must be range(a, b) or a list of state indices")
    return tuple(v)


# The published recurrent genotypes (DARTS paper, Fig. 6 / the authors' genotypes.py; ENAS Pham et al. 2018).
PUBLISHED = {
    "DARTS_V1": "Genotype(recurrent=[('relu', 0), ('relu', 1), ('tanh', 2), ('relu', 3), ('relu', 4), ('identity', 1), ('relu', 5), ('relu', 1)], concat=range(1, 9))",
    "DARTS_V2": "Genotype(recurrent=[('sigmoid', 0), ('relu', 1), ('relu', 1), ('identity', 1), ('tanh', 2), ('sigmoid', 5), ('tanh', 3), ('relu', 5)], concat=range(1, 9))",
    "ENAS": "Genotype(recurrent=[('tanh', 0), ('tanh', 1), ('relu', 1), ('tanh', 3), ('tanh', 3), ('relu', 3), ('relu', 4), ('relu', 7), ('relu', 8), ('relu', 8), ('relu', 8)], concat=[2, 5, 6, 9, 10, 11])",
}
