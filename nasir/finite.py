"""Finiteness checks for training and search loops (issue 14, item 2).

A loss that becomes NaN or inf must stop the run with a message naming the step, and nothing
non-finite may be saved. Reading a loss on the host every step would wait for the GPU each time
(the GPU work removed those waits), so `FiniteWatch` keeps, on the device, the first step whose
watched value was not finite and that value; the loop reads it (one host read) only where it has to
wait anyway or is about to write something: at a progress-bar update, before a checkpoint, at the end
of an epoch. Because the step is recorded when it happens, the step named is the first bad one even
when it is read later. On the CPU there is no queue to wait for, so loops may check every step.

`state_is_finite` checks a state (model weights, architecture parameters) before it is written.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch

from nasir.diagnostics import Diagnostic, DiagnosticError


class NonFiniteError(DiagnosticError):
    """A run stopped because a value became NaN or inf; `step` is the global step (0-based) or None."""

    def __init__(self, message: str, hint: str | None = None, step: int | None = None):
        super().__init__([Diagnostic(message, hint=hint)])
        self.step = step


class FiniteWatch:
    """The first step at which a watched scalar was not finite, kept on the device until read."""

    def __init__(self) -> None:
        self._first: torch.Tensor | None = None  # int64, -1 while every value seen was finite
        self._value: torch.Tensor | None = None  # the first non-finite value

    def observe(self, value: torch.Tensor, step: int) -> None:
        """Record `value` (a tensor; all its elements are checked) seen at global step `step`; no host read."""
        v = value.detach()
        bad = ~torch.isfinite(v).all()
        if self._first is None:
            self._first = torch.full((), -1, dtype=torch.int64, device=v.device)
            self._value = torch.zeros((), dtype=torch.float32, device=v.device)
        new = bad & (self._first < 0)
        self._first = torch.where(new, step, self._first)
        first_bad = torch.where(torch.isfinite(v), 0.0, v.float()).sum()  # a multi-element value: its non-finite part
        self._value = torch.where(new, first_bad, self._value)

    def first(self, distributed: bool = False, device: torch.device | None = None) -> tuple[int, float] | None:
        """(step, value) of the first non-finite value seen, or None (one host read).

        `distributed`: agree across the process group (every rank must call it at the same point): the
        earliest step any rank saw; the value is this rank's, or NaN if another rank saw it.
        """
        first = self._first if self._first is not None else torch.full((), -1, dtype=torch.int64, device=device)
        if distributed:
            import torch.distributed as dist

            big = torch.iinfo(torch.int64).max
            key = torch.where(first < 0, big, first)
            dist.all_reduce(key, op=dist.ReduceOp.MIN)
            step = int(key)
            if step == big:
                return None
            return step, (float(self._value) if self._value is not None and int(first) == step else math.nan)  # type: ignore[arg-type]
        step = int(first)
        return None if step < 0 else (step, float(self._value))  # type: ignore[arg-type]

    def reset(self) -> None:
        self._first = self._value = None


def state_is_finite(tensors: Mapping[str, torch.Tensor] | Iterable[torch.Tensor]) -> bool:
    """Are all floating-point tensors of a state dict (or a list) finite? One host read."""
    items = tensors.values() if isinstance(tensors, Mapping) else tensors
    flags = [torch.isfinite(t.detach()).all() for t in items if isinstance(t, torch.Tensor) and t.is_floating_point()]
    if not flags:
        return True
    return bool(torch.stack([f.to(flags[0].device) for f in flags]).all())


def describe(value: float) -> str:
    return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")


def _problems(values: Mapping[str, float | int | None], nonnegative: Iterable[str], positive: Iterable[str],
              unit: Iterable[str]) -> list[tuple[str, str]]:  # fmt: skip
    """(setting, what is wrong) for settings that are not finite numbers in their range (NaN is not `< 0`,
    so a plain comparison lets it through)."""
    out = []
    ranges = [(n, ">= 0", lambda v: v >= 0) for n in nonnegative]
    ranges += [(n, "> 0", lambda v: v > 0) for n in positive]
    ranges += [(n, "between 0 and 1", lambda v: 0 <= v <= 1) for n in unit]
    for name, what, ok in ranges:
        v = values.get(name)
        if v is None:
            continue
        if isinstance(v, float) and not math.isfinite(v):
            out.append((name, f"must be a finite number {what}, got {v}"))
        elif not ok(v):
            out.append((name, f"must be {what}, got {v}"))
    return out


def check_settings(values: Mapping[str, float | int | None], *, nonnegative: Iterable[str] = (), positive: Iterable[str] = (),
                   unit: Iterable[str] = ()) -> list[str]:  # fmt: skip
    """`--name must be ...` messages (the recurrent runs' wording) for settings out of range."""
    return [f"--{name.replace('_', '-')} {rest}" for name, rest in _problems(values, nonnegative, positive, unit)]


def setting_problems(values: Mapping[str, float | int | None], *, nonnegative: Iterable[str] = (), positive: Iterable[str] = (),
                     unit: Iterable[str] = ()) -> list:  # fmt: skip
    """The same problems as diagnostics named by the setting (nasir/runtime/settings.py); the CLI maps them to flags."""
    from nasir.runtime.settings import setting_diagnostic

    return [setting_diagnostic(name, rest) for name, rest in _problems(values, nonnegative, positive, unit)]
