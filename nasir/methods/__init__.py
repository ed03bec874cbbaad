"""Search methods, selection rules and smoothings as registered objects (docs/runtime.md).

One registry, read by the verifier (nasir/verify.py), the search settings and options
(nasir/search/settings.py), the CLI's choices (nasir/search/cli.py) and the loop (nasir/search/loop.py).
Adding one: a file beside these that defines its entry (nasir/methods/base.py), one line below, its
hook in nasir/search/hooks.py, tests (docs/runtime.md). Importing this package imports no torch: the
entries name their hooks, and the search layer registers the implementations under those names on
import (`register_hooks`), as the targets layer registers the ops' builders (nasir/ops.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from nasir import ir
from nasir.methods import darts, magnitude, milenas, naive, pcdarts, sdarts, strength
from nasir.methods.base import Entry, Method, Param, Selection, Smoothing

KINDS = ("method", "select", "smooth")
REGISTRY: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}


def register(entry: Entry) -> Entry:
    table = REGISTRY[entry.kind]
    if entry.name in table:
        raise ValueError(f"{entry.kind} '{entry.name}' is registered twice")
    table[entry.name] = entry
    return entry


for _e in (darts.METHOD, milenas.METHOD, pcdarts.METHOD,
           magnitude.SELECTION, strength.STRENGTH, strength.STRENGTH_STAR, naive.SELECTION,
           sdarts.NONE, sdarts.RS, sdarts.ADV):  # fmt: skip
    register(_e)


# The hooks by the names the entries give (Method.gradient, Selection.scores, Smoothing.perturb), filled by
# the search layer on import (nasir/search/hooks.py `register_hooks`); empty until then.
RULES: dict[str, Callable[..., Any]] = {}  # rule(options) -> (architect, train, valid, xi, valid_beta) -> (grads, loss, logits)
SCORES: dict[str, Callable[..., Any]] = {}  # scores(search) -> {cell kind: [[score per op] per row]}
PERTURBATIONS: dict[str, Callable[..., Any]] = {}  # perturb(search, batch, eps) -> {cell kind: weights}
_HOOKS = {"rules": RULES, "scores": SCORES, "perturbations": PERTURBATIONS}


def register_hooks(table: str, hooks: Mapping[str, Callable[..., Any]]) -> None:
    """Register implementations under their names in `table` (rules | scores | perturbations)."""
    _HOOKS[table].update(hooks)


def hook(table: str, name: str) -> Callable[..., Any]:
    """The implementation registered as `name`; an error naming what is missing when none is (the search
    layer, nasir/search/hooks.py, was not imported, or an entry names a hook nobody registered)."""
    found = _HOOKS[table].get(name)
    if found is None:
        raise RuntimeError(f"no {table} hook '{name}' is registered; the search layer registers them when "
                           "nasir.search.hooks is imported")  # fmt: skip
    return found


def names(kind: str) -> tuple[str, ...]:
    """The canonical names of a kind, in registration order."""
    return tuple(REGISTRY[kind])


def spellings(kind: str) -> tuple[str, ...]:
    """Every accepted spelling (names and aliases)."""
    return tuple(s for e in REGISTRY[kind].values() for s in (e.name, *e.aliases))


def lookup(kind: str, name: str | None) -> Entry | None:
    """The entry a spelling names (`strength-star` and `strength_star` alike), else None."""
    if name is None:
        return None
    table = REGISTRY[kind]
    if name in table:
        return table[name]
    return next((e for e in table.values() if name in e.aliases), None)


def canonical(kind: str, name: Any) -> Any:
    """The canonical name of a spelling; anything else unchanged (the caller reports it)."""
    e = lookup(kind, name) if isinstance(name, str) else None
    return e.name if e is not None else name


def method(name: str) -> Method:
    return REGISTRY["method"][name]  # type: ignore[return-value]


def selection(name: str) -> Selection:
    return REGISTRY["select"][name]  # type: ignore[return-value]


def smoothing(name: str) -> Smoothing:
    return REGISTRY["smooth"][name]  # type: ignore[return-value]


def value_name(v: ir.Expr | None) -> str | None:
    """The name a setting's value spells: `darts(order = 2)` -> darts, `strength_star`, and
    `strength-star` (which the grammar reads as a subtraction of two names) -> strength-star."""
    if isinstance(v, ir.Call | ir.Var):
        return v.name
    if isinstance(v, ir.BinOp) and v.op == "-":
        left, right = value_name(v.left), value_name(v.right)
        if left is not None and right is not None and not isinstance(v.right, ir.Call):
            return f"{left}-{right}"
    return None


def choice(v: ir.Expr | None) -> tuple[str | None, tuple[ir.Arg, ...]]:
    """A choice setting's name and arguments: `darts(order = 2)`, `strength_star`, `strength-star` (the
    grammar has no call after a dash: `strength_star(window = 3)` takes arguments under that spelling)."""
    return value_name(v), (v.args if isinstance(v, ir.Call) else ())


__all__ = ["choice", "KINDS", "PERTURBATIONS", "REGISTRY", "RULES", "SCORES", "Entry", "Method", "Param", "Selection",
           "Smoothing", "canonical", "hook", "lookup", "method", "names", "register", "register_hooks", "selection",
           "smoothing", "spellings", "value_name"]  # fmt: skip
