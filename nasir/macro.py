"""Elaboration of a network macro: parameters bound, expressions evaluated, stacking rules expanded.

The result (`Plan`) is what every target builds from: a flat list of cell instances and residual
blocks with concrete channel counts, the stems, the auxiliary position and the head. Errors (unset
parameters, unknown names, channel counts that are not integers) are diagnostics with spans.
"""

from __future__ import annotations

from typing import Any

import attrs

from nasir import ir, limits
from nasir.diagnostics import Diagnostic, DiagnosticBag, DiagnosticError, did_you_mean
from nasir.source import SourceFile, Span

# layer -> (what its one positional argument is, or None for no argument; whether it must be whole)
LAYER_ARGS: dict[str, tuple[str | None, bool]] = {
    "conv3x3": ("channels", True), "bn": (None, False), "relu": (None, False),
    "global_avg_pool": (None, False), "avg_pool": ("pool size", True), "linear": ("classes", True),
    "dropout": ("drop probability", False),
}  # fmt: skip
STEM_LAYERS = {"conv3x3", "bn", "relu"}
HEAD_LAYERS = {"bn", "relu", "global_avg_pool", "avg_pool", "linear", "dropout"}
AUX_STYLES = ("cifar", "imagenet")


class EvalError(Exception):
    def __init__(self, span: Span | None, message: str, hint: str | None = None):
        super().__init__(message)
        self.span, self.message, self.hint = span, message, hint


def evaluate(e: ir.Expr, env: dict[str, Any]) -> Any:
    """Evaluate a parameter expression without `eval`: numbers, booleans, names, + - * /."""
    if isinstance(e, ir.Num | ir.Bool):
        return e.value
    if isinstance(e, ir.Var):
        if e.name not in env:
            raise EvalError(e.span, f"unknown parameter '{e.name}'", did_you_mean(e.name, env))
        value = env[e.name]
        if value is None:
            raise EvalError(e.span, f"parameter '{e.name}' has no value", f"give it a default or pass --set {e.name}=VALUE")
        return value
    if isinstance(e, ir.Neg):
        return -evaluate(e.operand, env)
    a, b = evaluate(e.left, env), evaluate(e.right, env)
    if isinstance(a, bool) or isinstance(b, bool):
        raise EvalError(e.span, f"arithmetic on a boolean in '{e.op}'")
    if e.op == "+":
        return a + b
    if e.op == "-":
        return a - b
    if e.op == "*":
        return a * b
    if b == 0:
        raise EvalError(e.span, "division by zero")
    q = a / b
    # Channel arithmetic stays integral: C / 2 with C = 48 is 24, not 24.0.
    return int(q) if isinstance(a, int) and isinstance(b, int) and a % b == 0 else q


def evaluate_int(e: ir.Expr, env: dict[str, Any], what: str, minimum: int = 1, maximum: int | None = None) -> int:
    v = evaluate(e, env)
    if isinstance(v, bool) or not (isinstance(v, int) or (isinstance(v, float) and v.is_integer())):
        raise EvalError(e.span, f"{what} must be a whole number, got {v!r}")
    if int(v) < minimum:
        raise EvalError(e.span, f"{what} must be at least {minimum}, got {int(v)}")
    if maximum is not None and int(v) > maximum:  # nasir/limits.py: refuse before building anything that large
        raise EvalError(e.span, f"{what} must be at most {maximum:,}, got {int(v):,}")
    return int(v)


@attrs.frozen
class LayerPlan:
    name: str
    args: tuple[Any, ...] = ()
    kwargs: tuple[tuple[str, Any], ...] = ()

    def kw(self, name: str, default: Any = None) -> Any:
        return dict(self.kwargs).get(name, default)


@attrs.frozen
class CellPlan:
    cell: str
    C: int
    reduction: bool
    reduction_prev: bool


@attrs.frozen
class ResidualPlan:
    C_in: int
    C_out: int


@attrs.frozen
class Plan:
    network: str
    env: tuple[tuple[str, Any], ...]
    input: tuple[int, int, int]
    stems: tuple[tuple[LayerPlan, ...], ...]
    body: tuple[CellPlan | ResidualPlan, ...]
    aux_after: int | None  # index into body after which the auxiliary head reads its input
    aux_style: str | None
    head: tuple[LayerPlan, ...]

    @property
    def classes(self) -> int:
        lin = [x for x in self.head if x.name == "linear"]
        return int(lin[-1].args[0]) if lin else 0

    @property
    def cells(self) -> tuple[CellPlan, ...]:
        return tuple(b for b in self.body if isinstance(b, CellPlan))


def parse_overrides(items: list[str] | None) -> tuple[dict[str, Any], dict[str, Span]]:
    """`--set name=value` strings -> values (ints, floats, true/false); spans point into the flag text."""
    from nasir.frontend import parse_number

    values: dict[str, Any] = {}
    spans: dict[str, Span] = {}
    bag = DiagnosticBag()
    for item in items or []:
        src = SourceFile("<command line>", f"--set {item}")
        name, eq, text = item.partition("=")
        name = name.strip()
        if not eq or not name.isidentifier():
            bag.error(src.span(6, len(src.text)), f"expected name=value, got '{item}'", "for example --set C=36")
            continue
        text = text.strip()
        at = 6 + item.index("=") + 1
        if text in ("true", "false"):
            values[name] = text == "true"
        else:
            try:
                values[name] = parse_number(text.replace("_", ""))
            except (ValueError, IndexError):
                bag.error(src.span(at, len(src.text)), f"'{text}' is not a number or true/false")
                continue
        spans[name] = src.span(6, 6 + len(name))
    bag.check()
    return values, spans


def bind_params(network: ir.Network, overrides: dict[str, Any] | None, override_spans: dict[str, Span] | None,
                bag: DiagnosticBag) -> dict[str, Any] | None:  # fmt: skip
    """The network's parameters: defaults, then overrides (unknown names are errors); None after an error."""
    before = bag.error_count
    overrides = dict(overrides or {})
    env: dict[str, Any] = {}
    for p in network.params:
        if p.name in env:
            bag.error(p.span, f"parameter '{p.name}' is declared twice")
            continue
        try:
            env[p.name] = evaluate(p.default, env) if p.default is not None else None
        except EvalError as e:
            bag.error(e.span, e.message, e.hint)
            env[p.name] = None
    for k in list(overrides):
        if k not in env:
            span = (override_spans or {}).get(k)
            bag.error(span, f"network '{network.name}' has no parameter '{k}'", did_you_mean(k, env))
            del overrides[k]
    env.update(overrides)
    for p in network.params:
        if env.get(p.name) is None and p.default is None:
            bag.error(p.span, f"parameter '{p.name}' has no value", f"give it a default or pass --set {p.name}=VALUE")
    return env if bag.error_count == before else None


def elaborate(spec: ir.Spec, network: ir.Network, overrides: dict[str, Any] | None = None,
              override_spans: dict[str, Span] | None = None, bag: DiagnosticBag | None = None) -> Plan | None:  # fmt: skip
    """Bind parameters and expand the macro. Reports into `bag` (raises if none given)."""
    own = bag is None
    bag = bag if bag is not None else DiagnosticBag()
    env = bind_params(network, overrides, override_spans, bag)
    if env is None or bag.errors:
        if own:
            bag.check()
        return None

    def guard(f, *a, **kw):
        try:
            return f(*a, **kw)
        except EvalError as e:
            bag.error(e.span, e.message, e.hint)
            return None

    def layers(items: tuple[ir.Layer, ...], allowed: set[str], where: str) -> tuple[LayerPlan, ...]:
        out = []
        for x in items:
            if x.name not in allowed:
                bag.error(x.span, f"unknown {where} layer '{x.name}'", did_you_mean(x.name, allowed) or "known: " + ", ".join(sorted(allowed)))
                continue
            what, whole = LAYER_ARGS[x.name]
            pos = [a for a in (x.args or ()) if a.name is None]
            if len(pos) != (what is not None):
                bag.error(x.span, f"'{x.name}' takes {'one argument (' + what + ')' if what else 'no arguments'}")
                continue
            args = tuple(guard(evaluate_int, a.value, env, what) if whole else guard(evaluate, a.value, env) for a in pos)
            kwargs = []
            for a in x.args or ():
                if a.name is None:
                    continue
                if a.name != "stride" or x.name != "conv3x3":
                    bag.error(a.span, f"'{x.name}' has no argument '{a.name}'")
                    continue
                kwargs.append((a.name, guard(evaluate_int, a.value, env, "stride")))
            kwargs = tuple(kwargs)
            out.append(LayerPlan(x.name, args, kwargs))
        return tuple(out)

    shape = (3, 32, 32)
    if network.input is not None:
        dims = [guard(evaluate_int, e, env, "input size", 1, limits.MAX_INPUT_SIDE) for e in network.input]
        shape = tuple(dims) if None not in dims else shape  # type: ignore[assignment]
    stems = tuple(layers(s, STEM_LAYERS, "stem") for s in network.stems)
    head = layers(network.head, HEAD_LAYERS, "head")
    body: list[CellPlan | ResidualPlan] = []
    aux_after = None
    reduction_prev = len(network.stems) == 2  # ImageNet: the first cell's input comes from a reduction
    C_prev = None
    for b in network.body:
        if isinstance(b, ir.Residual):
            c_out = guard(evaluate_int, b.channels, env, "channels", 1, limits.MAX_CHANNELS)
            if c_out is not None:
                body.append(ResidualPlan(C_prev or c_out, c_out))
                C_prev = c_out
            continue
        count = guard(evaluate_int, b.count, env, "cell count", 1, limits.MAX_CELLS)
        C = guard(evaluate_int, b.channels, env, "channels", 1, limits.MAX_CHANNELS)
        if count is None or C is None:
            continue
        positions = {count * f.num // f.den for f in b.at}
        for f in b.at:
            if not 0 < f.num < f.den:
                bag.error(f.span, f"reduction position {f.num}/{f.den} is not inside the stack")
        aux = network.auxiliary
        for i in range(count):
            red = b.reduce is not None and i in positions
            if red:
                C *= 2
            body.append(CellPlan(b.reduce if red else b.cell, C, red, reduction_prev))  # type: ignore[arg-type]
            reduction_prev = red
            if aux is not None and aux_after is None and i == count * aux.at.num // aux.at.den:
                aux_after = len(body) - 1
        C_prev = C
    aux_style = None
    if network.auxiliary is not None:
        a = network.auxiliary
        if a.style not in AUX_STYLES:
            bag.error(a.span, f"unknown auxiliary head '{a.style}'", did_you_mean(a.style, AUX_STYLES) or "known: cifar, imagenet")
        enabled = True if a.when is None else guard(evaluate, a.when, env)
        if enabled:
            aux_style = a.style
        else:
            aux_after = None
    if own:
        bag.check()
    if bag.errors:
        return None
    return Plan(network.name, tuple(env.items()), shape, stems, tuple(body), aux_after, aux_style, head)


def plan(spec: ir.Spec, network: str | None = None, overrides: dict[str, Any] | None = None) -> Plan:
    net = spec.network(network)
    if net is None:
        what = "declares no network" if network is None else f"has no network named '{network}'"
        raise DiagnosticError([Diagnostic(f"{spec.file} {what}")])
    result = elaborate(spec, net, overrides)
    assert result is not None
    return result
