"""`--network NAME` / `network=`: one of several networks of a file (docs/cli.md, "Several networks in one file").

The independent source is the single-network file: choosing network N of a file must give what a
file holding only N (and the same cells) gives, module for module, count for count.
"""

from __future__ import annotations

import json

import pytest
import torch
from helpers import spec_of

import nasir
from nasir.api import select_network
from nasir.cli import main
from nasir.diagnostics import DiagnosticError

CELLS = """
cell n1 {
  inputs c_k2, c_k1
  n0 = sep_conv_3x3(c_k2) + skip_connect(c_k1)
  n1 = max_pool_3x3(c_k1) + dil_conv_3x3(n0)
  output concat(n0, n1)
}
cell r1 {
  inputs c_k2, c_k1
  stride 2 from inputs
  n0 = max_pool_3x3(c_k2) + max_pool_3x3(c_k1)
  n1 = skip_connect(n0) + avg_pool_3x3(c_k1)
  output concat(n0, n1)
}
cell n2 {
  inputs c_k2, c_k1
  n0 = sep_conv_5x5(c_k1) + sep_conv_3x3(c_k2)
  n1 = skip_connect(n0) + dil_conv_5x5(c_k2)
  output concat(n0, n1)
}
cell r2 {
  inputs c_k2, c_k1
  stride 2 from inputs
  n0 = avg_pool_3x3(c_k2) + sep_conv_3x3(c_k1)
  n1 = max_pool_3x3(n0) + skip_connect(c_k2)
  output concat(n0, n1)
}
"""
WIDE = """
network wide(C = 4, layers = 3, classes = 10) {
  input (3, 8, 8)
  stem  conv3x3(3 * C), bn
  stack layers cells(C): n1, r1 at 1/3, 2/3
  head  global_avg_pool, linear(classes)
}
"""
GREY = """
network grey(C = 2, layers = 2) {
  input (1, 8, 8)
  stem  conv3x3(3 * C), bn
  stack layers cells(C): n2, r2 at 1/2
  head  global_avg_pool, linear(5)
}
"""
TWO = CELLS + WIDE + GREY


def write(tmp_path, text, name="two.cell"):
    path = tmp_path / name
    path.write_text(text.lstrip("\n"))
    return path


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_without_a_name_the_first_network_is_used_as_before():
    spec = spec_of(TWO)
    assert [n.name for n in spec.networks] == ["wide", "grey"]
    assert select_network(spec, None) is spec and select_network(spec, "wide") is spec
    assert nasir.build(spec).classifier.out_features == 10


def test_a_chosen_network_builds_what_a_file_with_only_that_network_builds():
    alone = nasir.build(spec_of(CELLS + GREY), seed=3)
    chosen = nasir.build(spec_of(TWO), network="grey", seed=3)
    assert {k: v.shape for k, v in chosen.state_dict().items()} == {k: v.shape for k, v in alone.state_dict().items()}
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    alone.eval(), chosen.eval()
    assert torch.equal(chosen(x), alone(x)) and chosen(x).shape == (2, 5)


def test_the_chosen_network_comes_first_and_every_network_is_still_verified():
    spec = nasir.load(TWO, name="t.cell", network="grey")
    assert [n.name for n in spec.networks] == ["grey", "wide"]
    with pytest.raises(DiagnosticError, match="cell count must be at least 1"):  # wide is checked too
        nasir.load(TWO.replace("layers = 3", "layers = 0"), name="t.cell", network="grey")


def test_overrides_are_checked_against_the_chosen_network(tmp_path):
    path = write(tmp_path, TWO)
    assert nasir.build(path, overrides=["classes=3"]).classifier.out_features == 3  # wide has `classes`
    with pytest.raises(DiagnosticError, match="network 'grey' has no parameter 'classes'"):
        nasir.load(path, overrides=["classes=3"], network="grey")
    model = nasir.build(path, overrides=["C=3"], network="grey")  # grey's C, not wide's
    assert model.stem[0].out_channels == 9 and model.classifier.out_features == 5


def test_an_unknown_name_lists_the_networks_with_the_closest_first(tmp_path, capsys):
    path = write(tmp_path, TWO)
    code, _, err = run(capsys, "info", path, "--network", "gray")
    assert code == 2 and "Traceback" not in err
    assert f"error: --network gray: {path} has no network named 'gray'" in err
    assert "hint: did you mean 'grey'? (it declares 'wide', 'grey')" in err
    assert err.startswith("<command line>:1:") and "^~~~" in err  # the caret under the name on the command line
    code, _, err = run(capsys, "check", path, "--network", "zzz", "--set", "depth=3")
    assert code == 2 and "it declares 'wide', 'grey'" in err
    assert err.count("error:") == 1  # the --set is not checked against a network that was not asked for
    with pytest.raises(DiagnosticError, match="declares no network"):
        nasir.load(CELLS, name="t.cell", network="grey")


def test_info_draw_and_export_genotype_use_the_chosen_network(tmp_path, capsys):
    two, alone = write(tmp_path, TWO), write(tmp_path, CELLS + GREY, "grey.cell")
    code, out, _ = run(capsys, "info", two, "--network", "grey", "--json")
    assert code == 0
    chosen = json.loads(out)
    code, out, _ = run(capsys, "info", alone, "--json")
    expected = json.loads(out)
    assert chosen["network"] == "grey" and chosen["params"] == expected["params"] and chosen["macs"] == expected["macs"]
    assert [c["name"] for c in chosen["cells"]] == ["n2", "r2"]

    # The DARTS cell pair comes from the chosen network's stack: n2/r2, not the first network's n1/r1.
    _, g_two, _ = run(capsys, "export-genotype", two, "--network", "grey")
    _, g_alone, _ = run(capsys, "export-genotype", alone)
    _, g_first, _ = run(capsys, "export-genotype", two)
    assert g_two == g_alone != g_first and "sep_conv_5x5" in g_two and "sep_conv_5x5" not in g_first

    from nasir.targets.draw import stacked_cells

    assert list(stacked_cells(nasir.load(two, network="grey").network())) == ["n2", "r2"]
    assert run(capsys, "draw", two, "--network", "grey", "-o", tmp_path / "grey.svg")[0] == 0


def test_compile_and_verify_export_take_the_same_network(tmp_path, capsys):
    two = write(tmp_path, TWO)
    onnx = tmp_path / "grey.onnx"
    assert run(capsys, "compile", two, "--network", "grey", "-t", "onnx", "-o", onnx)[0] == 0
    code, out, _ = run(capsys, "verify-export", onnx, "--spec", two, "--network", "grey")
    assert code == 0 and "batch 1: max abs diff" in out
    # Against the first network (3 input channels, 10 classes) the grey export cannot pass.
    code, _, err = run(capsys, "verify-export", onnx, "--spec", two)
    assert code != 0


def test_search_derives_the_chosen_network_and_derived_cell_keeps_it(tmp_path, capsys):
    space = """
opset small = {none, skip_connect, avg_pool_3x3, sep_conv_3x3}
cell normal {
  inputs c_k2, c_k1
  nodes n0..n1
  edges * -> n* : choice(small)
  output concat(n0..n1)
  keep 2 inputs per node
}
cell reduce like normal { stride 2 from inputs }
network big(C = 8, layers = 5, classes = 10) {
  input (1, 8, 8)
  stem conv3x3(3 * C), bn
  stack layers cells(C): normal, reduce at 1/3, 2/3
  head global_avg_pool, linear(classes)
}
network tiny(C = 2, layers = 2, classes = 10) {
  input (1, 8, 8)
  stem conv3x3(3 * C), bn
  stack layers cells(C): normal, reduce at 1/2
  head global_avg_pool, linear(classes)
}
"""
    path = write(tmp_path, space, "space.cell")
    out = tmp_path / "run"
    code, _, err = run(capsys, "search", path, "--network", "tiny", "--data", "digits", "--out", out, "--epochs", "1",
                       "--limit-batches", "1", "--batch-size", "8", "--no-progress")  # fmt: skip
    assert code == 0, err
    derived = nasir.load(out / "derived.cell")
    assert derived.network().name == "tiny" and not derived.is_search_space
    # The supernet was the tiny network's (2 layers, C = 2), and derived.cell names it first.
    code, out_text, _ = run(capsys, "info", out / "derived.cell", "--json")
    assert json.loads(out_text)["parameters"] == {"C": 2, "layers": 2, "classes": 10}
    assert run(capsys, "search", path, "--network", "small", "--out", tmp_path / "x", "--epochs", "1")[0] == 2


def test_weights_made_with_one_network_are_refused_for_another():
    from nasir import provenance as prov
    from nasir.lower import resolve

    spec = spec_of(TWO)
    grey, first = resolve(spec, None, "grey"), resolve(spec, None, None)
    then = prov.record(grey[0], kind="train", plan=grey[1])
    prov.require_same(then, prov.record(*[resolve(spec, None, "grey")[0]], kind="train", plan=grey[1]), prov.ARCHITECTURE, "w")
    with pytest.raises(DiagnosticError, match="w"):
        prov.require_same(then, prov.record(first[0], kind="train", plan=first[1]), prov.ARCHITECTURE, "w")


def test_train_and_eval_take_the_network_and_its_weights_fit_only_it(tmp_path, capsys):
    path = write(tmp_path, CELLS + WIDE + GREY.replace("linear(5)", "linear(10)"))  # digits: 10 classes, 1 x 8 x 8
    out = tmp_path / "run"
    code, _, err = run(capsys, "train", path, "--network", "grey", "--data", "digits", "--out", out, "--epochs", "1",
                       "--limit-batches", "1", "--batch-size", "8")  # fmt: skip
    assert code == 0, err
    sd = torch.load(out / "best.pt", weights_only=True)
    sd = sd.get("model", sd)
    assert tuple(sd["stem.0.weight"].shape) == (6, 1, 3, 3)  # grey's stem: 3 * C = 6 channels from 1 (wide: 12 from 3)
    code, text, err = run(capsys, "eval", path, "--network", "grey", "--weights", out / "best.pt")
    assert code == 0 and "held-out images" in text, err
    code, _, err = run(capsys, "eval", path, "--weights", out / "best.pt")  # the first network, wide: refused
    assert code == 2 and "network wide" in err
