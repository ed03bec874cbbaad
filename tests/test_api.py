"""The public API (nasir/__init__.py): real signatures, no torch on import, functions that stay
functions when a submodule of the same name is imported, and `compile` reading a spec once and
dispatching a language model to nasir/rnn."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest
import torch
from helpers import EXAMPLES

import nasir

SMALL = ["C=4", "layers=2"]


def test_import_nasir_imports_no_torch():
    code = "import nasir, sys; assert 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)[:3]"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_public_names_are_functions_with_keyword_signatures():
    assert set(nasir.__all__) >= {"load", "check", "compile", "build", "search", "train"}
    for name in ("load", "check", "compile", "build", "search", "train"):
        params = inspect.signature(getattr(nasir, name)).parameters.values()
        assert all(p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) for p in params), name  # no **kw passthrough
        assert inspect.unwrap(getattr(nasir, name)).__doc__, name  # the function (a callable module wraps it)


def test_search_mirrors_the_runners_parameters():
    from nasir.search.runner import search

    def described(fn):
        return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]

    ours, runner = described(nasir.search), described(search)
    if "network" not in [name for name, _, _ in runner]:  # `network` selects the spec's network before the runner
        # is called (nasir.api.select_network) until the runner takes it itself; then both must agree.
        assert ours[-1] == ("network", inspect.Parameter.KEYWORD_ONLY, None)
        ours = ours[:-1]
    assert ours == runner


def test_train_takes_every_keyword_of_nasir_train_train():
    import nasir.train as tr  # also binds `nasir.train` to the module: it must stay callable

    real = inspect.signature(tr.train).parameters
    ours = inspect.signature(nasir.train).parameters
    assert {n for n in real if real[n].kind is not inspect.Parameter.VAR_KEYWORD and n != "spec"} == \
        {n for n in ours if n in real}  # fmt: skip
    assert all(ours[n].default == real[n].default for n in ours if n in real and real[n].default is not inspect.Parameter.empty)
    assert {"overrides", "workers", "backbone_weights"} <= set(ours)  # train_detection's options, spelled out


def test_compile_stays_callable_after_its_namesake_submodules_are_imported(tmp_path):
    import nasir.lower  # noqa: F401 - the lowering module is not named like the function
    import nasir.search.runner  # noqa: F401 - binds the package nasir/search on `nasir.search`
    import nasir.train  # noqa: F401

    nasir.build(EXAMPLES / "darts_v2.cell", overrides=SMALL)
    for name in ("compile", "search", "train"):
        assert callable(getattr(nasir, name)), name
        assert inspect.signature(getattr(nasir, name)) == inspect.signature(nasir._PUBLIC[name]), name
    first = nasir.compile(EXAMPLES / "darts_v2.cell", "torch", tmp_path / "a.py", overrides=SMALL)
    again = nasir.compile(EXAMPLES / "darts_v2.cell", "torch", tmp_path / "b.py", overrides=SMALL)
    assert first.read_text() == again.read_text() and "class Network" in first.read_text()
    with pytest.raises(nasir.DiagnosticError, match="unknown target"):
        nasir.compile(EXAMPLES / "darts_v2.cell", "tflite", tmp_path / "c", overrides=SMALL)
    with pytest.raises(ModuleNotFoundError):  # no submodule shadows the function any more
        import nasir.compile  # noqa: F401
    assert callable(nasir.compile)


def test_the_compile_pipeline_leaves_a_derived_network_numerically_unchanged():
    from nasir.lower import resolve
    from nasir.macro import elaborate, parse_overrides
    from nasir.targets import network

    spec = nasir.load(EXAMPLES / "darts_v2.cell", overrides=SMALL)
    piped, _ = resolve(spec, SMALL)
    assert "dead_nodes" in piped.properties and "dead_nodes" not in spec.properties
    values, spans = parse_overrides(SMALL)
    plain = network.build(spec, elaborate(spec, spec.network(), values, spans), seed=3).eval()  # no pass at all
    ours = nasir.build(spec, overrides=SMALL, seed=3).eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert plain.state_dict().keys() == ours.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), ours.state_dict().values()))
    with torch.no_grad():
        assert torch.equal(plain(x)[0] if isinstance(plain(x), tuple) else plain(x),
                           ours(x)[0] if isinstance(ours(x), tuple) else ours(x))  # fmt: skip


def _count_reads(monkeypatch):
    import nasir.api

    reads = []
    real = nasir.api.read_source

    def counting(path):
        reads.append(str(path))
        return real(path)

    monkeypatch.setattr(nasir.api, "read_source", counting)
    return reads


@pytest.mark.parametrize(("example", "sets"), [("darts_v2.cell", SMALL), ("darts_v2_rnn.cell", ["tokens=20", "size=8"])])
def test_nasir_compile_reads_the_spec_once_and_dispatches_by_what_it_holds(tmp_path, monkeypatch, capsys, example, sets):
    from nasir.cli import main

    reads = _count_reads(monkeypatch)
    argv = ["compile", str(EXAMPLES / example), "-t", "torch", "-o", str(tmp_path / "m.py")]
    assert main(argv + [a for s in sets for a in ("--set", s)]) == 0
    assert reads == [str(EXAMPLES / example)]
    text = (tmp_path / "m.py").read_text()
    # A CNN lowers to nasir's Network module, a language model to nasir/rnn's.
    assert ("class Network" in text) == (example == "darts_v2.cell")
    reads.clear()
    out = nasir.compile(EXAMPLES / example, "torch", tmp_path / "lib.py", overrides=sets)
    assert reads == [str(EXAMPLES / example)] and out.read_text() == text


def test_overrides_may_be_a_list_a_dict_or_one_string():
    shapes = [{k: v.shape for k, v in nasir.build(EXAMPLES / "darts_v2.cell", overrides=o).state_dict().items()}
              for o in (SMALL, {"C": 4, "layers": 2})]  # fmt: skip
    assert shapes[0] == shapes[1] and shapes[0]["stem.0.weight"][0] == 3 * 4  # DARTS' stem: 3C channels
    assert nasir.load(EXAMPLES / "darts_v2.cell", overrides="C=4").network() is not None
    with pytest.raises(nasir.DiagnosticError, match="has no parameter 'D'"):  # one override, not three characters
        nasir.load(EXAMPLES / "darts_v2.cell", overrides="D=4")
