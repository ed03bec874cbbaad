"""Recurrent cells in the language: parsing, verification, printing, import, info, lowering (docs/recurrent.md)."""

import json
from pathlib import Path

import pytest
import torch

from nasir import cli
from nasir.api import load
from nasir.diagnostics import DiagnosticError
from nasir.frontend import parse_text
from nasir.printer import print_spec
from nasir.rnn import api
from nasir.rnn.cell import SearchLM
from nasir.rnn.lower import lower
from nasir.rnn.space import PRIMITIVES, PUBLISHED, LanguageModel, parse_genotype

ROOT = Path(__file__).resolve().parents[2]
PTB, V2CELL = ROOT / "examples" / "ptb.cell", ROOT / "examples" / "darts_v2_rnn.cell"
GENOTYPES = "\n".join(f"{k} = {v}" for k, v in PUBLISHED.items()) + "\nDARTS = DARTS_V2\n"


def authors_count(tokens, size, nodes):
    """The authors' RNNModel, counted by hand: tied embedding/decoder weight once, decoder bias, W0, W_i."""
    return tokens * size + tokens + (size + size) * 2 * size + nodes * size * 2 * size


def test_examples_lower_to_the_darts_space_and_cell():
    low = lower(load(PTB))
    assert low.space is not None and low.space.nodes == 8 and low.space.ops == PRIMITIVES
    assert len(low.space.edges) == 36 and low.space.row_index == tuple(range(36))
    assert (low.lm.ninp, low.lm.nhid, low.lm.tokens, low.lm.dropoute) == (300, 300, 10000, 0)
    low = lower(load(V2CELL))
    assert low.genotype == parse_genotype(PUBLISHED["DARTS_V2"])[1]
    assert (low.lm.nhid, low.lm.dropout, low.lm.dropouth, low.lm.dropoutx, low.lm.dropouti, low.lm.dropoute) == (850, 0.75, 0.25, 0.75, 0.2, 0.1)


@pytest.mark.parametrize("path", [PTB, V2CELL])
def test_canonical_print_parses_back_to_the_same_ir(path):
    spec = load(path)
    again = parse_text(print_spec(spec))
    assert again.cells == spec.cells and again.networks == spec.networks and again.search == spec.search


def test_import_darts_v2_defaults_to_evaluation_size_and_the_authors_count(tmp_path, capsys):
    g = tmp_path / "genotypes.py"
    g.write_text(GENOTYPES)
    out = tmp_path / "v2.cell"
    assert cli.main(["import", str(g), "--name", "DARTS", "-o", str(out)]) == 0
    assert lower(load(out)).genotype == parse_genotype(PUBLISHED["DARTS_V2"])[1]
    capsys.readouterr()
    assert cli.main(["info", str(out), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["params"] == authors_count(10000, 850, 8) == 22_960_000
    assert d["params_untied"] == d["params"] + 10000 * 850
    assert d["depth"] == 5 and d["cells"][0]["recurrent"]
    # alone, and ENAS (11 nodes, concat [2, 5, 6, 9, 10, 11])
    (tmp_path / "enas.txt").write_text(PUBLISHED["ENAS"])
    assert cli.main(["import", str(tmp_path / "enas.txt"), "-o", str(tmp_path / "enas.cell"), "--set", "size=200"]) == 0
    low = lower(load(tmp_path / "enas.cell"))
    assert low.genotype.concat == (2, 5, 6, 9, 10, 11) and low.lm.nhid == 200
    assert api.info(tmp_path / "enas.cell")["params"] == authors_count(10000, 200, 11)
    capsys.readouterr()
    assert cli.main(["export-genotype", str(out)]) == 0
    assert capsys.readouterr().out.strip() == PUBLISHED["DARTS_V2"]


@pytest.mark.parametrize("text,where,message", [
    ("Genotype(recurrent=[('conv', 0)], concat=[1])", "1:23", "'conv' is not a recurrent op"),
    ("Genotype(recurrent=[('relu', 0), ('tanh', 2)], concat=[1, 2])", "1:43", "index 2 is out of range"),
    ("Genotype(recurrent=[('relu', 0)], concat=[3])", "1:43", "concat index 3 is out of range"),
    ("Genotype(recurrent=[('relu', 0)], concat=[1], extra=1)", "1:47", "a recurrent Genotype(...) has no field 'extra'"),
])  # fmt: skip
def test_bad_recurrent_genotypes_point_at_the_text(tmp_path, capsys, text, where, message):
    f = tmp_path / "g.txt"
    f.write_text(text)
    assert cli.main(["import", str(f)]) == 2
    err = capsys.readouterr().err
    assert f"g.txt:{where}: error: {message}" in err


def test_recurrent_genotype_refuses_a_cnn_macro(tmp_path, capsys):
    f = tmp_path / "g.txt"
    f.write_text(PUBLISHED["DARTS_V1"])
    assert cli.main(["import", str(f), "--macro", "cifar"]) == 2
    assert "imported into a language model" in capsys.readouterr().err


CNN_OPS = 'opset rnn_ops = {none, tanh, relu, sigmoid, identity}\n'
LM = "network ptb(tokens = 100, size = 8) {\n  language_model rnn(tokens = tokens, ninp = size, nhid = size)\n}\n"


@pytest.mark.parametrize("text,where,message", [
    # a recurrent op in a convolutional cell
    ("cell c {\n  inputs a, b\n  nodes n0\n  edges * -> n0 : tanh\n  output concat(n0)\n}\n", "4:3", "'tanh' is a recurrent op"),
    # mean output in a convolutional cell
    ("cell c {\n  inputs a\n  nodes n0\n  edges a -> n0 : skip_connect\n  output mean(n0)\n}\n", "5:3", "'output mean(...)' is the output of a recurrent cell"),
    # a derived recurrent node with two inputs
    ("cell rnn {\n  recurrent\n  inputs s0\n  nodes s1, s2\n  edges s0 -> s1 : relu\n  edges s0 -> s2 : relu\n  edges s1 -> s2 : tanh\n"
     "  output mean(s1, s2)\n}\n" + LM, "4:13", "node 's2' of a derived recurrent cell has 2 inputs"),
    # k = 2 in a recurrent search cell
    (CNN_OPS + "cell rnn {\n  recurrent\n  inputs s0\n  nodes s1..s3\n  edges * -> s* : choice(rnn_ops)\n  output mean(s1..s3)\n"
     "  keep 2 inputs per node\n}\n" + LM, "8:3", "a recurrent cell keeps 1 input per node"),
    # not the full DARTS space
    (CNN_OPS + "cell rnn {\n  recurrent\n  inputs s0\n  nodes s1..s3\n  edges s0 -> s* : choice(rnn_ops)\n  output mean(s1..s3)\n"
     "  keep 1 inputs per node\n}\n" + LM, "2:1", "reads every earlier state into every node"),
    # a convolutional op in a recurrent cell
    ("cell rnn {\n  recurrent\n  inputs s0\n  nodes s1\n  edges s0 -> s1 : sep_conv_3x3\n  output mean(s1)\n}\n" + LM, "5:3",
     "'sep_conv_3x3' is not a recurrent op"),
    # the language model
    ("cell rnn {\n  recurrent\n  inputs s0\n  s1 = relu(s0)\n  output mean(s1)\n}\n"
     "network ptb(size = 8) {\n  language_model rnn(tokens = 10, ninp = size, nhid = size, hidden = 3)\n}\n", "8:61",
     "language_model has no argument 'hidden'"),
    ("cell rnn {\n  recurrent\n  inputs s0\n  s1 = relu(s0)\n  output mean(s1)\n}\n"
     "network ptb(size = 8) {\n  language_model rnn(tokens = 10, ninp = size, nhid = 2 * size)\n}\n", "8:3", "ninp == nhid"),
    ("cell rnn {\n  recurrent\n  inputs s0\n  s1 = relu(s0)\n  output mean(s1)\n}\n"
     "network ptb(size = 8) {\n  stem conv3x3(8)\n  language_model rnn(tokens = 10, ninp = size, nhid = size)\n}\n", "8:3",
     "a language-model network has no 'stem' statement"),
    ("cell c {\n  inputs a\n  nodes n0\n  edges a -> n0 : skip_connect\n  output n0\n}\n"
     "network ptb(size = 8) {\n  language_model c(tokens = 10, ninp = size, nhid = size)\n}\n", "8:3", "cell 'c' is not recurrent"),
    ("cell rnn {\n  recurrent\n  inputs s0\n  s1 = relu(s0)\n  output mean(s1)\n}\n"
     "network ptb(size = 8) {\n  language_model rnn(ninp = size, nhid = size)\n}\n", "8:3", "language_model needs 'tokens'"),
])  # fmt: skip
def test_diagnostics(text, where, message):
    with pytest.raises(DiagnosticError) as e:
        load(text, name="x.cell")
    rendered = e.value.render()
    lines = [x for x in rendered.splitlines() if x.startswith(f"x.cell:{where}: error: ")]
    assert any(message in x for x in lines), rendered


SPACE = CNN_OPS + "cell rnn {\n  recurrent\n  inputs s0\n  nodes s1..s3\nEDGES\n  output mean(s1..s3)\n  keep 1 inputs per node\n}\n" + LM


def test_alpha_rows_follow_the_ir_edge_order():
    """The same space with its edges written source-major: alpha rows permute, the supernet computes the same."""
    a = lower(load(SPACE.replace("EDGES", "  edges * -> s* : choice(rnn_ops)")))
    b = lower(load(SPACE.replace("EDGES", "\n".join(f"  edges s{i} -> s* : choice(rnn_ops)" for i in range(3)))))
    # IR order of b: (s0,s1) (s0,s2) (s0,s3) (s1,s2) (s1,s3) (s2,s3); canonical: (0,1) (0,2) (1,2) (0,3) (1,3) (2,3)
    assert b.space.row_index == (0, 1, 3, 2, 4, 5) and a.space.row_index == tuple(range(6))
    lm = LanguageModel(tokens=100, ninp=8, nhid=8, dropout=0, dropouth=0, dropoutx=0, dropouti=0, dropoute=0)
    torch.manual_seed(0)
    ma = SearchLM(lm, a.space)
    mb = SearchLM(lm, b.space)
    mb.load_state_dict(ma.state_dict())
    with torch.no_grad():
        ma.alpha.normal_()
        mb.alpha.copy_(ma.alpha[[0, 1, 3, 2, 4, 5]])  # b's row r is the edge of a's row perm[r]
    words = torch.randint(0, 100, (4, 3))
    assert torch.allclose(ma(words, ma.init_hidden(3))[0], mb(words, mb.init_hidden(3))[0], atol=1e-6)


def test_search_from_the_spec_derives_a_clean_cell_and_resumes(tmp_path):
    kw = dict(overrides=["size=6"], epochs=2, batch_size=64, limit_batches=2, bptt=12, progress=False, artifacts=False)
    whole = api.search(PTB, "embedded", tmp_path / "a", **kw)
    with pytest.raises(KeyboardInterrupt):
        api.search(PTB, "embedded", tmp_path / "b", stop_after_steps=3, **kw)
    resumed = api.search(PTB, "embedded", tmp_path / "b", resume=True, **kw)
    text = (tmp_path / "a" / "derived.cell").read_text()
    assert text == (tmp_path / "b" / "derived.cell").read_text() and resumed.alphas == whole.alphas
    derived = load(tmp_path / "a" / "derived.cell")  # parses and verifies
    low = lower(derived)
    assert low.genotype == whole.genotype and low.lm.tokens == 76 and low.lm.nhid == 6
    assert (tmp_path / "a" / "genotype.txt").read_text().strip() == str(whole.genotype)
    assert len(json.loads((tmp_path / "a" / "alphas.json").read_text())["rnn"]) == 36


def test_compile_targets_of_a_derived_spec(tmp_path):
    from nasir.rnn.export import onnx_parity

    over = ["size=8", "tokens=20"]
    path = api.compile(V2CELL, "onnx", tmp_path / "lm.onnx", overrides=over, seed=3)
    model = api.build(V2CELL, overrides=over, seed=3)
    assert onnx_parity(model, path, lengths=(4, 13)) < 1e-4
    ts = torch.jit.load(str(api.compile(V2CELL, "torchscript", tmp_path / "lm.pt", overrides=over, seed=3)))
    words, h = torch.randint(0, 20, (6, 2)), torch.zeros(2, 8)
    assert torch.allclose(ts(words, h)[0], model(words, h)[0], atol=1e-6)
    assert "class RecurrentLM" in api.compile(V2CELL, "torch", tmp_path / "lm.py", overrides=over).read_text()


def test_cli_hooks_take_the_main_parsers_flags(tmp_path, capsys):
    """The dispatch functions the main CLI calls for a language model, fed by its own argument parser."""
    from nasir.rnn import hooks

    p = cli.build_parser()
    args = p.parse_args(["search", str(PTB), "--out", str(tmp_path / "s"), "--epochs", "1", "--batch-size", "64",
                         "--limit-batches", "2", "--order", "2", "--select", "strength", "--set", "size=4", "--no-progress"])  # fmt: skip
    assert hooks.search_cli(args) == 0
    out = capsys.readouterr().out
    assert "genotype: Genotype(recurrent=" in out and (tmp_path / "s" / "derived.onnx").is_file()
    args = p.parse_args(["train", str(tmp_path / "s" / "derived.cell"), "--out", str(tmp_path / "t"), "--epochs", "1",
                         "--batch-size", "32", "--limit-batches", "3"])  # fmt: skip
    assert hooks.train_cli(args) == 0
    assert "test perplexity" in capsys.readouterr().err
    assert hooks.compile_spec(tmp_path / "s" / "derived.cell", "onnx", tmp_path / "m.onnx", weights=tmp_path / "t" / "model.pt") == tmp_path / "m.onnx"
    cnn = p.parse_args(["search", str(ROOT / "examples" / "digits.cell"), "--out", str(tmp_path / "d")])
    assert hooks.search_cli(cnn) is None  # not a language model: the CNN path runs
