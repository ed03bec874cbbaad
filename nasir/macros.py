"""The canonical macro networks that an imported genotype is placed in, as `.cell` source text.

They are the networks of the reference implementations (docs/ops.md, "Macro networks") and
match the examples: `cifar` as in examples/darts_v2.cell, `imagenet` as in darts_v2_imagenet.cell,
`nb201` as in nb201.cell. Parameters keep the published defaults; `--set` overrides them at load time.
"""

from __future__ import annotations

from types import MappingProxyType

from nasir.diagnostics import Diagnostic, DiagnosticError, did_you_mean

_CIFAR = """\
# The DARTS CIFAR-10 evaluation network: 20 cells at C = 36, reductions at 1/3 and 2/3.
network cifar(C = 36, layers = 20, classes = 10, auxiliary = false) {
  input (3, 32, 32)
  stem  conv3x3(3 * C), bn
  stack layers cells(C): normal, reduce at 1/3, 2/3
  auxiliary cifar at 2/3 if auxiliary
  head  global_avg_pool, linear(classes)
}
"""

_IMAGENET = """\
# The DARTS ImageNet mobile-setting network: two stride-2 stems, 14 cells at C = 48.
network imagenet(C = 48, layers = 14, classes = 1000, auxiliary = false) {
  input (3, 224, 224)
  stem  conv3x3(C / 2, stride = 2), bn, relu, conv3x3(C, stride = 2), bn
  stem  relu, conv3x3(C, stride = 2), bn
  stack layers cells(C): normal, reduce at 1/3, 2/3
  auxiliary imagenet at 2/3 if auxiliary
  head  avg_pool(7), linear(classes)
}
"""

_NB201 = """\
# The NAS-Bench-201 network: 3 stages of N cells with residual reduction blocks between them.
network nb201(C = 16, N = 5, classes = 10) {
  input (3, 32, 32)
  stem  conv3x3(C), bn
  stack N cells(C): nbcell
  residual(2 * C)
  stack N cells(2 * C): nbcell
  residual(4 * C)
  stack N cells(4 * C): nbcell
  head  bn, relu, global_avg_pool, linear(classes)
}
"""

_TEXTS = MappingProxyType({"cifar": _CIFAR, "imagenet": _IMAGENET, "nb201": _NB201})

MACROS: tuple[str, ...] = tuple(_TEXTS)

# The cells each macro stacks, in the order a genotype supplies them.
MACRO_CELLS: MappingProxyType[str, tuple[str, ...]] = MappingProxyType(
    {"cifar": ("normal", "reduce"), "imagenet": ("normal", "reduce"), "nb201": ("nbcell",)}
)


def macro_text(name: str) -> str:
    """The `.cell` text of the macro network `name` (one of `MACROS`)."""
    try:
        return _TEXTS[name]
    except KeyError:
        hint = did_you_mean(name, MACROS) or "known macros: " + ", ".join(MACROS)
        raise DiagnosticError([Diagnostic(f"unknown macro network '{name}'", None, hint)]) from None
