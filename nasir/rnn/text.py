"""`.cell` text of a derived recurrent cell and its language-model network (the DSL form in docs/recurrent.md)."""

from __future__ import annotations

from nasir.rnn.space import Genotype, LanguageModel


def _num(v: float | int) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def cell_text(genotype: Genotype, name: str = "rnn") -> str:
    n = genotype.nodes
    lines = [f"cell {name} {{", "  recurrent", "  inputs s0", f"  nodes  s1..s{n}" if n > 1 else "  nodes  s1"]
    for i, (op, p) in enumerate(genotype.recurrent, start=1):
        lines.append(f"  edges  s{p} -> s{i} : {op}")
    lines.append(f"  output mean({_states(genotype.concat)})")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _states(idx: tuple[int, ...]) -> str:
    lo, hi = min(idx), max(idx)
    if idx == tuple(range(lo, hi + 1)) and hi > lo:
        return f"s{lo}..s{hi}"
    return ", ".join(f"s{i}" for i in idx)


def network_text(lm: LanguageModel, cell: str = "rnn", name: str = "ptb") -> str:
    return (
        f"network {name}(tokens = {lm.tokens}, size = {lm.nhid}) {{\n"
        f"  language_model {cell}(tokens = tokens, ninp = size, nhid = size, dropout = {_num(lm.dropout)},\n"
        f"                     dropouth = {_num(lm.dropouth)}, dropoutx = {_num(lm.dropoutx)},"
        f" dropouti = {_num(lm.dropouti)}, dropoute = {_num(lm.dropoute)})\n"
        "}\n"
    )


def derived_text(genotype: Genotype, lm: LanguageModel, *, cell: str = "rnn", network: str = "ptb", header: str = "") -> str:
    head = f"# {header}\n" if header else ""
    return head + cell_text(genotype, cell) + "\n" + network_text(lm, cell, network)
