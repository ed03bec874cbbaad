"""What a search method, selection rule or smoothing is (docs/runtime.md): a name, its parameters and hooks.

This module and the registry (nasir/methods/__init__.py) import no torch and nothing above the IR layer,
so the verifier and the CLI read them cheaply. An entry names its hooks; the search layer implements them
and registers them under those names when it is imported (nasir/search/hooks.py), as the targets layer
registers the ops' builders (nasir/ops.py `BUILDERS`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import attrs


@attrs.frozen
class Param:
    """One argument of an entry, e.g. `pcdarts(k = 4)`.

    name      the spec's argument name (`k`)
    option    the search setting it sets (Options field, library keyword: `partial_channels`)
    type      int | float | bool
    check     the test a value must pass, and `what` it must be (said in errors)
    default   the value when the entry is chosen and the argument is not given
    doc       one line for --help and docs
    """

    name: str
    option: str
    type: type
    check: Callable[[Any], bool]
    what: str
    default: Any
    doc: str

    def valid(self, value: Any) -> bool:
        if isinstance(value, bool) and self.type is not bool:
            return False
        if self.type is int and not isinstance(value, int):
            return False
        if self.type is float and not isinstance(value, int | float):
            return False
        if self.type is float and not math.isfinite(value):  # NaN fails every test, inf passes `> 0` (issue 14, item 2)
            return False
        return bool(self.check(value))


@attrs.frozen
class Entry:
    """A registered choice of one setting (`kind`: method | select | smooth)."""

    kind: str
    name: str
    doc: str
    params: tuple[Param, ...] = ()
    aliases: tuple[str, ...] = ()  # other spellings accepted in spec and CLI (strength-star)

    def param(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)

    @property
    def options(self) -> tuple[str, ...]:
        return tuple(p.option for p in self.params)


@attrs.frozen
class Method(Entry):
    """The architecture step's rule.

    gradient          the name of its rule in nasir.methods.RULES (nasir/search/hooks.py registers it):
                      rule(options) -> (architect, train, valid, xi, valid_beta) -> (grads, loss, logits)
    warmup            epochs of weight steps only, when the spec and caller set none
    three_way         a third data split for the topology variables when the supernet has them
    check(spec)       a problem of this method with this spec, as (message, hint) or None
    """

    gradient: str = ""
    warmup: int = 0
    three_way: bool = False
    check: Callable[[Any], tuple[str, str | None] | None] | None = None


@attrs.frozen
class Selection(Entry):
    """How the derivation ranks the candidates. `scores` names its hook in nasir.methods.SCORES
    (nasir/search/hooks.py): scores(search) -> {cell kind: [[score per op] per row]}."""

    scores: str = ""


@attrs.frozen
class Smoothing(Entry):
    """SDARTS-style perturbation of the weight step. `perturb` names its hook in nasir.methods.PERTURBATIONS
    (nasir/search/hooks.py): perturb(search, batch, eps) -> the weights the mixed ops read. `perturbs`
    False: no perturbation (softmax(alpha) unperturbed) and no radius schedule at all."""

    perturb: str = ""
    perturbs: bool = True


def positive_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1
