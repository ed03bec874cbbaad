"""nasir: a declarative graph-IR compiler for neural architecture search."""

from nasir.diagnostics import Diagnostic, DiagnosticError

__all__ = ["Diagnostic", "DiagnosticError", "load", "check"]
__version__ = "0.1.0"


def load(path_or_text, *, overrides=None, name=None):
    """Parse and verify a `.cell` file (or text) into a `nasir.ir.Spec`; raises DiagnosticError."""
    from nasir.api import load as _load

    return _load(path_or_text, overrides=overrides, name=name)


def check(path_or_text):
    """Parse and verify; returns the list of warnings, raises DiagnosticError on errors."""
    from nasir.api import load as _load

    return list(_load(path_or_text).warnings)
