"""Recurrent cells (derived and search supernet) and the language model around them (docs/recurrent.md).

Formulas (DARTS Sec. 3.1.2; docs/recurrent.md "The cell"):
    [c0, g0] = [x * mx, h * mh] W0 ;  s0 = h + sigmoid(c0) * (tanh(g0) - h)
    [c, g]   = (s_p * mh) W_i      ;  s_i = s_p + sigmoid(c) * (f(g) - s_p)
    h_t      = mean of the concat states
mx, mh are per-sequence dropout masks (dropoutx, dropouth), drawn once per forward call and applied in
training only. The search cell mixes every earlier state into node i with softmax(alpha) over the ops of
each edge (`none` contributes zero), all edges into node i sharing W_i (one matmul of all earlier states),
and normalises s0 and every node with one BatchNorm1d(nhid, affine=False), as the authors' search model.

The language model: embedding (embedding dropout dropoute, locked dropout dropouti), the cell unrolled
over the sequence, locked dropout `dropout` on its outputs, decoder tied to the embedding, log-softmax.
Weights uniform in [-0.04, 0.04], decoder bias 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nasir import ir
from nasir.rnn.space import Genotype, LanguageModel, SearchSpace

INIT_RANGE = 0.04

_ACT = {
    "tanh": torch.tanh,
    "relu": torch.relu,
    "sigmoid": torch.sigmoid,
    "identity": lambda x: x,
}


def mask2d(batch: int, dim: int, p: float, like: torch.Tensor) -> torch.Tensor:
    """A per-sequence dropout mask [batch, dim]: Bernoulli(1 - p) / (1 - p)."""
    return like.new_empty(batch, dim).bernoulli_(1 - p) / (1 - p)


def locked_dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Variational dropout on [T, B, D]: one mask per sequence, shared by all time steps."""
    if not training or p == 0:
        return x
    return x * x.new_empty(1, x.size(1), x.size(2)).bernoulli_(1 - p) / (1 - p)


def embedded_dropout(weight: torch.Tensor, words: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Embedding dropout: whole rows (words) of the embedding matrix dropped, the rest scaled by 1/(1-p)."""
    if training and p > 0:
        weight = weight * weight.new_empty(weight.size(0), 1).bernoulli_(1 - p) / (1 - p)
    return F.embedding(words, weight)


class _Cell(nn.Module):
    """W0 and one W_i per node; the time loop and the dropout masks."""

    def __init__(self, ninp: int, nhid: int, nodes: int, dropouth: float, dropoutx: float):
        super().__init__()
        self.ninp, self.nhid = ninp, nhid
        self.dropouth, self.dropoutx = dropouth, dropoutx
        self.W0 = nn.Parameter(torch.empty(ninp + nhid, 2 * nhid).uniform_(-INIT_RANGE, INIT_RANGE))
        self.Ws = nn.ParameterList(
            [nn.Parameter(torch.empty(nhid, 2 * nhid).uniform_(-INIT_RANGE, INIT_RANGE)) for _ in range(nodes)]
        )

    def init_state(self, x, h, mx, mh):
        xh = torch.cat([x * mx, h * mh] if mx is not None else [x, h], dim=-1)
        c0, g0 = torch.split(xh.mm(self.W0), self.nhid, dim=-1)
        return h + torch.sigmoid(c0) * (torch.tanh(g0) - h)

    def step(self, x, h, mx, mh):  # pragma: no cover - overridden
        raise NotImplementedError

    def forward(self, inputs: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """inputs [T, B, ninp], hidden [B, nhid] -> the hidden states [T, B, nhid]."""
        B = inputs.size(1)
        mx = mh = None
        if self.training:
            mx = mask2d(B, self.ninp, self.dropoutx, inputs)
            mh = mask2d(B, self.nhid, self.dropouth, inputs)
        out = []
        h = hidden
        for t in range(inputs.size(0)):
            h = self.step(inputs[t], h, mx, mh)
            out.append(h)
        return torch.stack(out)


class DerivedCell(_Cell):
    """A derived cell: node i reads the one state `genotype.recurrent[i-1][1]` through its op."""

    def __init__(self, ninp: int, nhid: int, genotype: Genotype, dropouth: float = 0.0, dropoutx: float = 0.0):
        super().__init__(ninp, nhid, genotype.nodes, dropouth, dropoutx)
        self.genotype = genotype

    def step(self, x, h, mx, mh):
        states = [self.init_state(x, h, mx, mh)]
        for (op, p), W in zip(self.genotype.recurrent, self.Ws):
            s = states[p]
            c, g = torch.split((s * mh if mh is not None else s).mm(W), self.nhid, dim=-1)
            states.append(s + torch.sigmoid(c) * (_ACT[op](g) - s))
        return torch.stack([states[i] for i in self.genotype.concat]).mean(0)


class SearchCell(_Cell):
    """The search supernet's cell: every earlier state feeds every node, mixed by softmax(alpha) per edge."""

    def __init__(self, ninp: int, nhid: int, space: SearchSpace, dropouth: float = 0.0, dropoutx: float = 0.0):
        super().__init__(ninp, nhid, space.nodes, dropouth, dropoutx)
        self.space = space
        self.register_buffer("rows", torch.tensor(space.row_index, dtype=torch.long), persistent=False)
        self.bn = nn.BatchNorm1d(nhid, affine=False)  # one BN for s0 and all nodes, as the authors' search model
        self.weights: torch.Tensor | None = None  # softmax(alpha) [edges, ops], set by the model per forward

    def step(self, x, h, mx, mh):
        assert self.weights is not None, "SearchCell needs the mixing weights (set by SearchLM.forward)"
        w = self.weights[self.rows]  # alpha rows -> (destination, source) order
        s0 = self.bn(self.init_state(x, h, mx, mh))
        states = s0.unsqueeze(0)  # [i, B, H]
        offset = 0
        for i, W in enumerate(self.Ws, start=1):
            masked = states * mh.unsqueeze(0) if mh is not None else states
            c, g = torch.split(masked.reshape(-1, self.nhid).mm(W).view(i, -1, 2 * self.nhid), self.nhid, dim=-1)
            c = torch.sigmoid(c)
            rows = w[offset : offset + i]  # [i, ops]
            s = torch.zeros_like(s0)
            for k, op in enumerate(self.space.ops):
                if op == "none":
                    continue
                mixed = states + c * (_ACT[op](g) - states)
                s = s + (rows[:, k].view(i, 1, 1) * mixed).sum(0)
            s = self.bn(s)
            states = torch.cat([states, s.unsqueeze(0)], 0)
            offset += i
        return states[list(self.space.output)].mean(0)


class RNNLM(nn.Module):
    """Embedding -> recurrent cell over the sequence -> tied decoder (the authors' RNNModel, one layer)."""

    def __init__(self, lm: LanguageModel, cell: _Cell):
        super().__init__()
        self.lm = lm
        self.encoder = nn.Embedding(lm.tokens, lm.ninp)
        self.cell = cell
        self.decoder = nn.Linear(lm.ninp, lm.tokens)
        self.decoder.weight = self.encoder.weight  # tied (Press & Wolf; the authors' model)
        with torch.no_grad():
            self.encoder.weight.uniform_(-INIT_RANGE, INIT_RANGE)
            self.decoder.bias.zero_()

    def init_hidden(self, batch: int) -> torch.Tensor:
        return self.encoder.weight.new_zeros(batch, self.lm.nhid)

    def forward(self, words: torch.Tensor, hidden: torch.Tensor, return_h: bool = False):
        """words [T, B] -> log-probabilities [T, B, V], the last hidden state [B, H]
        (and, with return_h, the cell outputs before and after the output dropout, for AR/TAR)."""
        lm = self.lm
        emb = embedded_dropout(self.encoder.weight, words, lm.dropoute, self.training)
        emb = locked_dropout(emb, lm.dropouti, self.training)
        raw = self.cell(emb, hidden)
        out = locked_dropout(raw, lm.dropout, self.training)
        log_prob = F.log_softmax(self.decoder(out), dim=-1)
        if return_h:
            return log_prob, raw[-1], raw, out
        return log_prob, raw[-1]

    def weight_parameters(self) -> list[nn.Parameter]:
        return list(self.parameters())


class SearchLM(RNNLM):
    """The search supernet: RNNLM with a SearchCell and alpha [edges, ops] (init 1e-3 * N(0, 1), the authors')."""

    def __init__(self, lm: LanguageModel, space: SearchSpace):
        super().__init__(lm, SearchCell(lm.ninp, lm.nhid, space, lm.dropouth, lm.dropoutx))
        self.space = space
        self.alpha = nn.Parameter(1e-3 * torch.randn(len(space.edges), len(space.ops)))

    def forward(self, words, hidden, return_h: bool = False):
        self.cell.weights = F.softmax(self.alpha, dim=-1)
        try:
            return super().forward(words, hidden, return_h)
        finally:
            self.cell.weights = None

    def weight_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if n != "alpha"]

    def arch_parameters(self) -> list[nn.Parameter]:
        return [self.alpha]


def space_cell(space: SearchSpace, name: str = "rnn") -> ir.Cell:
    """The IR of a search space given without a `.cell` file: `edges * -> s* : choice(ops)`, `keep 1`,
    `output mean(...)`, alpha rows numbered as `space.rows` says (passes/mixed_ops.py's numbering when the
    space came from a file), so that passes/derive.py derives it as it derives a cell written in the DSL."""
    states = [f"s{i}" for i in range(space.nodes + 1)]
    choice = ir.Choice(tuple(space.ops), "{" + ", ".join(space.ops) + "}")
    edges = tuple(ir.Edge(states[p], states[i], choice=choice, alpha=r) for (p, i), r in zip(space.edges, space.row_index))
    return ir.Cell(name, (ir.Node(states[0]),), tuple(ir.Node(s) for s in states[1:]), edges,
                   ir.Output("mean", tuple(states[i] for i in space.output)), keep=1,
                   alpha_rows=tuple(tuple(space.ops) for _ in edges), recurrent=True)  # fmt: skip


def derive(space: SearchSpace, scores: torch.Tensor, cell: ir.Cell | None = None) -> Genotype:
    """k = 1 per node (the authors' genotype()), by the shared derivation pass (passes/derive.py).

    `scores` [alpha rows, ops] is softmax(alpha) for magnitude selection or the operation strength. The
    pass keeps, per node, the source whose strongest non-`none` op scores highest, with that op; ties go
    to the earlier source / earlier op (a stable sort, as the authors' `sorted`). `cell` is the search
    cell's IR (from the `.cell` file; passes/mixed_ops.py is run on it when it has not been); None: the
    IR of `space` (space_cell). Every node stays in the genotype (no dead-node elimination here).
    """
    from nasir.passes.derive import Derive
    from nasir.passes.mixed_ops import MixedOps

    cell = space_cell(space) if cell is None else cell
    if cell.alpha_rows is None:
        cell = MixedOps().run(ir.Spec("<recurrent>", cells=(cell,))).spec.cells[0]
    states = {s: i for i, s in enumerate(cell.states)}
    rows = {(states[e.src], states[e.dst]): e.alpha for e in cell.edges}
    if len(cell.nodes) != space.nodes or [rows.get(e) for e in space.edges] != list(space.row_index):
        raise ValueError(f"cell '{cell.name}' does not have the alpha rows of the search space")
    table = scores.detach().double().tolist()
    derived = Derive({cell.name: table}, dead_nodes=False).run(ir.Spec("<recurrent>", cells=(cell,))).spec.cells[0]
    gene = []
    for n in cell.node_names:
        (e,) = derived.in_edges(n)
        gene.append((e.op, states[e.src]))
    return Genotype(tuple(gene), space.output)


def build(lm: LanguageModel, genotype: Genotype) -> RNNLM:
    return RNNLM(lm, DerivedCell(lm.ninp, lm.nhid, genotype, lm.dropouth, lm.dropoutx))
