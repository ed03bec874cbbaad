"""The operation registry: the one place that knows every op name, its parameters and its builder.

The registry itself does not import torch (so `nasir check` stays fast) nor the module builders: it
names each built-in op's builder, and the targets layer registers the builders under those names when
it is imported (targets/blocks.py `BUILDERS`; the front end never imports a runtime module,
tests/test_layering.py). Structures follow docs/ops.md exactly; how to add an op is in docs/ops.md,
"Your own ops".

Three kinds of names resolve here:
- plain built-ins (`sep_conv_3x3`, the DARTS and NAS-Bench-201 names, AutoDL's extra ops);
- parametric families (`mbconv`, `sep_conv`, `dil_conv`, `nor_conv`) written with keyword arguments in
  the spec, `mbconv(k = 5, e = 6)`: that canonical text is the op's name everywhere (IR, alphas, derived
  files), and the registry binds the arguments when it is looked up;
- a researcher's own ops, defined with the `op` decorator in a Python file the spec names
  (`ops "myops.py"`) or the command line gives (`--ops FILE`). Such a file is imported, i.e. executed:
  it is the user's own code, run only when named explicitly.

The registry in use is the current *scope* (`scope()`, a context variable): built-ins plus the op files
loaded in it. A process starts in one scope; `with ops.scope():` gives a fresh one (built-ins only) whose
loads vanish at its end; every `nasir` command runs in one. A name is defined once per scope: a user op cannot shadow a built-in, and two
files cannot define the same name (loading the same file again replaces its own ops).
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from types import MappingProxyType
from typing import Any

import attrs

from nasir.diagnostics import did_you_mean

_NO_DEFAULT = object()
BUILTIN = "built-in"


@attrs.frozen
class OpParam:
    """One keyword parameter of a parametric op: `k` of `mbconv(k = 5)`.

    `type` is int, float, bool or str (a bare name in the spec: `act = relu`); an int is accepted where a
    float is expected. `arg` is the builder's keyword (default: `name`); `choices` limits a value."""

    name: str
    type: type
    default: Any = _NO_DEFAULT
    arg: str | None = None
    choices: tuple[Any, ...] | None = None
    doc: str = ""

    @property
    def required(self) -> bool:
        return self.default is _NO_DEFAULT

    def check(self, value: Any) -> str | None:
        """Why `value` does not fit, or None."""
        kinds = {int: "an integer", float: "a number", bool: "true or false", str: "a name"}
        ok = isinstance(value, self.type) and not (self.type is int and isinstance(value, bool))
        if self.type is float and isinstance(value, int) and not isinstance(value, bool):
            ok = True
        if not ok:
            return f"parameter '{self.name}' must be {kinds.get(self.type, self.type.__name__)}, got {format_value(value)}"
        if self.choices is not None and value not in self.choices:
            return f"parameter '{self.name}' must be one of {', '.join(format_value(c) for c in self.choices)}, got {format_value(value)}"
        return None


@attrs.frozen
class OpDef:
    name: str
    builder: str  # a name in BUILDERS (targets/blocks.py registers them): (C, stride, affine, **params) -> nn.Module
    params: MappingProxyType = attrs.field(factory=lambda: MappingProxyType({}), converter=MappingProxyType)
    parameter_free: bool = False
    # Identity ops are exempt from drop-path during retraining (docs/ops.md, "A DARTS cell").
    is_identity: bool = False
    is_zero: bool = False
    is_pool: bool = False
    # A parametric family: its keyword parameters (empty for a plain op). A bound member (`mbconv(k = 5)`)
    # has `family` set and its arguments merged into `params`.
    signature: tuple[OpParam, ...] = ()
    family: str | None = None
    origin: str = BUILTIN  # "built-in" or the path of the user's op file
    # A user op: its builder callable (instead of `builder` in nasir.targets.blocks) and its MAC rule
    # macs(C, stride, H, W, **params) -> int for one image of C x H x W (None: counted on the module).
    factory: Callable[..., Any] | None = attrs.field(default=None, eq=False, repr=False)
    macs: Callable[..., int] | None = attrs.field(default=None, eq=False, repr=False)
    doc: str = attrs.field(default="", eq=False)

    def build(self, C: int, stride: int = 1, affine: bool = True) -> Any:
        if self.signature:  # a family's bare name: the member with every default
            return self.bind({}).build(C, stride, affine)
        if self.factory is None:
            builder = BUILDERS.get(self.builder)
            if builder is None:  # a module was asked for before the targets layer was imported
                raise RuntimeError(f"op '{self.name}': no builder '{self.builder}' is registered; the built-in ops' builders "
                                   "are registered by nasir.targets.blocks: import it (nasir.build and the supernet do)")  # fmt: skip
            return builder(C, stride, affine, **self.params)
        from torch import nn

        from nasir.diagnostics import error_at

        try:
            module = self.factory(C, stride, affine, **self.params)
        except Exception as e:  # the user's code: say which op and where, not a traceback of nasir
            raise error_at(None, f"op '{self.name}' ({self.origin}) failed to build with C = {C}, stride = {stride}: "
                           f"{_where(e, Path(self.origin))}") from None  # fmt: skip
        if not isinstance(module, nn.Module):
            raise error_at(None, f"op '{self.name}' ({self.origin}): the builder returned {type(module).__name__}, not an nn.Module")
        if self.macs is not None:
            # count_macs (targets/blocks.py) asks this rule instead of counting the layers inside.
            module._nasir_macs = (self.macs, C, stride, dict(self.params))
        return module

    def bind(self, values: Mapping[str, Any]) -> OpDef:
        """The member of this family with `values` (already checked by `check_args`)."""
        merged = dict(self.params)
        for p in self.signature:
            v = values.get(p.name, p.default)
            merged[p.arg or p.name] = float(v) if p.type is float else v
        given = [(p.name, values[p.name]) for p in self.signature if p.name in values]
        return attrs.evolve(self, name=op_text(self.name, given), params=merged, signature=(), family=self.name)

    def check_args(self, values: list[tuple[str, Any]]) -> list[tuple[int, str]]:
        """Problems of a call's arguments: (index of the argument or -1, message)."""
        out: list[tuple[int, str]] = []
        by_name = {p.name: p for p in self.signature}
        seen: set[str] = set()
        if not self.signature and values:
            return [(0, f"op '{self.name}' takes no parameters")]
        for i, (name, value) in enumerate(values):
            p = by_name.get(name)
            if p is None:
                hint = did_you_mean(name, by_name)
                out.append((i, f"op '{self.name}' has no parameter '{name}'" + (f"; {hint}" if hint else
                            f" (parameters: {', '.join(by_name)})")))  # fmt: skip
            elif name in seen:
                out.append((i, f"parameter '{name}' given twice"))
            else:
                seen.add(name)
                why = p.check(value)
                if why:
                    out.append((i, why))
        missing = [p.name for p in self.signature if p.required and p.name not in seen]
        if missing:
            out.append((-1, f"op '{self.name}' needs {', '.join(missing)}"))
        return out


def format_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)
    return str(v)


def op_text(name: str, args: list[tuple[str, Any]]) -> str:
    """The canonical text of a parametric op: `mbconv(k = 5, e = 6)` (the parameters given, in the
    family's order); the op's name everywhere."""
    return name if not args else f"{name}({', '.join(f'{k} = {format_value(v)}' for k, v in args)})"


_CALL = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\((.*)\)$", re.S)
_ARG = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.+?)\s*$", re.S)


def parse_value(text: str) -> Any:
    if text in ("true", "false"):
        return text == "true"
    if re.fullmatch(r"[0-9]+", text):
        return int(text)
    if re.fullmatch(r"[0-9]+\.[0-9]*([eE][+-]?[0-9]+)?|[0-9]+[eE][+-]?[0-9]+", text):
        return float(text)
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", text):
        return text
    raise ValueError(text)


def parse_op_text(text: str) -> tuple[str, list[tuple[str, Any]]] | None:
    """`mbconv(k = 5, e = 6)` -> ("mbconv", [("k", 5), ("e", 6)]); None if it is not a call."""
    m = _CALL.match(text.strip())
    if m is None:
        return None
    inner = m.group(2).strip()
    args: list[tuple[str, Any]] = []
    for part in inner.split(",") if inner else []:
        a = _ARG.match(part)
        if a is None:
            return None
        try:
            args.append((a.group(1), parse_value(a.group(2))))
        except ValueError:
            return None
    return m.group(1), args


# ---- the registry ----------------------------------------------------------------------------------


class Registry(Mapping[str, OpDef]):
    """Op names -> definitions. Iterates over the defined names (families by their bare name); a
    parametric name (`mbconv(k = 5)`) is bound on lookup. Immutable from outside; `scope()` and
    `load_file` build new ones."""

    def __init__(self, defs: Mapping[str, OpDef], files: Mapping[str, tuple[str, tuple[str, ...]]] | None = None):
        self._defs = dict(defs)
        self._files = dict(files or {})  # resolved path -> (content hash, names it defined)
        self._bound: dict[str, OpDef] = {}

    def __getitem__(self, name: str) -> OpDef:
        d = self._defs.get(name)
        if d is not None:
            return d
        d = self._bound.get(name)
        if d is not None:
            return d
        if not isinstance(name, str) or "(" not in name:
            raise KeyError(name)
        call = parse_op_text(name)
        if call is None:
            raise KeyError(name)
        base = self._defs.get(call[0])
        if base is None or not base.signature or base.check_args(call[1]):
            raise KeyError(name)
        d = base.bind(dict(call[1]))
        if d.name != name:  # not canonical (other order or spacing): a different spelling is not this op's name
            raise KeyError(name)
        self._bound[name] = d
        return d

    def __iter__(self) -> Iterator[str]:
        return iter(self._defs)

    def __len__(self) -> int:
        return len(self._defs)

    def __contains__(self, name: object) -> bool:
        try:
            self[name]  # type: ignore[index]
        except (KeyError, TypeError):
            return False
        return True

    @property
    def files(self) -> tuple[str, ...]:
        return tuple(self._files)

    def family(self, name: str) -> OpDef | None:
        return self._defs.get(name)

    def copy(self) -> Registry:
        return Registry(self._defs, self._files)


# The built-in ops' module builders by the names `OpDef.builder` gives, filled by the targets layer
# (targets/blocks.py `register_builders`), so that this front-end module imports no torch module.
BUILDERS: dict[str, Callable[..., Any]] = {}


def register_builders(builders: Mapping[str, Callable[..., Any]]) -> None:
    """Register module builders `(C, stride, affine, **params) -> nn.Module` under their names."""
    BUILDERS.update(builders)


def _op(name: str, builder: str, *, signature: tuple[OpParam, ...] = (), doc: str = "", **kw: Any) -> OpDef:
    flags = {k: kw.pop(k) for k in ("parameter_free", "is_identity", "is_zero", "is_pool") if k in kw}
    return OpDef(name, builder, kw, signature=signature, doc=doc, **flags)


def _k(default: int = 3, arg: str = "kernel") -> OpParam:
    return OpParam("k", int, default, arg=arg, choices=(1, 3, 5, 7, 9, 11), doc="kernel size (odd)")


# Parameter-free at stride 1; skip_connect at stride 2 is a FactorizedReduce with weights.
BUILTINS: MappingProxyType[str, OpDef] = MappingProxyType(
    {
        d.name: d
        for d in (
            _op("none", "zero", parameter_free=True, is_zero=True, doc="zero (subsampled by the stride)"),
            _op("skip_connect", "skip_connect", parameter_free=True, is_identity=True,
                doc="identity; FactorizedReduce at stride 2"),  # fmt: skip
            _op("max_pool_3x3", "pool", kind="max", kernel=3, parameter_free=True, is_pool=True, doc="max pooling 3x3"),
            _op("avg_pool_3x3", "pool", kind="avg", kernel=3, parameter_free=True, is_pool=True,
                doc="average pooling 3x3 (padding excluded)"),  # fmt: skip
            _op("sep_conv_3x3", "sep_conv", kernel=3, doc="DARTS separable conv, twice"),
            _op("sep_conv_5x5", "sep_conv", kernel=5, doc="DARTS separable conv, twice"),
            _op("sep_conv_7x7", "sep_conv", kernel=7, doc="DARTS separable conv, twice"),
            _op("dil_conv_3x3", "dil_conv", kernel=3, dilation=2, doc="DARTS dilated separable conv"),
            _op("dil_conv_5x5", "dil_conv", kernel=5, dilation=2, doc="DARTS dilated separable conv"),
            _op("conv_7x1_1x7", "conv_7x1_1x7", doc="ReLU, conv 1x7, conv 7x1, BN"),
            _op("nor_conv_1x1", "relu_conv_bn", kernel=1, doc="NAS-Bench-201 ReLU-conv-BN"),
            _op("nor_conv_3x3", "relu_conv_bn", kernel=3, doc="NAS-Bench-201 ReLU-conv-BN"),
            # AutoDL-Projects' cell_operations.py (docs/ops.md, "AutoDL's ops")
            _op("conv_3x1_1x3", "conv_3x1_1x3", doc="ReLU, conv 1x3, conv 3x1, BN (AutoDL, SETN)"),
            _op("nor_conv_7x7", "relu_conv_bn", kernel=7, doc="ReLU-conv 7x7-BN (AutoDL)"),
            _op("dua_sepc_3x3", "dual_sep_conv", kernel=3, doc="AutoDL DualSepConv: two separable halves"),
            _op("dua_sepc_5x5", "dual_sep_conv", kernel=5, doc="AutoDL DualSepConv: two separable halves"),
            _op("dil_sepc_3x3", "dil_conv", kernel=3, dilation=2, doc="AutoDL SepConv, dilation 2 (= dil_conv_3x3)"),
            _op("dil_sepc_5x5", "dil_conv", kernel=5, dilation=2, doc="AutoDL SepConv, dilation 2 (= dil_conv_5x5)"),
            # parametric families (docs/ops.md, "Parametric ops")
            _op("mbconv", "mbconv", doc="MobileNetV2/MnasNet inverted bottleneck", signature=(
                _k(3, "kernel"),
                OpParam("e", int, 6, arg="expand", doc="expansion ratio (1: no expansion conv)"),
                OpParam("se", float, 0.0, doc="squeeze-excitation ratio of the input channels (0: none)"),
                OpParam("act", str, "relu6", choices=("relu6", "relu"), doc="activation"),
            )),  # fmt: skip
            _op("sep_conv", "sep_conv", doc="DARTS separable conv, any kernel", signature=(_k(),)),
            _op("dil_conv", "dil_conv", doc="DARTS dilated separable conv, any kernel and dilation",
                signature=(_k(), OpParam("d", int, 2, arg="dilation", doc="dilation"))),  # fmt: skip
            _op("nor_conv", "relu_conv_bn", doc="ReLU-conv-BN, any kernel", signature=(_k(),)),
        )
    }
)

_SESSION = Registry(BUILTINS)
_ACTIVE: ContextVar[Registry] = ContextVar("nasir_ops", default=_SESSION)


def active() -> Registry:
    """The registry of the current scope."""
    return _ACTIVE.get()


@contextmanager
def scope(registry: Registry | None = None, *, inherit: bool = False) -> Iterator[Registry]:
    """A scope with its own registry: the built-ins only (what was loaded outside does not show), the
    current scope's ops too with `inherit`, or `registry`. Op files loaded inside it are gone when it ends."""
    fresh = registry if registry is not None else active().copy() if inherit else Registry(BUILTINS)
    token = _ACTIVE.set(fresh)
    try:
        yield fresh
    finally:
        _ACTIVE.reset(token)


class _Current(Mapping[str, OpDef]):
    """`REGISTRY`: whatever registry the current scope holds (read-only)."""

    def __getitem__(self, name: str) -> OpDef:
        return active()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(active())

    def __len__(self) -> int:
        return len(active())

    def __contains__(self, name: object) -> bool:
        return name in active()

    def __repr__(self) -> str:
        return f"<nasir op registry: {', '.join(active())}>"


REGISTRY: Mapping[str, OpDef] = _Current()

DARTS_OPS = (
    "none", "max_pool_3x3", "avg_pool_3x3", "skip_connect",
    "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5",
)  # fmt: skip
NB201_OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")


# The recurrent cell's ops (DARTS' rnn PRIMITIVES; docs/recurrent.md): the activation f of a gated edge
# s_p + sigmoid(c) * (f(g) - s_p). `none` is the zero op of both kinds of cell (the registry's entry
# above). They are listed apart from REGISTRY so that a convolutional cell still reports them as unknown
# (nasir/rnn/lower.py); nasir/rnn/cell.py computes them, `builder` names the activation. The activations have no weights
# (W_i belongs to the node, shared by all its edges), hence parameter-free.
RECURRENT: MappingProxyType[str, OpDef] = MappingProxyType(
    {
        d.name: d
        for d in (
            BUILTINS["none"],
            _op("tanh", "tanh", parameter_free=True),
            _op("relu", "relu", parameter_free=True),
            _op("sigmoid", "sigmoid", parameter_free=True),
            _op("identity", "identity", parameter_free=True, is_identity=True),
        )
    }
)


def lookup(name: str) -> OpDef | None:
    return REGISTRY.get(name)


def op_def(name: str) -> OpDef:
    """The definition of an op of either kind of cell (convolutional first, then recurrent); KeyError if none."""
    d = REGISTRY.get(name) or RECURRENT.get(name)
    if d is None:
        raise KeyError(name)
    return d


def unknown_op_hint(name: str) -> str:
    base = name.split("(", 1)[0].strip()
    fam = active().family(base)
    if fam is not None and "(" in name:
        return f"write it as {fam.name}(name = value, ...) with the parameters {', '.join(p.name for p in fam.signature)}"
    hint = did_you_mean(base, REGISTRY)
    if hint:
        return hint
    return "known ops: " + ", ".join(REGISTRY) + "; your own ops come from an op file (ops \"myops.py\" or --ops FILE, docs/ops.md)"


# ---- a researcher's own ops (docs/ops.md, "Your own ops") ---------------------------------------------

_TYPES = (bool, int, float, str)


def op(name: str, *, params: Mapping[str, Any] | None = None, parameter_free: bool = False,
       macs: Callable[..., int] | None = None, is_identity: bool = False, is_pool: bool = False,
       doc: str | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:  # fmt: skip
    """Mark `builder(C, stride, affine, **params) -> nn.Module` as the op `name` of an op file.

    `params`: keyword parameters with their defaults (the type is the default's: int, float, bool or
    str); with parameters the op is parametric (`name(k = 5)` in the spec). `parameter_free`: the op
    has no weights at stride 1 (derivation rules treat such ops apart). `macs(C, stride, H, W, **params)`:
    the op's MACs on one C x H x W input; without it `nasir info` counts the op's Conv2d and Linear
    layers (docs/ops.md, "Counting rules"). Decorating does nothing else: nasir reads the mark when
    it loads the file (`load_file`)."""

    def mark(fn: Callable[..., Any]) -> Callable[..., Any]:
        fn.__nasir_op__ = {"name": name, "params": dict(params or {}), "parameter_free": parameter_free,  # type: ignore[attr-defined]
                           "macs": macs, "is_identity": is_identity, "is_pool": is_pool, "doc": doc}  # fmt: skip
        return fn

    return mark


class OpFileError(Exception):
    """Why an op file was not loaded (the message completes "cannot load ops from 'PATH': ...")."""


_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _defs_of(module: Any, origin: str) -> list[OpDef]:
    out: list[OpDef] = []
    for value in list(vars(module).values()):
        mark = getattr(value, "__nasir_op__", None)
        if not isinstance(mark, dict) or not callable(value) or getattr(value, "__module__", None) != module.__name__:
            continue
        name = mark["name"]
        if not isinstance(name, str) or not _NAME.match(name):
            raise OpFileError(f"op name {name!r} is not a name (letters, digits, '_')")
        sig = []
        for pname, default in mark["params"].items():
            if not isinstance(pname, str) or not _NAME.match(pname):
                raise OpFileError(f"op '{name}': parameter name {pname!r} is not a name")
            if not isinstance(default, _TYPES):
                raise OpFileError(f"op '{name}': parameter '{pname}' has default {default!r}; use an int, float, bool or str")
            sig.append(OpParam(pname, type(default), default))
        out.append(OpDef(name, f"{module.__name__}.{value.__name__}", signature=tuple(sig),
                         parameter_free=bool(mark["parameter_free"]), is_identity=bool(mark["is_identity"]),
                         is_pool=bool(mark["is_pool"]), origin=origin, factory=value, macs=mark["macs"],
                         doc=mark["doc"] or (value.__doc__ or "").strip().split("\n")[0]))  # fmt: skip
    if not out:
        raise OpFileError("it defines no op (mark builders with @nasir.ops.op(\"name\"), docs/ops.md)")
    return out


def load_file(path: str | Path, registry: Registry | None = None) -> tuple[OpDef, ...]:
    """Import the op file `path` (this runs its code) and add its ops to the current scope's registry
    (or `registry`); returns them. Loading a file already loaded with the same content does nothing;
    with new content its ops are replaced. OpFileError for anything wrong, with where it happened."""
    reg = registry if registry is not None else active()
    target = Path(path).resolve()
    try:
        data = target.read_bytes()
    except OSError as e:
        raise OpFileError(e.strerror or str(e)) from None
    digest = hashlib.sha256(data).hexdigest()
    key = str(target)
    if key in reg._files and reg._files[key][0] == digest:
        return tuple(reg._defs[n] for n in reg._files[key][1])
    mod_name = f"nasir_user_ops.{re.sub(r'[^A-Za-z0-9_]', '_', target.stem)}_{digest[:12]}"
    module = sys.modules.get(mod_name)
    if module is None:
        spec = importlib.util.spec_from_file_location(mod_name, target)
        if spec is None or spec.loader is None:
            raise OpFileError("not a Python file")
        module = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = module  # so that its modules pickle and `inspect` finds their source
        try:
            spec.loader.exec_module(module)
        except Exception as e:  # the user's code: report where it failed, never a traceback
            del sys.modules[mod_name]
            raise OpFileError(_where(e, target)) from None
    try:
        defs = _defs_of(module, key)
    except OpFileError:
        sys.modules.pop(mod_name, None)
        raise
    old = set(reg._files.get(key, ("", ()))[1])
    for d in defs:
        if d.name in BUILTINS or d.name in RECURRENT:
            raise OpFileError(f"op '{d.name}' is a built-in op; choose another name")
        prior = reg._defs.get(d.name)
        if prior is not None and d.name not in old:
            raise OpFileError(f"op '{d.name}' is already defined by {prior.origin}")
    names = [d.name for d in defs]
    if len(set(names)) != len(names):
        raise OpFileError(f"op '{next(n for n in names if names.count(n) > 1)}' is defined twice")
    for n in old:
        reg._defs.pop(n, None)
    reg._bound.clear()
    for d in defs:
        reg._defs[d.name] = d
    reg._files[key] = (digest, tuple(names))
    return tuple(defs)


def _where(e: BaseException, target: Path) -> str:
    import traceback

    line = None
    if isinstance(e, SyntaxError) and e.lineno:
        line = e.lineno
    else:
        for fr in traceback.extract_tb(e.__traceback__):
            if Path(fr.filename).resolve() == target:
                line = fr.lineno
    at = f" (line {line})" if line else ""
    return f"{type(e).__name__}: {e}{at}"


def is_parametric_call(name: str) -> bool:
    return "(" in name


# ---- `nasir ops` -----------------------------------------------------------------------------------


def op_table(used: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """What `nasir ops` lists: every op of the current scope with its parameters, whether it has weights,
    and where it comes from; with `used` (the op names a spec uses, after loading its op files), the
    spellings of each op among them."""
    used = set(used) if used is not None else None
    rows = []
    for name, d in active().items():
        params = [{"name": p.name, "type": p.type.__name__, "default": None if p.required else p.default,
                   **({"choices": list(p.choices)} if p.choices else {})} for p in d.signature]  # fmt: skip
        in_spec = sorted(u for u in used or () if u == name or u.split("(", 1)[0] == name)
        rows.append({"name": name, "parameters": params, "weights": not d.parameter_free, "origin": d.origin,
                     "doc": d.doc, **({"used": in_spec} if used is not None else {})})  # fmt: skip
    return rows


def render_ops(rows: list[dict[str, Any]]) -> str:
    def sig(r: dict[str, Any]) -> str:
        if not r["parameters"]:
            return r["name"]
        return r["name"] + "(" + ", ".join(f"{p['name']} = {format_value(p['default'])}" if p["default"] is not None
                                           else p["name"] for p in r["parameters"]) + ")"  # fmt: skip

    width = max(len(sig(r)) for r in rows)
    lines = [f"{'op':<{width}}  weights  origin"]
    for r in rows:
        mark = "  (used: " + ", ".join(r["used"]) + ")" if r.get("used") else ""
        lines.append(f"{sig(r):<{width}}  {'yes' if r['weights'] else 'no':<7}  {r['origin']}  {r['doc']}{mark}".rstrip())
    return "\n".join(lines)


def bundle_op_files(spec: Any, directory: str | Path) -> Any:
    """Copy the op files an `ir.Spec` loaded into `directory` and return the spec naming the copies:
    a standalone file written there (a search's derived.cell) then loads its ops from beside itself,
    inside its own directory tree as `ops` lines must be (docs/ops.md, "Derived files"), and keeps the
    ops it was searched with even if the original file changes later."""
    import shutil

    import attrs

    from nasir import ir

    directory = Path(directory)
    out, taken = [], set()
    for f in spec.op_files:
        src = Path(f.resolved) if f.resolved else Path(f.path)
        name, k = src.name, 1
        while name in taken:
            k += 1
            name = f"{src.stem}_{k}{src.suffix}"
        taken.add(name)
        dest = directory / name
        if not (dest.exists() and dest.resolve() == src.resolve()):
            shutil.copyfile(src, dest)
        out.append(ir.OpFile(name, str(dest.resolve()), span=f.span))
    return attrs.evolve(spec, op_files=tuple(out))
