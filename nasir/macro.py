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
from nasir.layers import LAYERS, kinds_for
from nasir.source import SourceFile, Span

# The layer kinds, their arguments and channel/stride rules: one registry (nasir/layers.py).
LAYER_ARGS: dict[str, tuple[str | None, bool]] = {n: (k.arg, k.whole) for n, k in LAYERS.items()}
STEM_LAYERS = kinds_for("stem")
HEAD_LAYERS = kinds_for("head")
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
    """A stem or head layer with its arguments evaluated and the registry's rules applied
    (nasir/layers.py): channels in and out, its stride, the total downsampling `scale` after it,
    and, in a head, its `slot` ("pre": before the flatten, "post": after it, "classifier")."""

    name: str
    args: tuple[Any, ...] = ()
    kwargs: tuple[tuple[str, Any], ...] = ()
    C_in: int = 0
    C_out: int = 0
    stride: int = 1
    scale: int = 1
    slot: str = "stem"

    def kw(self, name: str, default: Any = None) -> Any:
        return dict(self.kwargs).get(name, default)


@attrs.frozen
class CellPlan:
    """One stacked cell: its kind, its C, whether it stands at a reduction position and follows one;
    the channels of the two previous states it reads (C_pp, C_p), its output channels (C_out = the
    output multiplier times C, docs/ops.md "A DARTS cell"), its stride (2 for a cell with `stride 2 from
    inputs`) and the total downsampling `scale` of its output relative to the network input.

    Per input, in the cell's input order (oldest state first): `in_channels`, the channels of the
    state it reads, and `in_reductions`, how many times that state must be halved to reach the
    resolution of the cell's last input (docs/network.md "Cells with more than two inputs")."""

    cell: str
    C: int
    reduction: bool
    reduction_prev: bool
    C_pp: int = 0
    C_p: int = 0
    C_out: int = 0
    stride: int = 1
    scale: int = 1
    in_channels: tuple[int, ...] = ()
    in_reductions: tuple[int, ...] = ()


@attrs.frozen
class ResidualPlan:
    """NAS-Bench-201's residual reduction block: C_in -> C_out at stride 2."""

    C_in: int
    C_out: int
    stride: int = 2
    scale: int = 1


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

    @property
    def stem_channels(self) -> int:
        """Channels after the stems (the input channels when there is no stem)."""
        last = [s[-1] for s in self.stems if s]
        return last[-1].C_out if last else self.input[0]

    @property
    def stem_scale(self) -> int:
        last = [s[-1] for s in self.stems if s]
        return last[-1].scale if last else 1

    @property
    def out_channels(self) -> int:
        """Channels of the last body block's output (what the head reads)."""
        return self.body[-1].C_out if self.body else self.stem_channels


def _cell_inputs(spec: ir.Spec, name: str | None) -> tuple[str, ...]:
    """A cell kind's input names (two unnamed ones for an unknown kind: the verifier reports it)."""
    cell = spec.cell(name) if name is not None else None
    return tuple(cell.input_names) if cell is not None and cell.inputs else ("", "")


def history_window(length: int, n: int) -> list[int]:
    """The positions in a history of `length` states (stems first, then every block's output) that
    an `n`-input cell reads, oldest first: the last `n`, where the history is shorter the first
    state standing in for the missing earlier ones, as DARTS feeds s0 = s1 = stem
    (docs/network.md "Cells with more than two inputs")."""
    return [max(0, length - n + j) for j in range(n)]


def _cell_shape(spec: ir.Spec, name: str | None) -> tuple[int, int]:
    """A cell kind's output multiplier (len(concat), or 1 for a single-node output; docs/ops.md "A DARTS
    cell") and stride (2 with `stride 2 from inputs`). An unknown kind counts as (1, 1): the
    verifier reports it."""
    cell = spec.cell(name) if name is not None else None
    if cell is None or cell.output is None:
        return 1, 1
    multiplier = len(cell.output.nodes) if cell.output.kind == "concat" else 1
    return multiplier, 2 if cell.reduction else 1


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

    def layers(items: tuple[ir.Layer, ...], place: str, c: int, scale: int) -> tuple[tuple[LayerPlan, ...], int, int]:
        """Evaluate the layers' arguments and apply the registry's rules (nasir/layers.py) from
        `c` input channels at downsampling `scale`; returns the layers, channels and scale after."""
        allowed = kinds_for(place)
        out = []
        pooled = False
        for x in items:
            if x.name not in allowed:
                bag.error(x.span, f"unknown {place} layer '{x.name}'", did_you_mean(x.name, allowed) or "known: " + ", ".join(sorted(allowed)))
                continue
            kind = LAYERS[x.name]
            what, whole = kind.arg, kind.whole
            pos = [a for a in (x.args or ()) if a.name is None]
            if len(pos) != (what is not None):
                bag.error(x.span, f"'{x.name}' takes {'one argument (' + what + ')' if what else 'no arguments'}")
                continue
            args = tuple(guard(evaluate_int, a.value, env, what) if whole else guard(evaluate, a.value, env) for a in pos)
            kwargs = []
            for a in x.args or ():
                if a.name is None:
                    continue
                if a.name not in kind.keywords:
                    bag.error(a.span, f"'{x.name}' has no argument '{a.name}'")
                    continue
                kwargs.append((a.name, guard(evaluate_int, a.value, env, a.name)))
            layer = LayerPlan(x.name, args, tuple(kwargs), C_in=c)
            if None in args or any(v is None for _, v in kwargs):
                continue  # reported
            stride = kind.stride(layer)
            c_out = kind.out_channels(layer)
            scale *= stride
            slot = "stem" if place == "stem" else kind.slot(layer, pooled)
            pooled = pooled or kind.pools
            out.append(attrs.evolve(layer, C_out=c_out, stride=stride, scale=scale, slot=slot))
            c = c_out
        return tuple(out), c, scale

    shape = (3, 32, 32)
    if network.input is not None:
        dims = [guard(evaluate_int, e, env, "input size", 1, limits.MAX_INPUT_SIDE) for e in network.input]
        shape = tuple(dims) if None not in dims else shape  # type: ignore[assignment]
    c, scale = shape[0], 1
    stem_list = []
    for s in network.stems:
        layers_, c, scale = layers(s, "stem", c, scale)
        stem_list.append(layers_)
    stems = tuple(stem_list)
    body: list[CellPlan | ResidualPlan] = []
    aux_after = None
    reduction_prev = len(network.stems) == 2  # ImageNet: the first cell's input comes from a reduction
    C_pp = C_p = c  # the two previous states' channels, as the cells read them
    # Every state a cell can read, oldest first, as (channels, scale): the stem outputs (one stem is
    # read twice, DARTS's s0 = s1 = stem), then each block's output (docs/network.md).
    if len(stems) == 2 and stems[0]:
        history = [(stems[0][-1].C_out, stems[0][-1].scale), (c, scale)]
    else:
        history = [(c, scale), (c, scale)]
    reported: set[int] = set()
    for b in network.body:
        if isinstance(b, ir.Residual):
            c_out = guard(evaluate_int, b.channels, env, "channels", 1, limits.MAX_CHANNELS)
            if c_out is not None:
                scale *= 2
                body.append(ResidualPlan(C_p, c_out, 2, scale))
                C_pp, C_p = C_p, c_out
                history.append((c_out, scale))
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
            kind = b.reduce if red else b.cell
            multiplier, stride = _cell_shape(spec, kind)
            names = _cell_inputs(spec, kind)
            read = [history[j] for j in history_window(len(history), len(names))]
            reductions = []
            for name, (_, s) in zip(names, read):
                ratio = read[-1][1] // s
                r = ratio.bit_length() - 1
                reductions.append(r)
                if len(names) <= 2 or id(b) in reported:
                    continue  # one- and two-input cells keep DARTS's rule (reduction_prev); one error per stack
                if read[-1][1] % s or ratio != 1 << r:
                    reported.add(id(b))
                    bag.error(b.span, f"cell '{kind}' cannot be fed here: its input '{name}' reads a state at 1/{s} of the input "
                                      f"resolution and its last input one at 1/{read[-1][1]}, {read[-1][1] / s:g} times coarser; "
                                      "factorized reductions halve, so only a power of two can be bridged",
                              "use stems whose strides are powers of two, or a cell with fewer inputs")  # fmt: skip
                elif r and C % 2:
                    reported.add(id(b))
                    bag.error(b.span, f"cell '{kind}' cannot be fed here: its input '{name}' is halved by a factorized reduction, "
                                      f"which needs an even channel count, and the cell has C = {C}",
                              "use an even C")  # fmt: skip
            scale *= stride
            body.append(CellPlan(kind, C, red, reduction_prev, C_pp, C_p, multiplier * C, stride, scale,  # type: ignore[arg-type]
                                 tuple(ch for ch, _ in read), tuple(reductions)))  # fmt: skip
            C_pp, C_p = C_p, multiplier * C
            history.append((multiplier * C, scale))
            reduction_prev = red
            if aux is not None and aux_after is None and i == count * aux.at.num // aux.at.den:
                aux_after = len(body) - 1
    head, _, _ = layers(network.head, "head", C_p, scale)
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


def replan(spec: ir.Spec, plan: Plan) -> Plan:
    """`plan`'s network elaborated again for `spec` with the same parameter values: a derived spec's cells
    concatenate other nodes than the space's, so its channels per cell differ from the supernet's plan."""
    net = spec.network(plan.network)
    if net is None:
        raise DiagnosticError([Diagnostic(f"{spec.file} has no network named '{plan.network}'")])
    names = {p.name for p in net.params}
    result = elaborate(spec, net, {k: v for k, v in plan.env if k in names})
    assert result is not None
    return result


def plan(spec: ir.Spec, network: str | None = None, overrides: dict[str, Any] | None = None) -> Plan:
    net = spec.network(network)
    if net is None:
        what = "declares no network" if network is None else f"has no network named '{network}'"
        raise DiagnosticError([Diagnostic(f"{spec.file} {what}")])
    result = elaborate(spec, net, overrides)
    assert result is not None
    return result
