"""Errors about a run's settings, named by the setting (docs/runtime.md).

The library names what its caller passed (`partial_channels`, `epochs`); a front end that knows other
names for them (the CLI's flags `--pc-k`, `--epochs`) maps `SettingDiagnostic.setting` to its own name
and points at it. The message starts with the setting's name, so it reads the same either way.
"""

from __future__ import annotations

import attrs

from nasir.diagnostics import Diagnostic, DiagnosticError


@attrs.frozen
class SettingDiagnostic(Diagnostic):
    setting: str = ""  # the library's name of the setting, e.g. "partial_channels"


def setting_diagnostic(setting: str, rest: str, hint: str | None = None) -> SettingDiagnostic:
    """`'{setting} {rest}'` about `setting`."""
    return SettingDiagnostic(f"{setting} {rest}", None, hint, setting=setting)


def setting_error(setting: str, rest: str, hint: str | None = None) -> DiagnosticError:
    return DiagnosticError([setting_diagnostic(setting, rest, hint)])
