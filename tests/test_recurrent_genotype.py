"""A recurrent cell <-> the authors' recurrent Genotype, in the front end (nasir/genotype.py).

Reading the genotype off a derived `.cell` takes only its IR: the cell's one in-edge per node and its
`output mean(...)` (docs/recurrent.md), not a lowering of the language model through the passes.
The expected strings are the authors' published genotypes (their rnn/genotypes.py, DARTS paper Fig. 6)
or genotypes drawn at random and printed in the authors' form by hand below.
"""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest

from nasir.api import load
from nasir.diagnostics import DiagnosticError
from nasir.frontend import parse_text
from nasir.genotype import (
    parse_genotype,
    recurrent_genotype_of_cell,
    recurrent_spec_text,
    spec_to_genotype,
    spec_to_nb201,
)

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
DARTS_V2 = ("Genotype(recurrent=[('sigmoid', 0), ('relu', 1), ('relu', 1), ('identity', 1), ('tanh', 2), "
            "('sigmoid', 5), ('tanh', 3), ('relu', 5)], concat=range(1, 9))")  # fmt: skip
ACTS = ("tanh", "relu", "sigmoid", "identity")


def _authors_str(pairs, concat) -> str:
    """How the authors' namedtuple prints, with concat=range(lo, hi+1) as their files write it."""
    rec = ", ".join(f"('{op}', {p})" for op, p in pairs)
    lo, hi = min(concat), max(concat)
    c = f"range({lo}, {hi + 1})" if list(concat) == list(range(lo, hi + 1)) else str(list(concat))
    return f"Genotype(recurrent=[{rec}], concat={c})"


def test_the_example_reads_back_as_the_published_darts_v2():
    assert spec_to_genotype(load(EXAMPLES / "darts_v2_rnn.cell")) == DARTS_V2
    assert spec_to_nb201(load(EXAMPLES / "darts_v2_rnn.cell")) == DARTS_V2  # one input per cell, yet recurrent


def test_random_genotypes_round_trip_through_cell_text():
    rng = random.Random(7)
    for _ in range(25):
        n = rng.randint(1, 9)
        pairs = [(rng.choice(ACTS), rng.randrange(i)) for i in range(1, n + 1)]
        read = {p for _, p in pairs}
        sinks = {i for i in range(1, n + 1) if i not in read}  # a node no later node reads is in concat (no dead nodes)
        concat = sorted(sinks | set(rng.sample(range(n + 1), rng.randint(0, n + 1))))
        want = _authors_str(pairs, concat)
        g = parse_genotype(want)
        text = recurrent_spec_text(g)
        assert spec_to_genotype(load(text)) == want
        assert recurrent_genotype_of_cell(load(text).cells[0]).cell.recurrent == tuple(pairs)


def test_a_file_of_one_recurrent_cell_and_no_network_has_a_genotype():
    # edges out of declaration order: node i is the i-th node declared, whatever order the edges come in
    text = """cell c {
  recurrent
  inputs s0
  nodes  s1..s3
  edges  s1 -> s3 : tanh
  edges  s0 -> s2 : relu
  edges  s0 -> s1 : identity
  output mean(s2, s3)
}
"""
    assert spec_to_genotype(load(text)) == "Genotype(recurrent=[('identity', 0), ('relu', 0), ('tanh', 1)], concat=range(2, 4))"


def test_reading_a_recurrent_genotype_loads_no_pass_and_no_torch():
    # the layering (tests/test_layering.py): genotype <-> .cell is front end; parse, print, load, read back
    code = f"""
import sys
from nasir.api import load
from nasir.genotype import parse_genotype, recurrent_spec_text, spec_to_genotype
g = parse_genotype({DARTS_V2!r})
assert spec_to_genotype(load(recurrent_spec_text(g))) == {DARTS_V2!r}
print(sorted(m for m in sys.modules if m == "torch" or m.startswith(("nasir.passes", "nasir.pipeline", "nasir.rnn.lower"))))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_search_space_is_refused_at_its_cell():
    with pytest.raises(DiagnosticError) as e:
        spec_to_genotype(load(EXAMPLES / "ptb.cell"))
    (d,) = e.value.diagnostics
    assert "cell 'rnn' is a search space" in d.message and d.span.line == 6  # `cell rnn {`


def test_an_unverified_cell_with_two_edges_into_a_node_is_an_error_not_a_genotype():
    spec = parse_text("""cell c {
  recurrent
  inputs s0
  nodes  s1..s2
  edges  s0 -> s1 : tanh
  edges  s0 -> s2 : relu
  edges  s1 -> s2 : relu
  output mean(s1..s2)
}
""")
    with pytest.raises(DiagnosticError) as e:
        spec_to_genotype(spec)
    assert [d.message for d in e.value.diagnostics] == [
        "node 's2' of a derived recurrent cell has 2 inputs; it has exactly one (k = 1)"
    ]
