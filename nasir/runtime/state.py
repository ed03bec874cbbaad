"""Checkpoint state (docs/runtime.md): every rank's RNG states gathered, rank 0 writes atomically, the
others wait until the file exists (a rank that stops and resumes at once must read this checkpoint,
not the one before it, or the ranks' all-reduces stop pairing up)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from nasir import device as dv
from nasir.diagnostics import Diagnostic, DiagnosticError
from nasir.io import atomic_write_with
from nasir.runtime.dist import Dist, barrier


def save_checkpoint(path: Path, d: Dist, make: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    """`make(rng)` -> the checkpoint's content, called on rank 0 only; every rank must call this
    (`nasir.device.rng_state` gathers the ranks' RNG states). `make` may raise (a non-finite state):
    then nothing is written and the others are not left waiting in one process."""
    rng = dv.rng_state()
    if d.main:
        state = make(rng)
        atomic_write_with(path, lambda tmp: torch.save(state, tmp))
    barrier(d)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint read onto the CPU (its RNG states must stay there); load_state_dict moves the rest.
    A missing, corrupt or foreign file is a DiagnosticError, without a traceback."""
    try:
        return dv.load_on_cpu(path)
    except FileNotFoundError:
        raise DiagnosticError([Diagnostic(f"cannot read checkpoint '{path}': no such file")]) from None
    except Exception as e:  # a corrupt or foreign file: say so, no traceback
        first = str(e).splitlines()[0] if str(e) else ""
        raise DiagnosticError([Diagnostic(f"'{path}' is not a readable nasir checkpoint: {type(e).__name__}: {first}")]) from None
