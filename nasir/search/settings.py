"""The search's settings: `Options`, the spec's `search { ... }` block, the caller's arguments over both.

Methods, selections and smoothings and their arguments come from the registry (nasir/methods); the
other settings are listed here. Errors about the caller's arguments name the setting
(nasir/runtime/settings.py: `partial_channels`); the CLI maps them to its flags. Errors about the spec
point into it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from nasir import ir, methods
from nasir.diagnostics import Diagnostic, DiagnosticError, error_at
from nasir.runtime.settings import setting_diagnostic, setting_error

# Optimiser settings of the search block: spec name -> (Options field, test, what it must be).
_NUMBERS: dict[str, tuple[str, Callable[[Any], bool], str]] = {
    "lr": ("w_lr", lambda v: v > 0, "a positive number (the weight learning rate)"),
    "lr_min": ("w_lr_min", lambda v: v >= 0, "a number >= 0 (the cosine schedule's floor)"),
    "momentum": ("momentum", lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "weight_decay": ("w_weight_decay", lambda v: v >= 0, "a number >= 0"),
    "arch_lr": ("a_lr", lambda v: v > 0, "a positive number (the architecture learning rate)"),
    "arch_weight_decay": ("a_weight_decay", lambda v: v >= 0, "a number >= 0"),
}
_EXAMPLES = {"lr": "0.025", "lr_min": "0.001", "momentum": "0.9", "weight_decay": "3e-4", "arch_lr": "3e-4",
             "arch_weight_decay": "1e-3"}  # fmt: skip
# Whole-number settings (spec and caller alike): name -> minimum.
_WHOLE = {"epochs": 1, "batch_size": 1, "early_stop": 1, "seed": 0, "warmup": 0}
_KIND_WORDS = {"method": "search method", "select": "selection", "smooth": "smoothing"}


@attrs.frozen
class Options:
    """Everything that determines a search's result (and, below the line, what does not).

    method        darts (order 1 or 2) | milenas (mixed level, Eq. 18; `mixed_level` is lambda') |
                  pcdarts (partial channels, K = `partial_channels`, and edge normalisation)
    select        magnitude | strength | strength_star | naive (OStr-DARTS Sec. III); the strength is
                  averaged over the last `strength_window` architecture steps (None: one epoch's)
    smooth        none | rs | adv (SDARTS); radius `eps_start` -> `eps_end` over the epochs, PGD `adv_steps`
    early_stop    C of OStr-DARTS' Algorithm 1 (None: run every epoch)
    hessian       record the largest eigenvalue of the Hessian of L_val w.r.t. alpha every epoch
    pa_lambda     weight of the passive-aggressive regulariser on the topology variables (Eq. 15)
    warmup        epochs of weight steps only before the first architecture step (None: 15 under
                  pcdarts, the PC-DARTS authors' recipe, else 0; docs/methods.md)
    drop_none     derivation: None drops `none` from the argmax where a cell says `keep k` (DARTS) and
                  takes the full argmax elsewhere (NAS-Bench-201); True / False force one rule
    w_lr, w_lr_min, momentum, w_weight_decay   the weight optimiser (spec: lr, lr_min, momentum, weight_decay)
    a_lr, a_weight_decay                       the architecture optimiser (spec: arch_lr, arch_weight_decay)
    fp32_arch_grads  architecture gradients without TF32 (on by default; named in metrics.jsonl)
    deterministic    deterministic CUDA algorithms: a resumed search ends with the same alphas (docs/gpu.md)
    """

    method: str = "darts"
    order: int = 1
    partial_channels: int = 1
    mixed_level: float = 1.0
    select: str = "magnitude"
    strength_window: int | None = None
    smooth: str = "none"
    eps_start: float = 0.03
    eps_end: float = 0.3
    adv_steps: int = 7
    early_stop: int | None = None
    hessian: bool = False
    pa_lambda: float = 10.0
    warmup: int | None = None
    drop_none: bool | None = None
    epochs: int = 50
    batch_size: int = 64
    seed: int = 2
    data: str = "digits"
    w_lr: float = 0.025
    w_lr_min: float = 0.001
    momentum: float = 0.9
    w_weight_decay: float = 3e-4
    grad_clip: float = 5.0
    a_lr: float = 3e-4
    a_betas: tuple[float, float] = (0.5, 0.999)
    a_weight_decay: float = 1e-3
    limit_batches: int | None = None
    layout: str = "auto"  # what the user asked for: auto | channels_last | contiguous
    # the fused supernet (docs/performance.md): the same values up to float rounding; `absent`: what a
    # checkpoint without the field ran (it predates fusion: op by op)
    fuse: bool = attrs.field(default=True, metadata={"absent": False})
    overrides: tuple[tuple[str, Any], ...] = ()
    # ---- not part of the result (a resumed search may change them)
    low_memory: bool = attrs.field(default=False, eq=False)
    device: str = attrs.field(default="cpu", eq=False)
    channels_last: bool = attrs.field(default=False, eq=False)  # the layout used: `layout`, auto following the device
    fp32_arch_grads: bool = attrs.field(default=True, eq=False)  # TF32 off in the architecture step (docs/gpu.md)
    deterministic: bool = attrs.field(default=False, eq=False)  # nasir.device's deterministic mode (docs/gpu.md)

    @property
    def warmup_epochs(self) -> int:
        if self.warmup is not None:
            return self.warmup
        return methods.method(self.method).warmup  # PC-DARTS: 15, its authors' recipe (nasir/methods/pcdarts.py)

    def to_dict(self) -> dict[str, Any]:
        d = attrs.asdict(self)
        d["a_betas"] = list(self.a_betas)
        d["overrides"] = [list(x) for x in self.overrides]
        return d


def _defaults() -> dict[str, Any]:
    return {f.name: f.default for f in attrs.fields(Options)}


# ---- the spec's search block ----------------------------------------------------------------------------
def _num(st: ir.Setting, minimum: int = 0) -> int:
    v = st.value
    if not isinstance(v, ir.Num) or not isinstance(v.value, int) or isinstance(v.value, bool) or v.value < minimum:
        raise error_at(st.span, f"'{st.name}' must be a whole number >= {minimum}", f"for example '{st.name} {max(minimum, 1)}'")
    return int(v.value)


def _entry_setting(st: ir.Setting, out: dict[str, Any]) -> None:
    """method / select / smooth: a registered entry and its checked arguments."""
    name, args = methods.choice(st.value)
    entry = methods.lookup(st.name, name)
    if entry is None:
        raise error_at(st.span, f"{_KIND_WORDS[st.name]} '{name}' is not supported by the search runtime",
                       "use " + ", ".join(methods.names(st.name)))  # fmt: skip
    out[st.name] = entry.name
    default = _defaults()
    for p in entry.params:
        if p.default != default[p.option]:
            out[p.option] = p.default  # (pcdarts: k = 4)
    for a in args:
        p = entry.param(a.name) if a.name else None
        if p is None:
            takes = ", ".join(f"'{q.name}'" for q in entry.params) or "no arguments"
            raise error_at(a.span or st.span, f"{entry.name}() takes {takes}; got '{a.name or 'a positional argument'}'")
        value = a.value.value if isinstance(a.value, ir.Num | ir.Bool) else None
        if value is None or not p.valid(value):
            raise error_at(a.value.span or a.span or st.span, f"'{a.name}' must be {p.what}")
        out[p.option] = float(value) if p.type is float else value


def spec_settings(spec: ir.Spec) -> dict[str, Any]:
    """The `search { ... }` block as search defaults; settings this runtime cannot honour are errors."""
    out: dict[str, Any] = {}
    if spec.search is None:
        return out
    errors: list[Diagnostic] = []  # every bad setting of the file in one report
    for st in spec.search.settings:
        try:
            _setting(st, out)
        except DiagnosticError as e:
            errors.extend(e.diagnostics)
    if errors:
        raise DiagnosticError(errors)
    return out


def _setting(st: ir.Setting, out: dict[str, Any]) -> None:
    """One setting of the `search` block into `out`; raises DiagnosticError when it is bad."""
    v = st.value
    if st.name in methods.KINDS:
        _entry_setting(st, out)
    elif st.name in _WHOLE:
        out[st.name] = _num(st, _WHOLE[st.name])
    elif st.name in _NUMBERS:
        option, test, what = _NUMBERS[st.name]
        if not isinstance(v, ir.Num) or isinstance(v.value, bool) or not test(v.value):
            raise error_at(st.span, f"'{st.name}' must be {what}", f"for example '{st.name} {_EXAMPLES[st.name]}'")
        out[option] = float(v.value)
    elif st.name == "hessian":
        if not isinstance(v, ir.Bool):
            raise error_at(st.span, "'hessian' must be true or false", "for example 'hessian true'")
        out["hessian"] = bool(v.value)
    else:
        raise error_at(st.span, f"search setting '{st.name}' is not supported by the search runtime yet")


# ---- the caller's settings ------------------------------------------------------------------------------
def _entry_options() -> tuple[str, ...]:
    return tuple(dict.fromkeys(p.option for kind in methods.KINDS for e in methods.REGISTRY[kind].values() for p in e.params))


# The settings a caller (the library's keywords, the CLI's flags) may set: the choices, their
# arguments (from the registry) and the loop's own.
FLAGS = ("method", "select", "smooth", *_entry_options(), "early_stop", "hessian", "epochs", "batch_size", "seed", "warmup",
         "w_lr", "w_lr_min", "momentum", "w_weight_decay", "a_lr", "a_weight_decay")  # fmt: skip


def _choose(kind: str, value: Any, s: dict[str, Any]) -> DiagnosticError | None:
    """The caller's choice of `kind` over the spec's: the spec's arguments that the new entry does not take are
    dropped, the new entry's defaults apply where the spec set nothing."""
    entry = methods.lookup(kind, value) if isinstance(value, str) else None
    if entry is None:
        return setting_error(kind, f"must be one of {', '.join(methods.names(kind))}, got '{value}'")
    default = _defaults()
    before = methods.lookup(kind, s.get(kind, default[kind]))
    if before is not None and before.name != entry.name:
        for p in before.params:
            if p.option not in entry.options:
                s.pop(p.option, None)
    for p in entry.params:
        if p.option not in s and p.default != default[p.option]:
            s[p.option] = p.default
    s[kind] = entry.name
    return None


def make_options(spec: ir.Spec, *, data: str, overrides: Mapping[str, Any], limit_batches: int | None,
                 channels_last: bool | None, low_memory: bool, device: Any, fp32_arch_grads: bool = True,
                 deterministic: bool = False, fuse: bool = True, **flags: Any) -> Options:  # fmt: skip
    """The spec's `search` block over the defaults, the caller's `flags` (None: unset; names in FLAGS) over both.

    `channels_last` None is the device's default layout: it is derived, not set, so a search saved on
    one device resumes on another (Search.load compares `layout`, what the user set)."""
    unknown = set(flags) - set(FLAGS)
    if unknown:
        raise TypeError(f"unknown search settings: {', '.join(sorted(unknown))}")
    s = spec_settings(spec)
    errors: list[Diagnostic] = []
    for kind in methods.KINDS:
        if flags.get(kind) is not None and (e := _choose(kind, flags[kind], s)) is not None:
            errors.extend(e.diagnostics)
    if errors:
        raise DiagnosticError(errors)
    for k, v in flags.items():
        if v is not None and k not in methods.KINDS:
            s[k] = v
    default = _defaults()
    chosen = {kind: methods.lookup(kind, s.get(kind, default[kind])) for kind in methods.KINDS}
    for k, low in _WHOLE.items():
        if k in s and s[k] is not None and (not isinstance(s[k], int) or isinstance(s[k], bool) or s[k] < low):
            errors.append(setting_diagnostic(k, f"must be a whole number >= {low}, got {s[k]}"))
    for option, test, what in _NUMBERS.values():
        # NaN fails every test, but inf passes `> 0`: a setting must also be finite (issue 14, item 2)
        if option in s and (isinstance(s[option], bool) or not isinstance(s[option], int | float) or not test(s[option])
                            or not math.isfinite(s[option])):  # fmt: skip
            errors.append(setting_diagnostic(option, f"must be {what}, got {s[option]}"))
        elif option in s:
            s[option] = float(s[option])
    for kind, entry in chosen.items():
        assert entry is not None  # the spec's were checked by spec_settings, the caller's by _choose
        for p in entry.params:
            if s.get(p.option) is not None and not p.valid(s[p.option]):
                errors.append(setting_diagnostic(p.option, f"must be {p.what}, got {s[p.option]}"))
        for other in methods.REGISTRY[kind].values():
            for p in other.params:
                value = s.get(p.option, default[p.option])
                if p.option not in entry.options and value != default[p.option]:
                    takes = ", ".join(e.name for e in methods.REGISTRY[kind].values() if p.option in e.options)
                    errors.append(setting_diagnostic(p.option, f"{value} does not apply to {kind} {entry.name}",
                                                     f"it is an argument of {kind} {takes}"))  # fmt: skip
    method = chosen["method"]
    if isinstance(method, methods.Method) and method.check is not None and (problem := method.check(spec)) is not None:
        errors.append(setting_diagnostic("method", problem[0].removeprefix("method "), problem[1]))
    if limit_batches is not None and limit_batches < 1:
        errors.append(setting_diagnostic("limit_batches", f"must be at least 1, got {limit_batches}"))
    if errors:
        raise DiagnosticError(list(dict.fromkeys(errors)))
    layout = {None: "auto", True: "channels_last", False: "contiguous"}[channels_last]
    if channels_last is None:
        channels_last = device.type == "cpu"  # docs/methods.md (DARTS, supernet conventions): NHWC runs the CPU supernet in ~0.63 x the time
    return Options(data=data, overrides=tuple(sorted(overrides.items())), limit_batches=limit_batches, layout=layout, fuse=fuse,
                   channels_last=channels_last, low_memory=low_memory, device=str(device), fp32_arch_grads=fp32_arch_grads,
                   deterministic=deterministic, **s)  # fmt: skip
