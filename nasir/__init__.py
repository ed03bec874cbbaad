"""nasir: a declarative graph-IR compiler for neural architecture search.

The library surface is small: `load` a `.cell` file into verified IR, `build` a derived network as an
nn.Module, `compile` it to a target file, `search` a space. The CLI is a thin skin over these.
Heavy imports (torch) happen only when a function that needs them is called.
"""

from nasir.diagnostics import Diagnostic, DiagnosticError

__all__ = ["Diagnostic", "DiagnosticError", "build", "check", "compile", "load", "search"]
__version__ = "0.1.0"


def load(path_or_text, *, overrides=None, name=None):
    """Parse and verify a `.cell` file (or text) into a `nasir.ir.Spec`; raises DiagnosticError."""
    from nasir.api import load as _load

    return _load(path_or_text, overrides=overrides, name=name)


def check(path_or_text):
    """Parse and verify; returns the warnings, raises DiagnosticError on errors."""
    return list(load(path_or_text).warnings)


def build(spec_or_path, **kw):
    """The derived network of a spec as an nn.Module (see nasir.compile.build)."""
    from nasir.compile import build as _build

    return _build(spec_or_path, **kw)


def compile(spec_or_path, target, out, **kw):  # noqa: A001 - the public name users expect
    """Lower a derived spec to a target file: torch, torchscript, export, onnx (see nasir.compile)."""
    from nasir.compile import compile as _compile

    return _compile(spec_or_path, target, out, **kw)


def search(spec_or_path, **kw):
    """Run a differentiable search and derive an architecture (see nasir.search.runner.search)."""
    from nasir.search.runner import search as _search

    return _search(spec_or_path, **kw)
