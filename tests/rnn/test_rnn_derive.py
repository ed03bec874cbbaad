"""The recurrent cell derives through the shared pass (passes/derive.py), on the `.cell` file's IR."""

import pytest
import torch

from nasir import ops
from nasir.api import load
from nasir.passes.derive import Derive
from nasir.rnn.cell import derive, space_cell
from nasir.rnn.lower import lower
from nasir.rnn.space import SearchSpace

LM = "network ptb(tokens = 100, size = 8) {\n  language_model rnn(tokens = tokens, ninp = size, nhid = size)\n}\n"
# Edges written source-major (s0 -> s1, s0 -> s2, s0 -> s3, s1 -> s2, ...), so the alpha rows the IR numbers
# are a permutation of the runtime's (destination, source) order; `none` is not the first op.
PERMUTED = (
    "opset o = {tanh, none, relu, identity, sigmoid}\n"
    "cell rnn {\n  recurrent\n  inputs s0\n  nodes s1..s3\n"
    "  edges s0 -> s1 : choice(o)\n  edges s0 -> s2 : choice(o)\n  edges s0 -> s3 : choice(o)\n"
    "  edges s1 -> s2 : choice(o)\n  edges s1 -> s3 : choice(o)\n  edges s2 -> s3 : choice(o)\n"
    "  output mean(s1..s3)\n  keep 1 inputs per node\n}\n" + LM
)


def authors_genotype(probs, ops_, steps):
    """The DARTS authors' recurrent `genotype()._parse`, re-written here: rows in (destination, source)
    order, per node the source whose best non-`none` op is largest (first on ties), then that best op."""
    none = ops_.index("none")
    gene, start = [], 0
    for i in range(steps):
        end = start + i + 1
        W = probs[start:end]
        j = sorted(range(i + 1), key=lambda x: -max(W[x][k] for k in range(len(W[x])) if k != none))[0]
        k_best = None
        for k in range(len(W[j])):
            if k != none and (k_best is None or W[j][k] > W[j][k_best]):
                k_best = k
        gene.append((ops_[k_best], j))
        start = end
    return tuple(gene)


def test_recurrent_ops_are_in_the_registry_with_none_the_zero_op_and_cnn_ops_unchanged():
    assert set(ops.RECURRENT) == {"none", "tanh", "relu", "sigmoid", "identity"}
    assert [n for n, d in ops.RECURRENT.items() if d.is_zero] == ["none"]
    assert ops.op_def("none") is ops.REGISTRY["none"] and ops.op_def("sep_conv_3x3") is ops.REGISTRY["sep_conv_3x3"]
    assert "tanh" not in ops.REGISTRY  # a convolutional cell still reports a recurrent op as unknown
    with pytest.raises(KeyError):
        ops.op_def("conv_9x9")


def test_derive_from_the_cell_file_ir_equals_the_authors_genotype_with_permuted_rows_and_ops():
    spec = load(PERMUTED)
    low = lower(spec)
    space = low.space
    assert space.row_index != tuple(range(6)) and space.ops == ("tanh", "none", "relu", "identity", "sigmoid")
    g = torch.Generator().manual_seed(5)
    for trial in range(30):
        scores = torch.rand(6, 5, generator=g)
        if trial % 3 == 0:
            scores[:, 1] += 2.0  # `none` dominates every edge: it must still never be kept
        by_dst_src = [scores[space.row_index[k]].tolist() for k in range(6)]  # alpha rows -> (dst, src) order
        want = authors_genotype(by_dst_src, list(space.ops), 3)
        assert derive(space, scores, low.cell).recurrent == want
        assert derive(space, scores).recurrent == want  # the space's own IR (space_cell) gives the same


def test_ties_go_to_the_earlier_source_and_op_as_the_authors_sorted():
    space = SearchSpace(nodes=2)
    scores = torch.zeros(3, 5)
    scores[1:, 1:] = 0.5  # node 2: both sources and all live ops tie
    assert derive(space, scores).recurrent[1] == ("tanh", 0)


def test_the_pass_itself_keeps_one_edge_per_node_and_a_mismatched_cell_is_refused():
    space = SearchSpace(nodes=3)
    cell = space_cell(space)
    scores = torch.rand(6, 5, generator=torch.Generator().manual_seed(1)).tolist()
    from nasir import ir

    derived = Derive({"rnn": scores}).run(ir.Spec("x", cells=(cell,))).spec.cells[0]
    assert [len(derived.in_edges(n)) for n in derived.node_names] == [1, 1, 1]
    assert all(not e.is_choice and e.op != "none" for e in derived.edges) and derived.recurrent
    with pytest.raises(ValueError, match="alpha rows"):
        derive(SearchSpace(nodes=2), torch.rand(3, 5), cell)


def test_a_search_from_the_cell_file_writes_derived_png_and_derives_the_authors_genotype_of_its_alphas(tmp_path):
    import json
    from pathlib import Path

    from nasir.rnn import api
    from nasir.rnn.lower import genotype_of

    ptb = Path(__file__).resolve().parents[2] / "examples" / "ptb.cell"
    r = api.search(ptb, "embedded", tmp_path, overrides=["size=4"], epochs=1, batch_size=64, limit_batches=2, bptt=8, progress=False)
    assert (tmp_path / "derived.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and r.files["derived.png"] == tmp_path / "derived.png"
    alpha = torch.tensor(json.loads((tmp_path / "alphas.json").read_text())["rnn"], dtype=torch.float32)  # the runtime's dtype
    probs = alpha.softmax(-1).tolist()  # ptb.cell's rows are already in (destination, source) order
    want = authors_genotype(probs, ["none", "tanh", "relu", "sigmoid", "identity"], 8)
    assert r.genotype.recurrent == want
    assert genotype_of(load(tmp_path / "derived.cell")).recurrent == want
