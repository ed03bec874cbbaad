"""Issue 11: methods, selections and smoothings are registered objects that the verifier, the options, the
CLI and the loop all read; errors name the setting and the CLI says the flag; `SearchResult.derived`
carries the caller's overrides."""

from __future__ import annotations

import argparse
import sys
from types import SimpleNamespace

import pytest
import torch
from helpers import EXAMPLES, TINY_SPACE, spec_of

import nasir.methods as methods
from nasir.cli import main
from nasir.diagnostics import DiagnosticError
from nasir.methods.base import Method
from nasir.search.cli import add_search_parser
from nasir.search.runner import make_options, search

KW = dict(data="digits", overrides={}, limit_batches=None, channels_last=None, low_memory=False, device=torch.device("cpu"))


def _choices(flag: str) -> tuple[str, ...]:
    parser = argparse.ArgumentParser()
    p = add_search_parser(parser.add_subparsers())
    (action,) = [a for a in p._actions if flag in a.option_strings]
    return tuple(action.choices)


def test_the_registry_lists_the_papers_methods_and_the_cli_offers_exactly_them():
    assert methods.names("method") == ("darts", "milenas", "pcdarts")
    assert methods.names("select") == ("magnitude", "strength", "strength_star", "naive")
    assert methods.names("smooth") == ("none", "rs", "adv")
    assert set(_choices("--method")) == {"darts", "milenas", "pcdarts"}
    assert set(_choices("--select")) == {"magnitude", "strength", "strength_star", "strength-star", "naive"}
    assert set(_choices("--smooth")) == {"none", "rs", "adv"}
    # arguments and their defaults, as the papers' code sets them
    assert [(p.name, p.option, p.default) for p in methods.method("pcdarts").params] == [("k", "partial_channels", 4), ("order", "order", 1)]
    assert methods.method("pcdarts").warmup == 15 and methods.method("darts").warmup == 0
    assert [(p.name, p.default) for p in methods.smoothing("adv").params] == [("eps", 0.3), ("steps", 7)]


def test_importing_the_registry_imports_no_torch():
    import subprocess

    code = "import sys, nasir.methods, nasir.verify; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr


@pytest.mark.parametrize("spelling", ["strength_star", "strength-star"])
def test_both_spellings_of_strength_star_in_spec_and_library(spelling):
    spec = spec_of(TINY_SPACE + f"search {{\n  select {spelling}\n}}")
    assert make_options(spec, **KW).select == "strength_star"
    assert make_options(spec, strength_window=3, **KW).strength_window == 3  # strength_star's argument
    assert make_options(spec_of(TINY_SPACE), select=spelling, **KW).select == "strength_star"


def test_the_verifier_reads_the_registry():
    from nasir.verify import verify

    good = spec_of(TINY_SPACE + "search {\n  select strength-star\n  smooth adv(eps = 0.2, steps = 3)\n}")
    assert [d for d in verify(good).items if d.severity == "error"] == []
    bad = TINY_SPACE + "search {\n  smooth gaussian\n}"
    with pytest.raises(DiagnosticError, match="'smooth' must be one of none, rs, adv"):
        spec_of(bad)


def test_library_errors_name_the_setting_and_the_cli_says_its_flag(capsys, tmp_path):
    with pytest.raises(DiagnosticError) as info:
        make_options(spec_of(TINY_SPACE), partial_channels=2, **KW)
    (d,) = info.value.diagnostics
    assert d.setting == "partial_channels" and d.message.startswith("partial_channels 2 does not apply to method darts")
    assert "--pc-k" not in d.message
    argv = ["search", str(EXAMPLES / "digits.cell"), "--pc-k", "2", "--out", str(tmp_path / "s")]
    code = main(argv)
    err = capsys.readouterr().err
    first = err.splitlines()
    assert code == 2 and "--pc-k 2 does not apply to method darts" in first[0], err
    col = int(first[0].split(":")[2])
    assert ("nasir " + " ".join(argv))[col - 1 :].startswith("2 "), err  # the caret under the flag's value
    # a spec's choice replaced by the caller's: the spec's pcdarts(k = 2) does not carry over to darts
    spec = spec_of(TINY_SPACE + "search {\n  method pcdarts(k = 2)\n}")
    assert make_options(spec, **KW).partial_channels == 2
    assert make_options(spec, method="darts", **KW).partial_channels == 1
    assert make_options(spec_of(TINY_SPACE), method="pcdarts", **KW).partial_channels == 4  # the method's default


def test_a_new_method_is_one_registry_entry(monkeypatch):
    """What docs/runtime.md says adding a method takes: an entry (here a first-order rule under another
    name) registered once is accepted by the spec, the verifier, the options and the CLI's choices."""
    from nasir.search.hooks import darts_rule

    toy = Method("method", "toy", "first-order DARTS under another name", params=(), gradient="toy")
    monkeypatch.setitem(methods.REGISTRY["method"], "toy", toy)
    monkeypatch.setitem(methods.RULES, "toy", lambda o: darts_rule(SimpleNamespace(order=1)))
    spec = spec_of(TINY_SPACE + "search {\n  method toy\n}")
    assert make_options(spec, **KW).method == "toy" and make_options(spec_of(TINY_SPACE), method="toy", **KW).method == "toy"
    assert "toy" in _choices("--method")
    with pytest.raises(DiagnosticError, match="order 2 does not apply to method toy"):
        make_options(spec, order=2, **KW)


def test_the_derived_spec_of_a_result_carries_the_overrides(tmp_path):
    """search(overrides=["C=2"]) returns a derived spec whose network builds with C = 2 (stem 3*C = 6 channels),
    as derived.cell does, not the file's default C."""
    import nasir
    from nasir.api import load

    result = search(EXAMPLES / "digits.cell", out=tmp_path, data="synthetic:32", overrides=["C=2", "layers=3"], epochs=1,
                    batch_size=8, seed=0, device="cpu", progress=False, artifacts=False)  # fmt: skip

    def stem_channels(model):
        return next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d)).out_channels

    assert stem_channels(nasir.build(result.derived)) == 6
    assert stem_channels(nasir.build(load(tmp_path / "derived.cell"))) == 6
    default = {p.name: p.default for p in load(EXAMPLES / "digits.cell").networks[0].params}["C"]
    assert default.value != 2  # else the test could not tell


def _imports(path) -> set[str]:
    """Every module a file imports, at the top or inside a function."""
    import ast

    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def test_the_runtime_imports_neither_search_nor_training_and_they_do_not_import_each_other():
    from pathlib import Path

    import nasir

    root = Path(nasir.__file__).parent
    for f in sorted((root / "runtime").glob("*.py")):
        bad = {m for m in _imports(f) if m.startswith(("nasir.search", "nasir.train", "nasir.rnn", "nasir.methods"))}
        assert not bad, (f.name, bad)
    for f in sorted((root / "methods").glob("*.py")):  # the registry sits below the loops that read it
        bad = {m for m in _imports(f) if m.startswith(("nasir.search.loop", "nasir.search.runner", "nasir.search.settings", "nasir.train"))}
        assert not bad, (f.name, bad)
    assert not {m for m in _imports(root / "train.py") if m.startswith("nasir.search")}
    for f in sorted((root / "search").glob("*.py")):
        assert not {m for m in _imports(f) if m.startswith("nasir.train")}, f.name


def test_every_argument_of_an_entry_is_a_library_keyword_and_belongs_to_its_entry():
    """The registry's parameters are the search's keywords (FLAGS); one set for an entry not chosen is an error,
    not silently ignored."""
    from nasir.search.settings import FLAGS

    options = {p.option for kind in methods.KINDS for e in methods.REGISTRY[kind].values() for p in e.params}
    assert options == {"order", "partial_channels", "mixed_level", "strength_window", "eps_end", "adv_steps"} <= set(FLAGS)
    spec = spec_of(TINY_SPACE)
    assert make_options(spec, smooth="rs", eps_end=0.2, **KW).eps_end == 0.2
    assert make_options(spec, method="milenas", mixed_level=0.5, **KW).mixed_level == 0.5
    for flags, message in [(dict(eps_end=0.2), "eps_end 0.2 does not apply to smooth none"),
                           (dict(smooth="rs", adv_steps=3), "adv_steps 3 does not apply to smooth rs"),
                           (dict(strength_window=4), "strength_window 4 does not apply to select magnitude"),
                           (dict(smooth="adv", adv_steps=0), "adv_steps must be a whole number >= 1, got 0")]:  # fmt: skip
        with pytest.raises(DiagnosticError, match=message):
            make_options(spec, **flags, **KW)


def test_every_entry_names_a_hook_the_search_layer_registers():
    """The registry (IR layer, no torch) names hooks; nasir.search.hooks registers them on import. Every
    entry's name resolves, and a name nobody registered is an error that says so (not a silent None)."""
    import nasir.search.hooks as hooks

    assert {e.gradient for e in methods.REGISTRY["method"].values()} == set(methods.RULES) == {"darts", "milenas"}
    assert {e.scores for e in methods.REGISTRY["select"].values()} == set(methods.SCORES)
    perturbing = {e.name: e.perturb for e in methods.REGISTRY["smooth"].values() if e.perturbs}
    assert perturbing == {"rs": "random", "adv": "adversarial"} and set(perturbing.values()) == set(methods.PERTURBATIONS)
    assert hooks.perturb(methods.smoothing("none"), None, None, 0.1) is None  # no perturbation, no hook needed
    ghost = Method("method", "ghost", "names a rule nobody registered", gradient="ghost")
    with pytest.raises(RuntimeError, match="no rules hook 'ghost' is registered"):
        hooks.rule(ghost, SimpleNamespace(order=1))
