"""End to end from the command line alone: a user's op file beside the spec is searched, derived,
printed, re-checked, counted, drawn, trained and exported to ONNX (issue 16; docs/ops.md)."""

from __future__ import annotations

import shutil

import pytest
from helpers import EXAMPLES

from nasir import ops
from nasir.cli import main

SPEC = """\
# only the user's ops (and none): whatever derivation keeps is one of them
ops "myops.py"

opset mine = {none, blur, gconv(k = 3, groups = 2)}

cell normal {
  inputs c_k2, c_k1
  nodes  n0, n1
  edges  * -> n* : choice(mine)
  output concat(n0, n1)
  keep 2 inputs per node
}

cell reduce like normal {
  stride 2 from inputs
}

network digits(C = 4, layers = 3, classes = 10) {
  input (1, 8, 8)
  stem  conv3x3(3 * C), bn
  stack layers cells(C): normal, reduce at 1/3, 2/3
  head  global_avg_pool, linear(classes)
}
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("user_ops")
    shutil.copy(EXAMPLES / "myops.py", d / "myops.py")
    (d / "space.cell").write_text(SPEC)
    before = set(ops.REGISTRY)
    code = main(["search", str(d / "space.cell"), "--out", str(d / "run"), "--epochs", "1", "--batch-size", "16",
                 "--limit-batches", "2", "--seed", "0", "--no-progress"])  # fmt: skip
    assert code == 0
    assert set(ops.REGISTRY) == before  # the command's op scope ended with it
    return d


def test_search_derives_a_cell_of_the_users_ops_and_exports_it(run):
    text = (run / "run" / "derived.cell").read_text()
    edges = [line.split(" : ")[1] for line in text.splitlines() if line.strip().startswith("edges")]
    assert len(edges) == 8 and set(edges) <= {"blur", "gconv(k = 3, groups = 2)"}
    assert (run / "run" / "derived.onnx").stat().st_size > 0


def test_the_derived_cell_is_checked_compiled_drawn_counted_and_trained_with_its_op_file(run, capsys, tmp_path):
    derived = run / "run" / "derived.cell"
    # derived.cell names a copy of the op file beside it (ops "myops.py"), so it loads without --ops
    assert 'ops "myops.py"' in derived.read_text().splitlines()[1:3]
    assert (run / "run" / "myops.py").read_bytes() == (run / "myops.py").read_bytes()
    assert main(["check", str(derived)]) == 0
    assert main(["compile", str(derived), "--target", "onnx", "-o", str(tmp_path / "d.onnx")]) == 0
    assert main(["verify-export", str(tmp_path / "d.onnx"), "--spec", str(derived)]) == 0
    assert main(["draw", str(derived), "-o", str(tmp_path / "d.svg")]) == 0
    assert main(["info", str(derived), "--json"]) == 0
    capsys.readouterr()
    assert main(["train", str(derived), "--out", str(tmp_path / "train"), "--epochs", "1", "--limit-batches", "1",
                 "--batch-size", "16"]) == 0  # fmt: skip
    assert (tmp_path / "train" / "best.pt").exists()


def test_a_spec_written_outside_the_tree_bundles_its_op_files(run, tmp_path):
    from nasir.api import load
    from nasir.printer import print_spec

    with ops.scope():
        spec = load(run / "space.cell")
        text = print_spec(ops.bundle_op_files(spec, tmp_path), tmp_path)
    assert text.startswith('ops "myops.py"\n')
    assert (tmp_path / "myops.py").read_bytes() == (run / "myops.py").read_bytes()
    (tmp_path / "standalone.cell").write_text(text)
    with ops.scope():
        again = load(tmp_path / "standalone.cell")
        assert again == spec and again.op_files[0].resolved == str((tmp_path / "myops.py").resolve())
        assert ops.REGISTRY["blur"].origin == str((tmp_path / "myops.py").resolve())


def test_the_derived_cell_written_by_search_keeps_its_ops_line(run):
    assert main(["check", str(run / "run" / "derived.cell")]) == 0
