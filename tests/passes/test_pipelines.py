"""The named pass pipelines (nasir/pipeline.py PIPELINES): one declaration used by the supernet builder,
`--dump-after`, derivation and compile; `PassManager.run` reports `modified`; the verifier runs after
every pass of every pipeline on every example."""

from __future__ import annotations

import random

import pytest
from helpers import DARTS_CELLS, EXAMPLES, spec_of

from nasir.api import load
from nasir.passes import pipeline
from nasir.passes.derive import Derive, derive
from nasir.passes.mixed_ops import MixedOps
from nasir.passes.zero_ops import ZeroOps
from nasir.pipeline import PIPELINES, PassManager, verify_by_default
from nasir.printer import print_spec

NO_NONE = DARTS_CELLS.replace("none, ", "")


def test_zero_ops_reports_modified_when_and_only_when_the_ir_changes():
    # No `none` among the candidates: the pass still writes `computed` (None -> the candidates), so
    # the IR changed; run again, nothing changes. (It used to report the opposite in both cases.)
    mixed = MixedOps().run(spec_of(NO_NONE)).spec
    assert all(e.computed is None for c in mixed.cells for e in c.edges)
    first = ZeroOps().run(mixed)
    assert first.spec.cells != mixed.cells and first.modified
    second = ZeroOps().run(first.spec)
    assert second.spec.cells == first.spec.cells and not second.modified
    # With `none`: changed, and the computed list is the candidates less `none` (hand-written).
    with_none = ZeroOps().run(MixedOps().run(spec_of(DARTS_CELLS)).spec)
    assert with_none.modified
    assert with_none.spec.cell("normal").edges[0].computed == ("max_pool_3x3", "avg_pool_3x3", "skip_connect",
                                                             "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5")  # fmt: skip


def test_pass_manager_result_says_what_ran_and_what_changed_and_skips_what_already_ran():
    r = pipeline("search", verify=True).run(spec_of(NO_NONE))
    assert r.ran == ("mixed_ops", "topology", "zero_ops", "fuse_ops")
    assert r.changed == ("mixed_ops", "zero_ops") and r.modified  # no topology cell; fuse_ops plans only
    again = pipeline("search").run(r.spec)
    assert again.ran == () and not again.modified and again.spec is r.spec
    # A derived spec through "search"'s first pass: nothing to lower, not modified.
    assert not PassManager([MixedOps()]).run(load(EXAMPLES / "darts_v2.cell")).modified


def test_pipelines_are_declared_once_and_built_by_name():
    assert PIPELINES["search"] == ("mixed_ops", "topology", "zero_ops", "fuse_ops")
    assert [p.name for p in pipeline("compile").passes] == ["dead_nodes"]
    with pytest.raises(KeyError, match="takes arguments"):
        pipeline("derive")  # Derive needs its scores
    with pytest.raises(KeyError, match="no pass pipeline named"):
        pipeline("nope")


def test_the_supernet_builder_runs_the_search_pipeline_and_dump_after_shows_that_ir():
    from nasir.search.supernet import prepare

    for name in ("stretchable.cell", "digits.cell"):
        spec = load(EXAMPLES / name)
        prepared = prepare(spec)
        assert prepared == pipeline("search").apply(spec)
        assert set(PIPELINES["search"]) <= prepared.properties
        dumps: list[str] = []
        pipeline("search", dump_after="fuse_ops", dump=dumps.append).run(spec)
        assert dumps == ["# IR after fuse_ops\n" + print_spec(prepared)]


def test_dump_after_names_the_passes_of_the_pipeline_the_spec_runs(capsys):
    from nasir.cli import main

    rc = main(["compile", str(EXAMPLES / "digits.cell"), "-t", "torch", "--dump-after", "nope"])
    err = capsys.readouterr().err
    assert rc == 2 and "no pass named 'nope'" in err and "passes: mixed_ops, topology, zero_ops, fuse_ops" in err
    rc = main(["compile", str(EXAMPLES / "darts_v2.cell"), "-t", "torch", "--dump-after", "mixed_ops"])
    assert rc == 2 and "passes: dead_nodes" in capsys.readouterr().err


def test_derive_goes_through_the_pass_manager():
    spec = pipeline("search").apply(spec_of(DARTS_CELLS))
    rng = random.Random(3)
    scores = {c.name: [[rng.random() for _ in row] for row in c.alpha_rows] for c in spec.cells}
    got = derive(spec, scores, verify=True)
    assert got == Derive(scores).run(spec).spec and "derive" in got.properties
    assert all(len(c.in_edges(n)) == 2 for c in got.cells for n in c.node_names)  # keep 2 inputs per node
    with pytest.raises(RuntimeError, match="requires"):
        derive(spec_of(DARTS_CELLS), scores)  # mixed_ops has not run


def test_verifier_runs_after_every_pass_under_pytest(monkeypatch):
    assert verify_by_default() and PassManager([]).verify
    monkeypatch.setenv("NASIR_VERIFY_PASSES", "0")
    assert not PassManager([]).verify
    monkeypatch.delenv("NASIR_VERIFY_PASSES")
    monkeypatch.delenv("PYTEST_CURRENT_TEST")
    assert not PassManager([]).verify  # the CLI and library do not pay for it


def _random_scores(spec, seed=0):
    rng = random.Random(seed)
    return {c.name: [[rng.random() for _ in row] for row in c.alpha_rows] for c in spec.cells if c.alpha_rows}


@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLES.glob("*.cell")))
def test_every_pipeline_verifies_after_every_pass_on_every_example(example):
    import torch

    from nasir.search.topology import most_likely_edges, removed_nodes

    g = torch.Generator().manual_seed(0)
    spec = load(EXAMPLES / example)
    if spec.is_search_space:
        searched = pipeline("search", verify=True).apply(spec)
        betas = {c.name: [torch.rand(len(r.codes), generator=g) for r in c.beta_rows] for c in searched.cells if c.beta_rows}
        keep = {name: most_likely_edges(searched.cell(name), b) for name, b in betas.items()}
        remove = {name: removed_nodes(searched.cell(name), b) for name, b in betas.items()}
        recurrent = any(c.recurrent for c in searched.cells)
        spec = derive(searched, _random_scores(searched), keep_edges=keep, remove_nodes=remove,
                      dead_nodes=not recurrent, verify=True)  # fmt: skip
        assert not spec.is_search_space
    result = pipeline("compile", verify=True).run(spec)
    # On a derived spec the compile pipeline is a no-op: the targets lower the very same IR.
    assert not result.modified and result.spec == spec
