"""Passes, the PassManager, and the named pass pipelines (after torch.fx and onnx-ir).

A pass is a small object with a `name`, the properties it `requires` of its input and those it
`ensures` of its output, and `run(spec) -> PassResult(spec, modified)`. It never mutates: it builds
a new IR. The manager checks `requires`, records `ensures` and the pass's name on the spec, skips a
pass whose name the spec already records (the passes are idempotent, so running one twice changes
nothing), verifies the IR after each pass (on by default under pytest, see `verify_by_default`) and
prints it after a named pass (`nasir compile --dump-after mixed_ops`).

The pipelines are declared once, in `PIPELINES` (docs/passes.md), and built by name with
`nasir.passes.pipeline(name)`: the supernet builder runs "search", `nasir.compile` / `nasir.build`
run "compile", a searched space derives through "derive" (`nasir.passes.derive.derive`), and
`--dump-after` runs the pipeline of the spec it is given, so it shows the order those run.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence

import attrs

from nasir import ir
from nasir.diagnostics import Diagnostic, DiagnosticError

# name -> the passes it runs, in order (names of `nasir.passes.registry()`).
PIPELINES: dict[str, tuple[str, ...]] = {
    # A search space -> the supernet's IR: alpha rows, topology variables (stretchable cells), `none`
    # out of the computation, the fusion plan (IR unchanged; the supernet runs it with fuse=True).
    "search": ("mixed_ops", "topology", "zero_ops", "fuse_ops"),
    # The searched IR plus scores -> a derived spec (the Derive pass carries the scores; it removes
    # dead nodes itself, as its budget loop must cost the network without them).
    "derive": ("derive",),
    # A derived spec -> the IR the targets lower (dead nodes out; a no-op on a derived spec that
    # `nasir search` wrote or the verifier accepted).
    "compile": ("dead_nodes",),
}


@attrs.frozen
class PassResult:
    spec: ir.Spec
    modified: bool


@attrs.frozen
class PipelineResult:
    """What `PassManager.run` gives: the spec, whether any pass changed the IR, and which passes ran
    (a pass the spec already recorded is skipped and not listed)."""

    spec: ir.Spec
    modified: bool
    ran: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()  # the passes that reported `modified`


class Pass:
    name: str = "pass"
    requires: frozenset[str] = frozenset()
    ensures: frozenset[str] = frozenset()
    takes_arguments: bool = False  # built by its caller (Derive: the scores), not by `pipeline`

    def run(self, spec: ir.Spec) -> PassResult:  # pragma: no cover - interface
        raise NotImplementedError

    def __call__(self, spec: ir.Spec) -> ir.Spec:
        return PassManager([self]).apply(spec)


def verify_by_default() -> bool:
    """Verify after every pass when NASIR_VERIFY_PASSES=1, or under pytest (which sets
    PYTEST_CURRENT_TEST while a test runs) unless NASIR_VERIFY_PASSES=0: the test suite checks the
    IR between passes everywhere a pipeline runs, the CLI and library do not pay for it."""
    flag = os.environ.get("NASIR_VERIFY_PASSES")
    if flag is not None:
        return flag not in ("", "0")
    return "PYTEST_CURRENT_TEST" in os.environ


def assemble(name: str, given: Sequence[Pass] = (), classes: Mapping[str, type[Pass]] | None = None) -> list[Pass]:
    """The passes of the declared pipeline `name`, in order: a pass `given` as an instance (Derive,
    which takes the scores), else built from `classes` (`nasir.passes.registry()`; that module builds
    pipelines by name: `nasir.passes.pipeline`, since the passes import this module, not it them)."""
    if name not in PIPELINES:
        raise KeyError(f"no pass pipeline named '{name}' (pipelines: {', '.join(PIPELINES)})")
    by_name = {p.name: p for p in given}
    unknown = set(by_name) - set(PIPELINES[name])
    if unknown:
        raise KeyError(f"pipeline '{name}' has no pass {sorted(unknown)} (passes: {', '.join(PIPELINES[name])})")
    out = []
    for n in PIPELINES[name]:
        if n in by_name:
            out.append(by_name[n])
        elif classes is not None and n in classes and not classes[n].takes_arguments:
            out.append(classes[n]())
        else:
            raise KeyError(f"pass '{n}' of pipeline '{name}' takes arguments: give it as an instance")
    return out


class PassManager:
    def __init__(self, passes: Sequence[Pass], *, verify: bool | None = None, dump_after: str | None = None,
                 dump: Callable[[str], None] = print):  # fmt: skip
        self.passes = list(passes)
        self.verify = verify_by_default() if verify is None else verify
        self.dump_after = dump_after
        self.dump = dump
        names = {p.name for p in self.passes}
        if dump_after is not None and dump_after not in names:
            raise DiagnosticError([Diagnostic(f"--dump-after: no pass named '{dump_after}' in this pipeline",
                                              hint="passes: " + ", ".join(p.name for p in self.passes))])  # fmt: skip

    def run(self, spec: ir.Spec) -> PipelineResult:
        from nasir.printer import print_spec
        from nasir.verify import verify

        ran, changed = [], []
        for p in self.passes:
            if p.name in spec.properties:  # already ran on this IR (e.g. a spec `prepare` saw before)
                if self.dump_after == p.name:
                    self.dump(f"# IR after {p.name}\n" + print_spec(spec))
                continue
            missing = p.requires - spec.properties
            if missing:
                raise RuntimeError(f"pass '{p.name}' requires {sorted(missing)}; run those passes first")
            result = p.run(spec)
            spec = attrs.evolve(result.spec, properties=result.spec.properties | p.ensures | {p.name})
            ran.append(p.name)
            if result.modified:
                changed.append(p.name)
            if self.verify:
                bag = verify(spec)
                if bag.errors:
                    raise AssertionError(f"IR invalid after pass '{p.name}':\n" + "\n".join(d.render() for d in bag.errors))
            if self.dump_after == p.name:
                self.dump(f"# IR after {p.name}\n" + print_spec(spec))
        return PipelineResult(spec, bool(changed), tuple(ran), tuple(changed))

    def apply(self, spec: ir.Spec) -> ir.Spec:
        """`run(spec).spec`: the convenience for callers that need only the spec."""
        return self.run(spec).spec
