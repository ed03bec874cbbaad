"""Passes and the PassManager (after torch.fx and onnx-ir).

A pass is a small object with a `name`, the properties it `requires` of its input and those it
`ensures` of its output, and `run(spec) -> PassResult(spec, modified)`. It never mutates: it builds
a new IR. The manager checks `requires`, records `ensures` on the spec, can verify the IR after each
pass (on in tests) and print it after a named pass (`nasir compile --dump-after mixed_ops`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import attrs

from nasir import ir
from nasir.diagnostics import Diagnostic, DiagnosticError


@attrs.frozen
class PassResult:
    spec: ir.Spec
    modified: bool


class Pass:
    name: str = "pass"
    requires: frozenset[str] = frozenset()
    ensures: frozenset[str] = frozenset()

    def run(self, spec: ir.Spec) -> PassResult:  # pragma: no cover - interface
        raise NotImplementedError

    def __call__(self, spec: ir.Spec) -> ir.Spec:
        return PassManager([self]).run(spec)


class PassManager:
    def __init__(self, passes: Sequence[Pass], *, verify: bool = False, dump_after: str | None = None,
                 dump: Callable[[str], None] = print):  # fmt: skip
        self.passes = list(passes)
        self.verify = verify
        self.dump_after = dump_after
        self.dump = dump
        names = {p.name for p in self.passes}
        if dump_after is not None and dump_after not in names:
            raise DiagnosticError([Diagnostic(f"--dump-after: no pass named '{dump_after}' in this pipeline",
                                              hint="passes: " + ", ".join(p.name for p in self.passes))])  # fmt: skip

    def run(self, spec: ir.Spec) -> ir.Spec:
        from nasir.printer import print_spec
        from nasir.verify import verify

        for p in self.passes:
            missing = p.requires - spec.properties
            if missing:
                raise RuntimeError(f"pass '{p.name}' requires {sorted(missing)}; run those passes first")
            result = p.run(spec)
            spec = attrs.evolve(result.spec, properties=result.spec.properties | p.ensures | {p.name})
            if self.verify:
                bag = verify(spec)
                if bag.errors:
                    raise AssertionError(f"IR invalid after pass '{p.name}':\n" + "\n".join(d.render() for d in bag.errors))
            if self.dump_after == p.name:
                self.dump(f"# IR after {p.name}\n" + print_spec(spec))
        return spec
